/*
 * relay.c
 *		The relay: a background worker that sends committed outbox rows to
 *		Kafka, in outbox order per key, with retries and dead letters.
 *
 * One round: a short transaction reads a batch of ready rows below the
 * outbox horizon (so no smaller id can still commit); the batch is sent with
 * no transaction open; a second transaction deletes what the broker
 * acknowledged, schedules retries and moves dead letters.  A crash between
 * the two only means the acknowledged rows are sent again: at-least-once.
 *
 * Per-key order: a row is ready when its retry time has come and no earlier
 * row of its key waits for a retry, so a key's messages never overtake each
 * other, while other keys go on.  Dead letters leave the outbox and do not
 * hold their key back.
 *
 * The worker sleeps on its latch: backends that enqueued messages set it as
 * they commit (outbox.c), and a timer covers retries and anything missed.
 * An ERROR ends the worker; the postmaster starts it again after
 * bgw_restart_time, and all progress is in the tables.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "eventstore.h"
#include "relay.h"

/* How long to wait for CREATE EXTENSION in eventstore.database */
#define ES_NO_EXTENSION_MS 10000
/* Seconds before the postmaster restarts a relay that ended with an error */
#define ES_RELAY_RESTART_SECS 2

/* Register the relay worker; called from _PG_init in the postmaster */
void
EsRegisterRelay(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = ES_RELAY_RESTART_SECS;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "eventstore");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "eventstore_relay_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "eventstore relay");
	snprintf(worker.bgw_type, BGW_MAXLEN, "eventstore relay");
	RegisterBackgroundWorker(&worker);
}

/* Withdraw our latch from shared memory as the worker exits */
static void
EsRelayExit(int code, Datum arg)
{
	EsSetRelayLatch(NULL);
}

/* ce_source: the setting, or /eventstore/<database> (in a transaction) */
static char *
EsCloudEventsSource(void)
{
	if (es_cloudevents_source[0] != '\0')
		return pstrdup(es_cloudevents_source);
	return psprintf("/eventstore/%s", get_database_name(MyDatabaseId));
}

/* Copy a text column of the current SPI row, NULL as NULL */
static char *
EsCopyText(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * The headers of a message from publish() (or a forwarded dead letter): its
 * own, a JSON object of strings, and eventstore-outbox-id
 */
static int
EsOutboxHeaders(Jsonb *headers, int64 id, EsHeader **out)
{
	JsonbIterator *it = JsonbIteratorInit(&headers->root);
	JsonbIteratorToken tok;
	JsonbValue	v;
	char	   *name = NULL;
	int			n = 0;

	*out = palloc(sizeof(EsHeader) * (JB_ROOT_COUNT(headers) + 1));
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			name = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && v.type == jbvString &&
				 strcmp(name, "eventstore-outbox-id") != 0)
		{
			(*out)[n].name = name;
			(*out)[n++].value = pnstrdup(v.val.string.val, v.val.string.len);
		}
	}
	(*out)[n].name = "eventstore-outbox-id";
	(*out)[n++].value = psprintf(INT64_FORMAT, id);
	return n;
}

/*
 * Read the next batch of ready outbox rows into 'msgs' (allocated in the
 * current memory context, which must outlive the transaction); returns how
 * many.  Sets *wait_ms to how long to sleep if the batch is not full, and
 * *backing_off when rows wait for a retry.
 */
