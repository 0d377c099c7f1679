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
 * The worker sleeps on its latch: a transaction that took the outbox
 * horizon sets it once it ended and released its locks (outbox.c).  When a
 * round finds committed rows at or above the horizon (held back by an open
 * transaction) it looks again after ES_HELD_BACK_RECHECK_MS; a timer
 * (eventstore.relay_idle_interval) covers retries and anything missed.
 *
 * Errors: the worker runs with session settings of its own (a read-only
 * default or tiny timeouts of the database or role must not stop it).  An
 * ERROR in a round does not end the worker: it recovers as PostgreSQL's own
 * long-lived processes do (sigsetjmp, EmitErrorReport,
 * AbortCurrentTransaction, FlushErrorState), shows state "error" with the
 * message, and tries again after a backoff.  If the broker had already
 * answered for the batch, only its recording is tried again, from the
 * outcomes kept in memory: the batch is never sent twice for that.  FATAL
 * (SIGTERM) still ends it; the postmaster starts it again after
 * bgw_restart_time, and all progress is in the tables.
 *
 * Encoding: messages go out in UTF-8; in a database of another encoding
 * (but SQL_ASCII, whose bytes pass unchanged) keys, values and headers are
 * converted as they are read.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "catalog/namespace.h"
#include "nodes/makefuncs.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/timeout.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "eventstore.h"
#include "relay.h"

/* How soon to look again when committed rows wait behind an open transaction */
#define ES_HELD_BACK_RECHECK_MS 50
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

/* What a sent batch did, to be recorded in the outbox */
typedef struct EsOutcome
{
	Datum	   *sent;			/* acknowledged ids */
	double	   *latencies;		/* their enqueue-to-acknowledgement times, ms */
	int			nsent;
	Datum	   *retry_ids;
	Datum	   *retry_delays;
	Datum	   *retry_errors;
	int			nretry;
	Datum	   *dead_ids[2];	/* [0]: to the table, [1]: to the topic */
	Datum	   *dead_errors[2];
	int			ndead[2];
	char	   *last_error;		/* NULL: none */
	bool		all_down;		/* every failure was "brokers unreachable" */
	bool		skipped;		/* messages wait for the next round */
	double		first_retry_ms; /* the shortest retry delay scheduled */
	Oid			outbox;			/* the outbox table the batch came from */
	char	   *dead_letter_topic;	/* eventstore.dead_letter_topic then */
} EsOutcome;

/* The outbox table the current batch was read from */
static Oid	es_batch_outbox = InvalidOid;

/*
 * A sent batch whose recording failed (in the batch memory context): the
 * next rounds record it before they read anything, so it is never sent again
 */
static EsOutcome *es_unrecorded = NULL;

/* Consecutive failed rounds, and when the next try is due (0: now) */
static int	es_failed_rounds = 0;
static TimestampTz es_retry_at = 0;

/* What the current round does, for last_error */
static const char *es_round_step = "reading the outbox";

/* Withdraw our latch from shared memory as the worker exits */
static void
EsRelayExit(int code, Datum arg)
{
	EsSetRelayLatch(NULL);
}

/*
 * The relay's state as relay_status() shows it: "error" while rounds fail,
 * and "broker_down" instead of sending, backing off or idle while the
 * brokers cannot be reached (until a delivery succeeds)
 */
void
EsRelayShowState(EsRelayState state)
{
	if (es_failed_rounds > 0)
		state = ES_RELAY_ERROR;
	else if (EsKafkaBrokersDown() &&
			 (state == ES_RELAY_SENDING || state == ES_RELAY_BACKING_OFF ||
			  state == ES_RELAY_IDLE))
		state = ES_RELAY_BROKER_DOWN;
	EsRelaySetState(state);
}

/*
 * The conversion from the database's encoding to UTF-8: InvalidOid when
 * none is needed (UTF8, and SQL_ASCII, whose bytes pass unchanged); an
 * error when the database has none (MULE_INTERNAL): the relay cannot serve
 * it.  In a transaction.
 */
static Oid
EsUtf8Conversion(void)
{
	int			enc = GetDatabaseEncoding();
	Oid			proc;

	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		return InvalidOid;
	proc = FindDefaultConversionProc(enc, PG_UTF8);
	if (!OidIsValid(proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("database encoding \"%s\" has no conversion to UTF-8", GetDatabaseEncodingName()),
				 errdetail("The relay sends every message in UTF-8."),
				 errhint("Serve a database in UTF8 or another encoding that converts to UTF-8.")));
	return proc;
}

