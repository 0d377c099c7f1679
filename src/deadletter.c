/*
 * deadletter.c
 *		Operators' hands on dead letters: eventstore.requeue_dead_letters()
 *		and eventstore.discard_dead_letters().
 *
 * Both wake the relay at commit: a requeued message is to be sent, and in
 * park mode either call releases the messages its key held back.
 */
#include "postgres.h"

#include "catalog/pg_type.h"

#include "eventstore.h"

PG_FUNCTION_INFO_V1(eventstore_requeue_dead_letters);

/*
 * SQL: eventstore.requeue_dead_letters(ids bigint[] DEFAULT NULL) -> bigint.
 * Moves the dead letters (all with NULL) back into the outbox in their
 * original outbox order, with attempts reset; returns how many.
 *
 * Outbox rows of the same keys (held back in park mode, or not sent yet)
 * have smaller ids than the requeued messages would get, so they are moved
 * behind them, keeping each key's order: dead letters first, then the rest.
 * A key's order is per sink: rows of the same key for another sink stay.
 */
Datum
eventstore_requeue_dead_letters(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1];
	char		nulls[1];
	EsSavedUser saved;
	bool		isnull;
	int64		n;

	values[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsHoldHorizon(ES_SEQ_OUTBOX);
	EsSpiExec(EsPlan(&plan,
					 "WITH dead AS (DELETE FROM eventstore.dead_letters"
					 " WHERE $1 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($1) RETURNING *),"
					 " later AS (DELETE FROM eventstore.outbox o WHERE EXISTS (SELECT FROM dead d"
					 " WHERE d.message_key OPERATOR(pg_catalog.=) o.message_key"
					 " AND d.sink OPERATOR(pg_catalog.=) o.sink) RETURNING *),"
					 " requeued AS (INSERT INTO eventstore.outbox (topic, message_key, payload, headers,"
					 " event_position, created_at, sink)"
					 " SELECT topic, message_key, payload, headers, event_position, created_at, sink FROM ("
					 " SELECT 0 AS grp, outbox_id AS ord, topic, message_key, payload, headers,"
					 " event_position, pg_catalog.clock_timestamp() AS created_at, sink FROM dead"
					 " UNION ALL"
					 " SELECT 1, id, topic, message_key, payload, headers, event_position,"
					 " created_at, sink FROM later) m"
					 " ORDER BY grp, ord)"
					 " SELECT pg_catalog.count(*) FROM dead",
					 1, argtypes),
			  values, nulls, false, SPI_OK_SELECT);
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	EsRestoreUser(&saved);
	SPI_finish();
	EsWakeRelayAtCommit(true);
	PG_RETURN_INT64((int64) n);
}

PG_FUNCTION_INFO_V1(eventstore_discard_dead_letters);

/* SQL: eventstore.discard_dead_letters(ids bigint[]) -> bigint, how many */
Datum
eventstore_discard_dead_letters(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1];
	EsSavedUser saved;
	uint64		n;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("ids must not be null"),
				 errhint("To discard every dead letter, pass ARRAY(SELECT id FROM eventstore.dead_letters).")));
	values[0] = PG_GETARG_DATUM(0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsSpiExec(EsPlan(&plan,
					 "DELETE FROM eventstore.dead_letters WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
					 1, argtypes),
			  values, NULL, false, SPI_OK_DELETE);
	n = SPI_processed;
	EsRestoreUser(&saved);
	SPI_finish();
	EsWakeRelayAtCommit(true);
	PG_RETURN_INT64((int64) n);
}