static int
EsRelayFetch(EsMessage **msgs, long *wait_ms, bool *backing_off)
{
	static SPIPlanPtr fetch_plan = NULL;
	static SPIPlanPtr due_plan = NULL;
	Oid			argtypes[3] = {INT8OID, INT4OID, BOOLOID};
	Datum		values[3];
	MemoryContext batch_cxt = CurrentMemoryContext;
	char	   *source;
	int			n = 0;
	uint64		i;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "eventstore relay: reading the outbox");

	if (!OidIsValid(get_extension_oid("eventstore", true)))
	{
		*wait_ms = ES_NO_EXTENSION_MS;
		SPI_finish();
		CommitTransactionCommand();
		return 0;
	}

	/* The horizon comes before the snapshot the query runs with */
	values[0] = Int64GetDatum(EsHorizon(ES_SEQ_OUTBOX));
	values[1] = Int32GetDatum(es_relay_batch_size);
	values[2] = BoolGetDatum(es_on_dead_letter == ES_DEAD_LETTER_PARK);
	source = MemoryContextStrdup(batch_cxt, EsCloudEventsSource());
	PushActiveSnapshot(GetTransactionSnapshot());

	/*
	 * An event's message is built from its row here: see cloudevents.c.
	 *
	 * Planned at each round for the outbox as it is now: it swings from
	 * empty to a burst of many thousand rows, and a plan cached while it was
	 * empty checks each row's key against the whole table (a fetch took 57 s
	 * for 30,000 rows).  Planning costs well under a millisecond.
	 */
	EsSpiExec(EsPlanWithOptions(&fetch_plan,
					 "SELECT o.id, o.topic, o.message_key,"
					 " CASE WHEN e.global_position IS NULL THEN o.payload::pg_catalog.text"
					 " ELSE e.data::pg_catalog.text END,"
					 " o.headers, o.attempts,"
					 " o.headers OPERATOR(pg_catalog.?) 'eventstore-original-topic',"
					 " o.created_at, e.event_id, e.event_type, e.stream_id, e.recorded_at,"
					 " e.stream_version, e.global_position, e.metadata"
					 " FROM eventstore.outbox o"
					 " LEFT JOIN eventstore.events e"
					 " ON e.global_position OPERATOR(pg_catalog.=) o.event_position"
					 " WHERE o.id OPERATOR(pg_catalog.<) $1"
					 " AND (o.next_attempt_at IS NULL"
					 " OR o.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())"
					 " AND NOT EXISTS (SELECT FROM eventstore.outbox b"
					 " WHERE b.message_key OPERATOR(pg_catalog.=) o.message_key"
					 " AND b.id OPERATOR(pg_catalog.<) o.id"
					 " AND b.next_attempt_at OPERATOR(pg_catalog.>) pg_catalog.now())"
					 " AND NOT ($3 AND EXISTS (SELECT FROM eventstore.dead_letters d"
					 " WHERE d.message_key OPERATOR(pg_catalog.=) o.message_key))"
					 " ORDER BY o.id LIMIT $2",
					 3, argtypes, CURSOR_OPT_CUSTOM_PLAN),
			  values, NULL, true, SPI_OK_SELECT);

	*msgs = MemoryContextAllocZero(batch_cxt, sizeof(EsMessage) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		EsMessage  *m = &(*msgs)[n++];
		MemoryContext old = MemoryContextSwitchTo(batch_cxt);
		bool		isnull;
		bool		no_event;
		Datum		position = SPI_getbinval(tup, desc, 14, &no_event);

		m->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		m->topic = EsCopyText(tup, desc, 2);
		m->key = EsCopyText(tup, desc, 3);
		m->value = EsCopyText(tup, desc, 4);
		m->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		m->forwarded = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		m->enqueued_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 8, &isnull));
		if (no_event)
			m->nheaders = EsOutboxHeaders(DatumGetJsonbP(SPI_getbinval(tup, desc, 5, &isnull)),
										  m->id, &m->headers);
		else
		{
			EsEventRow	ev;

			ev.event_id = SPI_getbinval(tup, desc, 9, &isnull);
			ev.event_type = DatumGetTextPP(SPI_getbinval(tup, desc, 10, &isnull));
			ev.stream_id = DatumGetTextPP(SPI_getbinval(tup, desc, 11, &isnull));
			ev.recorded_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 12, &isnull));
			ev.stream_version = DatumGetInt64(SPI_getbinval(tup, desc, 13, &isnull));
			ev.global_position = DatumGetInt64(position);
			ev.metadata = DatumGetJsonbP(SPI_getbinval(tup, desc, 15, &isnull));
			m->headers = palloc(sizeof(EsHeader) * ES_CE_MAX_HEADERS);
			m->nheaders = EsCloudEventHeaders(&ev, source, m->headers);
		}
		MemoryContextSwitchTo(old);
	}

	/* Not a full batch: sleep until the next retry is due, or the idle timer */
	*wait_ms = es_relay_idle_interval;
	*backing_off = false;
	if (n < es_relay_batch_size)
	{
		bool		isnull;
		Datum		due;

		EsSpiExec(EsPlan(&due_plan,
						 "SELECT pg_catalog.ceil(pg_catalog.date_part('epoch',"
						 " pg_catalog.min(next_attempt_at) OPERATOR(pg_catalog.-) pg_catalog.now())"
						 " OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8"
						 " FROM eventstore.outbox"
						 " WHERE next_attempt_at OPERATOR(pg_catalog.>) pg_catalog.now()",
						 0, NULL),
				  NULL, NULL, true, SPI_OK_SELECT);
		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*wait_ms = Max(1, Min(*wait_ms, DatumGetInt64(due)));
		*backing_off = !isnull;
	}

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return n;
}