/* The longest string EsToUtf8() converts: its output buffer stays below 1 GB */
#define ES_MAX_CONVERTED ((int) ((MaxAllocSize - 1) / MAX_CONVERSION_GROWTH))

/*
 * A string of the database's encoding in UTF-8 through 'proc' (see
 * EsUtf8Conversion), or NULL when a character has no UTF-8 equivalent or
 * the string is longer than ES_MAX_CONVERTED (no broker takes such a
 * message anyway)
 */
static char *
EsToUtf8(Oid proc, char *s)
{
	int			len;
	char	   *out;

	if (s == NULL || !OidIsValid(proc))
		return s;
	len = strlen(s);
	if (len > ES_MAX_CONVERTED)
		return NULL;
	out = palloc((Size) len * MAX_CONVERSION_GROWTH + 1);
	if (pg_do_encoding_conversion_buf(proc, GetDatabaseEncoding(), PG_UTF8,
									  (unsigned char *) s, len,
									  (unsigned char *) out,
									  len * MAX_CONVERSION_GROWTH + 1, true) != len)
		return NULL;
	/* Give back the room a long string did not need */
	if (len > 1000000)
		out = repalloc(out, strlen(out) + 1);
	return out;
}

/*
 * Convert a message to UTF-8 through 'proc'; a message with a character
 * that has none is refused (and becomes a dead letter, a permanent error)
 */
static void
EsMessageToUtf8(Oid proc, EsMessage *m)
{
	bool		ok = true;
	int			h;

	if (!OidIsValid(proc))
		return;
	ok = (m->key == NULL || (m->key = EsToUtf8(proc, m->key)) != NULL) &&
		(m->value == NULL || (m->value = EsToUtf8(proc, m->value)) != NULL);
	for (h = 0; ok && h < m->nheaders; h++)
		ok = (m->headers[h].name = EsToUtf8(proc, (char *) m->headers[h].name)) != NULL &&
			(m->headers[h].value = EsToUtf8(proc, m->headers[h].value)) != NULL;
	if (!ok)
	{
		m->done = true;
		m->err = RD_KAFKA_RESP_ERR__BAD_MSG;
		m->refused = psprintf("not convertible to UTF-8: a character of the database encoding \"%s\" has no UTF-8 equivalent, or a field is longer than %d bytes",
							  GetDatabaseEncodingName(), ES_MAX_CONVERTED);
	}
}

/*
 * The OID of eventstore.outbox, locked in 'mode' (InvalidOid if it does not
 * exist).  Looked up with the lock, as DML does: a concurrent DROP EXTENSION
 * is waited for, and then the table that replaced it is the one found.
 */
