/*
 * status.c
 *		eventstore.relay_status(): what the relay worker is doing, from its
 *		statistics in shared memory and the outbox table.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "eventstore.h"

/* relay_status()'s names of the relay states */
static const char *const es_state_names[] = {
	[ES_RELAY_STOPPED] = "stopped",
	[ES_RELAY_DISABLED] = "disabled",
	[ES_RELAY_CONNECTING] = "connecting",
	[ES_RELAY_IDLE] = "idle",
	[ES_RELAY_SENDING] = "sending",
	[ES_RELAY_BACKING_OFF] = "backing_off",
	[ES_RELAY_BROKER_DOWN] = "broker_down",
	[ES_RELAY_ERROR] = "error",
	[ES_RELAY_NOT_SERVED] = "not_served",
};

/* qsort comparator for latencies */
static int
EsCompareDoubles(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

/* The q-quantile (0..1) of the sorted latencies, nearest rank */
static double
EsQuantile(const double *sorted, int n, double q)
{
	int			rank = (int) (q * n + 0.999999);

	return sorted[Max(rank, 1) - 1];
}

PG_FUNCTION_INFO_V1(eventstore_relay_status);

/* SQL: eventstore.relay_status() -> one row */
Datum
eventstore_relay_status(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	EsRelayStats *st = palloc0(sizeof(EsRelayStats));
	bool		have_shmem = EsRelayStatsCopy(st);
	TupleDesc	tupdesc;
	Datum		values[13];
	bool		nulls[13];
	EsSavedUser saved;
	bool		isnull;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(nulls, 0, sizeof(nulls));

	/* Without shared_preload_libraries there is no relay at all */
	if (!have_shmem)
		st->state = ES_RELAY_DISABLED;
	else if (!EsDatabaseIsServed())
	{
		/* The relay's figures are another database's: show none of them */
		memset(st, 0, sizeof(EsRelayStats));
		st->state = ES_RELAY_NOT_SERVED;
	}
	values[0] = Int32GetDatum(st->pid);
	nulls[0] = st->pid == 0;
	values[1] = CStringGetTextDatum(es_state_names[st->state]);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsSpiExec(EsPlan(&plan,
					 "SELECT pg_catalog.count(*),"
					 " pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(created_at)"
					 " FROM eventstore.outbox",
					 0, NULL),
			  NULL, NULL, true, SPI_OK_SELECT);
	values[2] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	values[3] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &nulls[3]);
	if (!nulls[3])
		values[3] = SPI_datumTransfer(values[3], false, sizeof(Interval));
	EsRestoreUser(&saved);
	SPI_finish();

	values[4] = Int64GetDatum((int64) st->sent_total);
	values[5] = Int64GetDatum((int64) st->retries_total);
	values[6] = Int64GetDatum((int64) st->dead_letters_total);
	values[7] = CStringGetTextDatum(st->last_error);
	nulls[7] = st->last_error[0] == '\0';
	values[8] = TimestampTzGetDatum(st->last_error_at);
	nulls[8] = st->last_error_at == 0;
	values[9] = TimestampTzGetDatum(st->last_delivery_at);
	nulls[9] = st->last_delivery_at == 0;
	nulls[10] = nulls[11] = st->latency_count == 0;
	if (st->latency_count > 0)
	{
		qsort(st->latency_ms, st->latency_count, sizeof(double), EsCompareDoubles);
		values[10] = Float8GetDatum(EsQuantile(st->latency_ms, st->latency_count, 0.50));
		values[11] = Float8GetDatum(EsQuantile(st->latency_ms, st->latency_count, 0.99));
	}
	values[12] = Int32GetDatum(st->in_flight);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