/* The wait before attempt 'attempts' + 1: exponential, with equal jitter */
static double
EsBackoffMs(int attempts)
{
	double		delay = es_retry_backoff_initial;

	while (attempts-- > 0 && delay < es_retry_backoff_max)
		delay *= 2;
	delay = Min(delay, es_retry_backoff_max);
	return delay / 2 + (delay / 2) * EsRandomDouble();
}

/* A Kafka error as stored in last_error: its name, then its text */
static char *
EsErrorText(rd_kafka_resp_err_t err)
{
	return psprintf("%s: %s", rd_kafka_err2name(err), rd_kafka_err2str(err));
}

/* Build an int8[] or text[] from the collected values */
static Datum
EsArray(Datum *elems, int n, Oid type)
{
	if (type == INT8OID)
		return PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
											   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (type == FLOAT8OID)
		return PointerGetDatum(construct_array(elems, n, FLOAT8OID, sizeof(float8),
											   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* Delete acknowledged rows */
static void
EsRelayDelete(Datum *ids, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		values[1];

	if (n == 0)
		return;
	values[0] = EsArray(ids, n, INT8OID);
	EsSpiExec(EsPlan(&plan,
					 "DELETE FROM eventstore.outbox WHERE id OPERATOR(pg_catalog.=) ANY ($1)",
					 1, argtypes),
			  values, NULL, false, SPI_OK_DELETE);
}

/* Schedule retries: attempts + 1, the next attempt after the given delay */
static void
EsRelayRetry(Datum *ids, Datum *delays, Datum *errors, int n)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {INT8ARRAYOID, FLOAT8ARRAYOID, TEXTARRAYOID};
	Datum		values[3];

	if (n == 0)
		return;
	values[0] = EsArray(ids, n, INT8OID);
	values[1] = EsArray(delays, n, FLOAT8OID);
	values[2] = EsArray(errors, n, TEXTOID);
	EsSpiExec(EsPlan(&plan,
					 "UPDATE eventstore.outbox o SET attempts = o.attempts OPERATOR(pg_catalog.+) 1,"
					 " next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
					 " pg_catalog.make_interval(secs => u.delay OPERATOR(pg_catalog./) 1000),"
					 " first_failed_at = coalesce(o.first_failed_at, pg_catalog.now()),"
					 " last_error = u.err"
					 " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))"
					 " AS u(id, delay, err)"
					 " WHERE o.id OPERATOR(pg_catalog.=) u.id",
					 3, argtypes),
			  values, NULL, false, SPI_OK_UPDATE);
}

/*
 * Move dead letters out of the outbox: into eventstore.dead_letters, or,
 * when eventstore.dead_letter_topic is set, back into the outbox as a
 * message to that topic (with the error in its headers).
 */
static void
EsRelayDeadLetter(Datum *ids, Datum *errors, int n, bool forward)
{
	static SPIPlanPtr table_plan = NULL;
	static SPIPlanPtr forward_plan = NULL;
	Oid			argtypes[4] = {INT8ARRAYOID, TEXTARRAYOID, TEXTOID, TEXTOID};
	Datum		values[4];

	if (n == 0)
		return;
	values[0] = EsArray(ids, n, INT8OID);
	values[1] = EsArray(errors, n, TEXTOID);
	if (!forward)
	{
		EsSpiExec(EsPlan(&table_plan,
						 "WITH moved AS (DELETE FROM eventstore.outbox o"
						 " USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(id, err)"
						 " WHERE o.id OPERATOR(pg_catalog.=) u.id RETURNING o.*, u.err)"
						 " INSERT INTO eventstore.dead_letters (outbox_id, topic, message_key,"
						 " payload, headers, event_position, created_at, attempts, last_error,"
						 " first_failed_at, last_failed_at)"
						 " SELECT id, topic, message_key, payload, headers, event_position,"
						 " created_at, attempts OPERATOR(pg_catalog.+) 1, err,"
						 " coalesce(first_failed_at, pg_catalog.now()), pg_catalog.now()"
						 " FROM moved ORDER BY id",
						 2, argtypes),
				  values, NULL, false, SPI_OK_INSERT);
		return;
	}
	values[2] = CStringGetTextDatum(es_dead_letter_topic);
	values[3] = CStringGetTextDatum(EsCloudEventsSource());
	EsHoldHorizon(ES_SEQ_OUTBOX);
	EsSpiExec(EsPlan(&forward_plan,
					 "WITH moved AS (DELETE FROM eventstore.outbox o"
					 " USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS u(id, err)"
					 " WHERE o.id OPERATOR(pg_catalog.=) u.id RETURNING o.*, u.err)"
					 " INSERT INTO eventstore.outbox (topic, message_key, payload, headers)"
					 " SELECT pg_catalog.replace($3, '%s', m.topic), m.message_key,"
					 " coalesce(e.data, m.payload),"
					 " CASE WHEN m.event_position IS NULL THEN m.headers"
					 " ELSE eventstore.cloudevent_headers(e, $4) END"
					 " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object("
					 "'eventstore-error', m.err, 'eventstore-original-topic', m.topic,"
					 " 'eventstore-original-outbox-id', m.id::pg_catalog.text,"
					 " 'eventstore-attempts', (m.attempts OPERATOR(pg_catalog.+) 1)::pg_catalog.text)"
					 " FROM moved m LEFT JOIN eventstore.events e"
					 " ON e.global_position OPERATOR(pg_catalog.=) m.event_position"
					 " ORDER BY m.id",
					 4, argtypes),
			  values, NULL, false, SPI_OK_INSERT);
}

/* Record the outcome of a sent batch in the outbox, in one transaction */
static void
EsRelayApply(EsMessage *msgs, int n)
{
	Datum	   *sent = palloc(sizeof(Datum) * n);
	Datum	   *retry_ids = palloc(sizeof(Datum) * n);
	Datum	   *retry_delays = palloc(sizeof(Datum) * n);
	Datum	   *retry_errors = palloc(sizeof(Datum) * n);
	Datum	   *dead_ids[2];
	Datum	   *dead_errors[2];
	int			nsent = 0,
				nretry = 0,
				ndead[2] = {0, 0};
	rd_kafka_resp_err_t logged = RD_KAFKA_RESP_ERR_NO_ERROR;
	bool		forward_ok = es_dead_letter_topic[0] != '\0' &&
		es_on_dead_letter != ES_DEAD_LETTER_PARK;
	double	   *latencies = palloc(sizeof(double) * n);
	TimestampTz now = GetCurrentTimestamp();
	char	   *last_error = NULL;
	bool		all_down = true;
	int			i;

	dead_ids[0] = palloc(sizeof(Datum) * n);
	dead_ids[1] = palloc(sizeof(Datum) * n);
	dead_errors[0] = palloc(sizeof(Datum) * n);
	dead_errors[1] = palloc(sizeof(Datum) * n);

	for (i = 0; i < n; i++)
	{
		EsMessage  *m = &msgs[i];
		Datum		error;
		int			where;

		if (m->skipped)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			latencies[nsent] = (double) (now - m->enqueued_at) / 1000.0;
			sent[nsent++] = Int64GetDatum(m->id);
			all_down = false;
			continue;
		}
		last_error = EsErrorText(m->err);
		all_down = all_down && EsKafkaIsBrokerDown(m->err);
		error = CStringGetTextDatum(last_error);
		if (!EsKafkaIsPermanent(m->err) && m->attempts + 1 < es_max_attempts)
		{
			/* Log a batch's retriable failures once per error */
			if (m->err != logged)
				ereport(LOG,
						(errmsg("eventstore relay: delivery of outbox message " INT64_FORMAT " to topic \"%s\" failed, will retry: %s",
								m->id, m->topic, EsErrorText(m->err)),
						 errdetail("Attempt %d of %d.", m->attempts + 1, es_max_attempts)));
			logged = m->err;
			retry_ids[nretry] = Int64GetDatum(m->id);
			retry_delays[nretry] = Float8GetDatum(EsBackoffMs(m->attempts));
			retry_errors[nretry++] = error;
			continue;
		}
		/* A failed forward to the dead-letter topic stays in the table */
		where = (forward_ok && !m->forwarded) ? 1 : 0;
		ereport(LOG,
				(errmsg("eventstore relay: outbox message " INT64_FORMAT " to topic \"%s\" is a dead letter: %s",
						m->id, m->topic, EsErrorText(m->err)),
				 errdetail("%s after %d attempts; %s.",
						   EsKafkaIsPermanent(m->err) ? "Permanent error" : "Retriable error",
						   m->attempts + 1,
						   where ? "forwarded to the dead-letter topic" : "kept in eventstore.dead_letters")));
		dead_ids[where][ndead[where]] = Int64GetDatum(m->id);
		dead_errors[where][ndead[where]++] = error;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "eventstore relay: recording deliveries");
	EsRelayDelete(sent, nsent);
	EsRelayRetry(retry_ids, retry_delays, retry_errors, nretry);
	EsRelayDeadLetter(dead_ids[0], dead_errors[0], ndead[0], false);
	EsRelayDeadLetter(dead_ids[1], dead_errors[1], ndead[1], true);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();

	EsRelayAccount(nsent, nretry, ndead[0] + ndead[1], last_error, latencies, nsent);
	if (nsent + nretry + ndead[0] + ndead[1] > 0)
		EsRelaySetState(all_down ? ES_RELAY_BROKER_DOWN : ES_RELAY_IDLE);
}

/*
 * One round: fetch, send, record.  Returns how many messages it handled;
 * sets *wait_ms to how long to sleep when that was less than a full batch.
 */
static int
EsRelayRound(MemoryContext batch_cxt, long *wait_ms)
{
	EsMessage  *msgs;
	int			n;
	bool		backing_off = false;
	MemoryContext old;

	MemoryContextReset(batch_cxt);
	old = MemoryContextSwitchTo(batch_cxt);
	n = EsRelayFetch(&msgs, wait_ms, &backing_off);
	MemoryContextSwitchTo(batch_cxt);
	if (n > 0)
	{
		EsRelaySetState(ES_RELAY_SENDING);
		pgstat_report_activity(STATE_RUNNING, psprintf("eventstore relay: sending %d messages", n));
		EsKafkaSend(msgs, n);
		EsRelayApply(msgs, n);
		MemoryContextSwitchTo(batch_cxt);
	}
	else
	{
		EsRelayStats st;

		/* Nothing to send: keep broker_down until a delivery succeeds */
		if (EsRelayStatsCopy(&st) && st.state != ES_RELAY_BROKER_DOWN)
			EsRelaySetState(backing_off ? ES_RELAY_BACKING_OFF : ES_RELAY_IDLE);
	}
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting for messages");
	MemoryContextSwitchTo(old);
	return n;
}

/* The relay worker's entry point */
void
eventstore_relay_main(Datum arg)
{
	MemoryContext batch_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(es_database, NULL, 0);

	EsSetRelayLatch(MyLatch);
	before_shmem_exit(EsRelayExit, (Datum) 0);
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay batch",
									  ALLOCSET_DEFAULT_SIZES);
	ereport(LOG,
			(errmsg("eventstore relay started for database \"%s\"", es_database)));
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting for messages");

	for (;;)
	{
		long		wait_ms = es_relay_idle_interval;
		long		stats_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (es_kafka_brokers[0] == '\0' || EsKafkaSettingsChanged() || EsKafkaFailed())
			EsKafkaStop();

		if (es_kafka_brokers[0] == '\0')
		{
			EsRelaySetState(ES_RELAY_DISABLED);
			wait_ms = -1;		/* off: sleep until a reload */
		}
		else if (!EsKafkaRunning() && !EsKafkaStart())
		{
			EsRelaySetState(ES_RELAY_CONNECTING);
			EsRelayAccount(0, 0, 0, "invalid Kafka settings: see the server log", NULL, 0);
			wait_ms = es_retry_backoff_max;
		}
		else
		{
			EsKafkaServe();
			if (EsRelayRound(batch_cxt, &wait_ms) == es_relay_batch_size)
			{
				(void) pgstat_report_stat(false);
				continue;
			}
		}

		/*
		 * Report table statistics, as PostgresMain does between queries: the
		 * outbox's autovacuum depends on the relay's deletes being counted.
		 * What could not be reported yet goes out after a short wait.
		 */
		stats_ms = pgstat_report_stat(false);
		if (stats_ms > 0 && (wait_ms < 0 || stats_ms < wait_ms))
			wait_ms = stats_ms;

		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (wait_ms >= 0 ? WL_TIMEOUT : 0),
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