static Oid
EsLockOutbox(LOCKMODE mode)
{
	return RangeVarGetRelid(makeRangeVar("eventstore", "outbox", -1), mode, true);
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
	Oid			to_utf8;
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

	es_batch_outbox = EsLockOutbox(AccessShareLock);
	to_utf8 = EsUtf8Conversion();

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
		EsMessageToUtf8(to_utf8, m);
		MemoryContextSwitchTo(old);
	}

	/* Not a full batch: sleep until the next retry is due, or the idle timer */
	*wait_ms = es_relay_idle_interval;
	*backing_off = false;
	if (n < es_relay_batch_size)
	{
		bool		isnull;
		Datum		due;

		/*
		 * When the next retry is due, and whether committed rows at or above
		 * the horizon wait for an open transaction that took a smaller id.
		 * That transaction's end wakes us; should the wake-up be missed, look
		 * again soon rather than after the idle interval.
		 */
		EsSpiExec(EsPlan(&due_plan,
						 "SELECT (SELECT pg_catalog.ceil(pg_catalog.date_part('epoch',"
						 " pg_catalog.min(next_attempt_at) OPERATOR(pg_catalog.-) pg_catalog.now())"
						 " OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8"
						 " FROM eventstore.outbox"
						 " WHERE next_attempt_at OPERATOR(pg_catalog.>) pg_catalog.now()),"
						 " EXISTS (SELECT FROM eventstore.outbox"
						 " WHERE id OPERATOR(pg_catalog.>=) $1)",
						 1, argtypes),
				  values, NULL, true, SPI_OK_SELECT);
		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*wait_ms = Max(1, Min(*wait_ms, DatumGetInt64(due)));
		*backing_off = !isnull;
		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
			*wait_ms = Min(*wait_ms, ES_HELD_BACK_RECHECK_MS);
	}

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return n;
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
EsRelayDeadLetter(Datum *ids, Datum *errors, int n, const char *forward_to)
{
	static SPIPlanPtr table_plan = NULL;
	static SPIPlanPtr forward_plan = NULL;
	Oid			argtypes[4] = {INT8ARRAYOID, TEXTARRAYOID, TEXTOID, TEXTOID};
	Datum		values[4];

	if (n == 0)
		return;
	values[0] = EsArray(ids, n, INT8OID);
	values[1] = EsArray(errors, n, TEXTOID);
	if (forward_to == NULL)
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
	values[2] = CStringGetTextDatum(forward_to);
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

/*
 * What became of a sent batch (allocated in the current memory context):
 * logs the failures, once per error and batch
 */
static EsOutcome *
EsRelayClassify(EsMessage *msgs, int n)
{
	EsOutcome  *o = palloc0(sizeof(EsOutcome));
	rd_kafka_resp_err_t logged = RD_KAFKA_RESP_ERR_NO_ERROR;
	bool		forward_ok = es_dead_letter_topic[0] != '\0' &&
		es_on_dead_letter != ES_DEAD_LETTER_PARK;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	o->sent = palloc(sizeof(Datum) * n);
	o->latencies = palloc(sizeof(double) * n);
	o->retry_ids = palloc(sizeof(Datum) * n);
	o->retry_delays = palloc(sizeof(Datum) * n);
	o->retry_errors = palloc(sizeof(Datum) * n);
	o->dead_ids[0] = palloc(sizeof(Datum) * n);
	o->dead_ids[1] = palloc(sizeof(Datum) * n);
	o->dead_errors[0] = palloc(sizeof(Datum) * n);
	o->dead_errors[1] = palloc(sizeof(Datum) * n);
	o->all_down = true;
	o->outbox = es_batch_outbox;
	o->dead_letter_topic = forward_ok ? pstrdup(es_dead_letter_topic) : NULL;

	for (i = 0; i < n; i++)
	{
		EsMessage  *m = &msgs[i];
		Datum		error;
		int			where;

		if (m->skipped)
		{
			o->skipped = true;
			continue;
		}
		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			o->latencies[o->nsent] = (double) (now - m->enqueued_at) / 1000.0;
			o->sent[o->nsent++] = Int64GetDatum(m->id);
			o->all_down = false;
			continue;
		}
		o->last_error = m->refused ? m->refused : EsErrorText(m->err);
		o->all_down = o->all_down && EsKafkaIsBrokerDown(m->err);
		error = CStringGetTextDatum(o->last_error);
		if (!EsKafkaIsPermanent(m->err) && m->attempts + 1 < es_max_attempts)
		{
			/* Log a batch's retriable failures once per error */
			if (m->err != logged)
				ereport(LOG,
						(errmsg("eventstore relay: delivery of outbox message " INT64_FORMAT " to topic \"%s\" failed, will retry: %s",
								m->id, m->topic, EsErrorText(m->err)),
						 errdetail("Attempt %d of %d.", m->attempts + 1, es_max_attempts)));
			logged = m->err;
			o->retry_ids[o->nretry] = Int64GetDatum(m->id);
			o->retry_delays[o->nretry] = Float8GetDatum(EsBackoffMs(m->attempts));
			if (o->nretry == 0 || DatumGetFloat8(o->retry_delays[o->nretry]) < o->first_retry_ms)
				o->first_retry_ms = DatumGetFloat8(o->retry_delays[o->nretry]);
			o->retry_errors[o->nretry++] = error;
			continue;
		}
		/* A failed forward to the dead-letter topic stays in the table */
		where = (forward_ok && !m->forwarded) ? 1 : 0;
		ereport(LOG,
				(errmsg("eventstore relay: outbox message " INT64_FORMAT " to topic \"%s\" is a dead letter: %s",
						m->id, m->topic, o->last_error),
				 errdetail("%s after %d attempts; %s.",
						   EsKafkaIsPermanent(m->err) ? "Permanent error" : "Retriable error",
						   m->attempts + 1,
						   where ? "forwarded to the dead-letter topic" : "kept in eventstore.dead_letters")));
		o->dead_ids[where][o->ndead[where]] = Int64GetDatum(m->id);
		o->dead_errors[where][o->ndead[where]++] = error;
	}
	return o;
}

/*
 * Record the outcome of a sent batch in the outbox, in one transaction; an
 * error leaves it to be recorded again (es_unrecorded)
 */
static void
EsRelayRecord(EsOutcome *o)
{
	es_round_step = "recording deliveries";
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "eventstore relay: recording deliveries");

	/*
	 * The ids are the outbox's as it was when the batch was read.  If the
	 * extension was dropped and created again since (a batch kept by an
	 * error), they would name other rows: forget the outcome instead.  The
	 * lock keeps the table we compare the one we then write.
	 */
	if (EsLockOutbox(RowExclusiveLock) != o->outbox)
		ereport(LOG,
				(errmsg("eventstore relay: the outcome of a sent batch is dropped: the outbox it was read from no longer exists"),
				 errdetail("%d messages were acknowledged, %d were to be retried and %d to be dead-lettered.",
						   o->nsent, o->nretry, o->ndead[0] + o->ndead[1])));
	else
	{
		EsRelayDelete(o->sent, o->nsent);
		EsRelayRetry(o->retry_ids, o->retry_delays, o->retry_errors, o->nretry);
		EsRelayDeadLetter(o->dead_ids[0], o->dead_errors[0], o->ndead[0], NULL);
		EsRelayDeadLetter(o->dead_ids[1], o->dead_errors[1], o->ndead[1],
						  o->dead_letter_topic);
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();

	es_unrecorded = NULL;
	es_failed_rounds = 0;
	EsRelayAccount(o->nsent, o->nretry, o->ndead[0] + o->ndead[1], o->last_error,
				   o->latencies, o->nsent);
	if (o->nsent + o->nretry + o->ndead[0] + o->ndead[1] > 0 && o->all_down)
		EsKafkaSetBrokersDown();
	EsRelayShowState(o->nretry > 0 ? ES_RELAY_BACKING_OFF : ES_RELAY_IDLE);
}

/*
 * One round: fetch, send, record (or only record a batch whose recording
 * failed).  Returns how many messages it handled; sets *wait_ms to how long
 * to sleep when that was less than a full batch.
 */
static int
EsRelayRound(MemoryContext batch_cxt, long *wait_ms)
{
	EsMessage  *msgs;
	EsOutcome  *outcome;
	int			n;
	bool		backing_off = false;
	MemoryContext old;

	if (es_unrecorded != NULL)
	{
		old = MemoryContextSwitchTo(batch_cxt);
		EsRelayRecord(es_unrecorded);
		MemoryContextSwitchTo(old);
		*wait_ms = 0;			/* then read the outbox at once */
		return 0;
	}

	MemoryContextReset(batch_cxt);
	old = MemoryContextSwitchTo(batch_cxt);
	es_round_step = "reading the outbox";
	n = EsRelayFetch(&msgs, wait_ms, &backing_off);
	MemoryContextSwitchTo(batch_cxt);
	if (n > 0)
	{
		es_round_step = "sending";
		EsRelayShowState(ES_RELAY_SENDING);
		pgstat_report_activity(STATE_RUNNING, psprintf("eventstore relay: sending %d messages", n));
		EsKafkaSend(msgs, n);
		/* From here on the batch is recorded, not sent again */
		outcome = EsRelayClassify(msgs, n);
		es_unrecorded = outcome;
		EsRelayRecord(outcome);
		MemoryContextSwitchTo(batch_cxt);

		/*
		 * *wait_ms was computed before this batch was sent: messages it left
		 * for the next round go at once, and a retry it scheduled may be due
		 * before the time computed then
		 */
		if (outcome->skipped)
			*wait_ms = 0;
		else if (outcome->nretry > 0)
			*wait_ms = Max(1, Min(*wait_ms, (long) outcome->first_retry_ms));
	}
	else
	{
		es_failed_rounds = 0;
		EsRelayShowState(backing_off ? ES_RELAY_BACKING_OFF : ES_RELAY_IDLE);
	}
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting for messages");
	MemoryContextSwitchTo(old);
	return n;
}

/*
 * Session settings of the worker's own, over those of the database and the
 * role: it must be able to write, never time out, read committed rows, and
 * resolve no name through a search_path it does not control
 */
static void
EsRelaySessionSettings(void)
{
	static const char *const settings[][2] = {
		{"default_transaction_read_only", "off"},
		{"default_transaction_isolation", "read committed"},
		{"default_transaction_deferrable", "off"},
		{"statement_timeout", "0"},
		{"lock_timeout", "0"},
		{"idle_in_transaction_session_timeout", "0"},
		{"session_replication_role", "origin"},
		{"search_path", "pg_catalog, pg_temp"},
	};
	int			i;

	for (i = 0; i < (int) lengthof(settings); i++)
		SetConfigOption(settings[i][0], settings[i][1], PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * Recover from an ERROR in a round, as PostgreSQL's long-lived processes do
 * (autovacuum launcher, checkpointer): report it, abort the transaction,
 * release what the error left behind, and schedule the next try with the
 * retry backoff.  A sent batch whose recording failed stays in memory
 * (es_unrecorded); a batch that was not yet fully answered is dropped from
 * the producer and read again from the outbox.
 */
static void
EsRelayRecover(MemoryContext error_cxt)
{
	ErrorData  *edata;
	char		error[256];

	/* Since not using PG_TRY, reset the error stack by hand */
	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	disable_all_timeouts(false);
	QueryCancelPending = false;

	MemoryContextSwitchTo(error_cxt);
	edata = CopyErrorData();
	EmitErrorReport();
	AbortCurrentTransaction();
	LWLockReleaseAll();
	pgstat_report_wait_end();
	MemoryContextSwitchTo(TopMemoryContext);
	FlushErrorState();

	if (es_unrecorded == NULL && EsKafkaHasPending())
		EsKafkaStop();
	es_failed_rounds++;
	es_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											  (int) EsBackoffMs(es_failed_rounds - 1));
	snprintf(error, sizeof(error), "%s: %s", es_round_step, edata->message);
	EsRelayAccount(0, 0, 0, error, NULL, 0);
	EsRelayShowState(ES_RELAY_ERROR);
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting to retry after an error");
	MemoryContextReset(error_cxt);
	RESUME_INTERRUPTS();
}

/*
 * Sleep until the latch is set or wait_ms (-1: no limit) passed.  Table
 * statistics are reported meanwhile, as PostgresMain does between queries:
 * the outbox's autovacuum depends on the relay's deletes being counted.
 * What could not be reported yet goes out after a shorter wait, which does
 * not end the sleep: the outbox is read only when woken or at the end.
 */
static void
EsRelaySleep(long wait_ms)
{
	TimestampTz deadline = wait_ms >= 0 ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms) : 0;

	for (;;)
	{
		long		sleep_ms = wait_ms;
		long		stats_ms = pgstat_report_stat(false);
		int			rc;

		if (wait_ms >= 0)
			sleep_ms = Max(0, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline));
		if (stats_ms > 0 && (sleep_ms < 0 || stats_ms < sleep_ms))
			sleep_ms = stats_ms;
		rc = WaitLatch(MyLatch,
					   WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (sleep_ms >= 0 ? WL_TIMEOUT : 0),
					   sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if ((rc & WL_LATCH_SET) ||
			(wait_ms >= 0 && GetCurrentTimestamp() >= deadline))
			return;
	}
}

/* The relay worker's entry point */
void
eventstore_relay_main(Datum arg)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext batch_cxt;
	MemoryContext error_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(es_database, NULL, 0);
	EsRelaySessionSettings();

	EsSetRelayLatch(MyLatch);
	before_shmem_exit(EsRelayExit, (Datum) 0);
	/* Runs first (callbacks run in reverse order): flush the producer */
	before_shmem_exit(EsKafkaAtExit, (Datum) 0);
	batch_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay batch",
									  ALLOCSET_DEFAULT_SIZES);
	error_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay error",
									  ALLOCSET_DEFAULT_SIZES);
	ereport(LOG,
			(errmsg("eventstore relay started for database \"%s\"", es_database)));
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting for messages");

	/* An ERROR in a round comes back here: see EsRelayRecover */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		EsRelayRecover(error_cxt);
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		long		wait_ms = es_relay_idle_interval;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (es_unrecorded == NULL &&
			(es_kafka_brokers[0] == '\0' || EsKafkaSettingsChanged() || EsKafkaFailed()))
			EsKafkaStop();

		if (es_retry_at != 0 && GetCurrentTimestamp() >= es_retry_at)
			es_retry_at = 0;	/* the backoff after an error has passed */

		if (es_retry_at != 0)
		{
			/* After an error: wait for the backoff, whatever wakes us */
			wait_ms = Max(1, TimestampDifferenceMilliseconds(GetCurrentTimestamp(), es_retry_at));
		}
		else if (es_unrecorded != NULL)
			(void) EsRelayRound(batch_cxt, &wait_ms);
		else if (es_kafka_brokers[0] == '\0')
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

		if (wait_ms != 0)
			EsRelaySleep(wait_ms);
	}
}
