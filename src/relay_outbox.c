/*
 * relay_outbox.c
 *		The relay's statements on the outbox: reading the next messages to
 *		send, and recording what the broker did with sent ones.
 *
 * Each runs in a short transaction of its own, never while the relay waits
 * for the broker.  A read takes rows below the outbox horizon only (so no
 * smaller id can still commit), after the largest id already taken (the
 * relay keeps what it has in flight in memory, see relay.c), that are due,
 * and whose key has no earlier row waiting for a retry or, in park mode, a
 * dead letter.  A recording deletes acknowledged rows by id, schedules
 * retries and moves dead letters, for rows the relay read itself: never a
 * range of ids, which could cover a row not sent yet.
 *
 * Encoding: messages go out in UTF-8; in a database of another encoding
 * (but SQL_ASCII, whose bytes pass unchanged) keys, values and headers are
 * converted as they are read.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "optimizer/plancat.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "eventstore.h"
#include "relay.h"

/*
 * Plans that read the outbox's primary key in id order and reach every
 * other row through an index, whatever the table's statistics say, for the
 * current transaction (see EsPinPlans)
 */
static const char *const es_plan_settings[] = {
	"enable_seqscan", "enable_sort", "enable_bitmapscan",
};

static get_relation_info_hook_type prev_get_relation_info = NULL;

/*
 * The relay's planner hook: of eventstore.events' indexes it sees only the
 * primary key.  The relay finds events by position only, and with
 * statistics of a nearly empty table the planner took the
 * (category, global_position) index for as cheap: a scan of the whole index
 * for every message (a read of one message took 60-140 ms once 200,000
 * events were in).
 */
static void
EsRelayRelationInfo(PlannerInfo *root, Oid relid, bool inhparent, RelOptInfo *rel)
{
	ListCell   *lc;
	char	   *name;

	if (prev_get_relation_info)
		prev_get_relation_info(root, relid, inhparent, rel);
	if (get_rel_namespace(relid) != get_namespace_oid("eventstore", true) ||
		(name = get_rel_name(relid)) == NULL || strcmp(name, "events") != 0)
		return;
	foreach(lc, rel->indexlist)
	{
		IndexOptInfo *index = lfirst(lc);
		char	   *iname = get_rel_name(index->indexoid);

		if (iname == NULL || strcmp(iname, "events_pkey") != 0)
			rel->indexlist = foreach_delete_current(rel->indexlist, lc);
	}
}

/* Install the relay's planner hook (in the relay process only) */
void
EsRelayInstallPlannerHook(void)
{
	prev_get_relation_info = get_relation_info_hook;
	get_relation_info_hook = EsRelayRelationInfo;
}

/*
 * The outbox swings from empty to a burst of many thousand rows and back,
 * with dead rows behind, and the relay's statements are planned once.
 * Planned for statistics taken while it was empty, a read sorted a whole
 * burst at each call (150 ms a read, 30,000 rows behind), joined each row
 * with a scan of every event (a 200,000-message drain took 28 s), and a
 * recording deleted by a scan of the whole table.  The reads join events
 * laterally (one probe per row), the relay's planner sees only the primary
 * key of events (EsRelayRelationInfo), and these settings do the rest.
 */
static void
EsPinPlans(void)
{
	int			i;

	for (i = 0; i < (int) lengthof(es_plan_settings); i++)
		(void) set_config_option(es_plan_settings[i], "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
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
		m->err = ES_SINK_REFUSED;
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
 * Read ready outbox rows after id 'after' into 'msgs' (allocated in the
 * current memory context, which must outlive the transaction), at most
 * 'limit'; returns how many.  *outbox is set to the outbox table's OID
 * (InvalidOid: no extension yet).
 *
 * A row whose key has an earlier row scheduled for a retry is not read:
 * when reading from the start (after = 0), only while that retry is not
 * due (a due one is read first, in id order); after that, whether it is due
 * or not, since it lies behind the read position and is read again only
 * from the start (relay.c).  '*retries' says whether any row is scheduled
 * for a retry: when false, that check (an index probe per row) is skipped.
 * The relay is the only writer of next_attempt_at, so it knows: it passes
 * true until a read found none, and after it scheduled one.  When fewer
 * than 'limit' rows were found, or with '*retries', the retries are looked
 * up: *retry_due is set to when the next is due (0: none in the future) and
 * *retries to whether any is scheduled; and when fewer than 'limit' were
 * found, *wait_ms says how soon to look again (committed rows held back by
 * an open transaction).  Without the extension (dropped) it sets
 * es_relay_no_extension and finds nothing: the relay then ends.
 */
/*
 * The rows of sink $6 ready to be read after id $4 (below the horizon $1,
 * due, key not waiting for an earlier retry ($5) nor parked ($3)), at most
 * $2, in id order: what a read takes, and where a quarantine looks
 */
#define ES_READY_ROWS \
	"SELECT * FROM eventstore.outbox o" \
	" WHERE o.id OPERATOR(pg_catalog.<) $1" \
	" AND o.id OPERATOR(pg_catalog.>) $4" \
	" AND o.sink OPERATOR(pg_catalog.=) $6" \
	" AND (o.next_attempt_at IS NULL" \
	" OR o.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now())" \
	" AND NOT ($5 AND EXISTS (SELECT FROM eventstore.outbox b" \
	" WHERE b.message_key OPERATOR(pg_catalog.=) o.message_key" \
	" AND b.sink OPERATOR(pg_catalog.=) o.sink" \
	" AND b.id OPERATOR(pg_catalog.<) o.id" \
	" AND b.next_attempt_at OPERATOR(pg_catalog.>)" \
	" CASE WHEN $4 OPERATOR(pg_catalog.=) 0 THEN pg_catalog.now()" \
	" ELSE '-infinity'::pg_catalog.timestamptz END))" \
	" AND NOT ($3 AND EXISTS (SELECT FROM eventstore.dead_letters d" \
	" WHERE d.message_key OPERATOR(pg_catalog.=) o.message_key" \
	" AND d.sink OPERATOR(pg_catalog.=) o.sink))" \
	" ORDER BY o.id LIMIT $2"

int
EsRelayFetch(EsSinkId sink, Oid *outbox, int64 after, int limit, EsMessage **msgs,
			 long *wait_ms, TimestampTz *retry_due, bool *retries)
{
	static SPIPlanPtr fetch_plan = NULL;
	static SPIPlanPtr due_plan = NULL;
	Oid			argtypes[6] = {INT8OID, INT4OID, BOOLOID, INT8OID, BOOLOID, TEXTOID};
	Datum		values[6];
	MemoryContext batch_cxt = CurrentMemoryContext;
	char	   *source;
	Oid			to_utf8;
	int64	   *ids;
	TimestampTz *commits;
	int			n = 0;
	uint64		i;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "eventstore relay: reading the outbox");

	*outbox = InvalidOid;
	if (!OidIsValid(get_extension_oid("eventstore", true)))
	{
		es_relay_no_extension = true;
		SPI_finish();
		CommitTransactionCommand();
		return 0;
	}

	*outbox = EsLockOutbox(AccessShareLock);
	if (get_attnum(*outbox, "sink") == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the eventstore extension's SQL objects are older than its library"),
				 errhint("Run ALTER EXTENSION eventstore UPDATE in database \"%s\"; the outbox is relayed after that.",
						 get_database_name(MyDatabaseId))));
	to_utf8 = EsUtf8Conversion();

	EsPinPlans();

	/* The horizon comes before the snapshot the query runs with */
	values[0] = Int64GetDatum(EsHorizon(ES_SEQ_OUTBOX));
	values[1] = Int32GetDatum(limit);
	values[2] = BoolGetDatum(es_on_dead_letter == ES_DEAD_LETTER_PARK);
	values[3] = Int64GetDatum(after);
	values[4] = BoolGetDatum(*retries);
	values[5] = CStringGetTextDatum(EsSinkName(sink));
	source = MemoryContextStrdup(batch_cxt, EsCloudEventsSource());
	PushActiveSnapshot(GetTransactionSnapshot());

	/*
	 * An event's message is built from its row here: see cloudevents.c.
	 * Planned once (planning took 1.8 ms, as long as a read of 1,000 rows).
	 */
	EsSpiExec(EsPlanWithOptions(&fetch_plan,
								"SELECT o.id, o.topic, o.message_key,"
								" CASE WHEN e.global_position IS NULL THEN o.payload::pg_catalog.text"
								" ELSE e.data::pg_catalog.text END,"
								" o.headers, o.attempts,"
								" o.headers OPERATOR(pg_catalog.?) 'eventstore-original-topic',"
								" o.created_at, e.event_id, e.event_type, e.stream_id, e.recorded_at,"
								" e.stream_version, e.global_position, e.metadata"
								" FROM (" ES_READY_ROWS ") o"
								" LEFT JOIN LATERAL (SELECT * FROM eventstore.events e"
								" WHERE e.global_position OPERATOR(pg_catalog.=) o.event_position"
								" LIMIT 1) e ON true"
								" ORDER BY o.id",
								6, argtypes, CURSOR_OPT_GENERIC_PLAN),
			  values, NULL, true, SPI_OK_SELECT);

	*msgs = MemoryContextAllocZero(batch_cxt, sizeof(EsMessage) * Max(SPI_processed, 1));
	ids = palloc(sizeof(int64) * Max(SPI_processed, 1));
	commits = palloc(sizeof(TimestampTz) * Max(SPI_processed, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
											 &isnull));
	}
	EsOutboxCommitTimes(ids, (int) SPI_processed, commits);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		EsMessage  *m = &(*msgs)[n++];
		MemoryContext old = MemoryContextSwitchTo(batch_cxt);
		bool		isnull;
		bool		no_event;
		Datum		position = SPI_getbinval(tup, desc, 14, &no_event);
		int			h;

		m->id = ids[i];
		m->topic = EsCopyText(tup, desc, 2);
		m->key = EsCopyText(tup, desc, 3);
		m->value = EsCopyText(tup, desc, 4);
		m->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		m->forwarded = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
		m->committed_at = commits[i] != 0 ? commits[i] :
			DatumGetTimestampTz(SPI_getbinval(tup, desc, 8, &isnull));
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
		m->bytes = (m->key ? strlen(m->key) : 0) + (m->value ? strlen(m->value) : 0);
		for (h = 0; h < m->nheaders && m->refused == NULL; h++)
		{
			m->bytes += strlen(m->headers[h].name) + strlen(m->headers[h].value);
			if (strcmp(m->headers[h].name, "ce_id") == 0)
				m->ce_id = m->headers[h].value;
		}
		MemoryContextSwitchTo(old);
	}

	if (n < limit || *retries)
	{
		bool		isnull;
		Datum		due;

		/*
		 * When the sink's next retry is due, and whether committed rows at
		 * or above the horizon wait for an open transaction that took a
		 * smaller id.
		 * That transaction's end wakes us; should the wake-up be missed, look
		 * again soon rather than after the idle interval.
		 */
		EsSpiExec(EsPlan(&due_plan,
						 "SELECT (SELECT pg_catalog.ceil(pg_catalog.date_part('epoch',"
						 " pg_catalog.min(next_attempt_at) OPERATOR(pg_catalog.-) pg_catalog.now())"
						 " OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8"
						 " FROM eventstore.outbox"
						 " WHERE next_attempt_at OPERATOR(pg_catalog.>) pg_catalog.now()"
						 " AND sink OPERATOR(pg_catalog.=) $6),"
						 " EXISTS (SELECT FROM eventstore.outbox"
						 " WHERE id OPERATOR(pg_catalog.>=) $1),"
						 " EXISTS (SELECT FROM eventstore.outbox"
						 " WHERE next_attempt_at IS NOT NULL AND sink OPERATOR(pg_catalog.=) $6)",
						 6, argtypes),
				  values, NULL, true, SPI_OK_SELECT);
		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		*retry_due = isnull ? 0 :
			TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(1, DatumGetInt64(due)));
		*retries = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
											  &isnull));
		if (n < limit &&
			DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)))
			*wait_ms = ES_HELD_BACK_RECHECK_MS;
	}

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return n;
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
					 " WHERE o.id OPERATOR(pg_catalog.=) u.id"
					 " AND o.id OPERATOR(pg_catalog.=) ANY ($1)",
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
						 " WHERE o.id OPERATOR(pg_catalog.=) u.id"
						 " AND o.id OPERATOR(pg_catalog.=) ANY ($1) RETURNING o.*, u.err)"
						 " INSERT INTO eventstore.dead_letters (outbox_id, topic, message_key,"
						 " payload, headers, event_position, created_at, attempts, last_error,"
						 " first_failed_at, last_failed_at, sink)"
						 " SELECT id, topic, message_key, payload, headers, event_position,"
						 " created_at, attempts OPERATOR(pg_catalog.+) 1, err,"
						 " coalesce(first_failed_at, pg_catalog.now()), pg_catalog.now(), sink"
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
					 " WHERE o.id OPERATOR(pg_catalog.=) u.id"
					 " AND o.id OPERATOR(pg_catalog.=) ANY ($1) RETURNING o.*, u.err)"
					 " INSERT INTO eventstore.outbox (topic, message_key, payload, headers, sink)"
					 " SELECT pg_catalog.replace($3, '%s', m.topic), m.message_key,"
					 " coalesce(e.data, m.payload),"
					 " CASE WHEN m.event_position IS NULL THEN m.headers"
					 " ELSE eventstore.cloudevent_headers(e, $4) END"
					 " OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object("
					 "'eventstore-error', m.err, 'eventstore-original-topic', m.topic,"
					 " 'eventstore-original-outbox-id', m.id::pg_catalog.text,"
					 " 'eventstore-attempts', (m.attempts OPERATOR(pg_catalog.+) 1)::pg_catalog.text),"
					 " m.sink"
					 " FROM moved m LEFT JOIN eventstore.events e"
					 " ON e.global_position OPERATOR(pg_catalog.=) m.event_position"
					 " ORDER BY m.id",
					 4, argtypes),
			  values, NULL, false, SPI_OK_INSERT);
}

/*
 * The first row a read of 'sink' after 'after' takes (the one such reads
 * fail on): its id, 0 if there is none.  With 'error', that row is moved to
 * eventstore.dead_letters with it, if it is row 'expect'.  In a transaction
 * of its own.
 */
int64
EsRelayQuarantine(EsSinkId sink, int64 after, int64 expect, const char *error)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[6] = {INT8OID, INT4OID, BOOLOID, INT8OID, BOOLOID, TEXTOID};
	Datum		values[6];
	Datum		id;
	Datum		err;
	bool		isnull = true;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgstat_report_activity(STATE_RUNNING, "eventstore relay: setting an unreadable message aside");
	EsLockOutbox(RowExclusiveLock);
	EsPinPlans();
	values[0] = Int64GetDatum(EsHorizon(ES_SEQ_OUTBOX));
	values[1] = Int32GetDatum(1);
	values[2] = BoolGetDatum(es_on_dead_letter == ES_DEAD_LETTER_PARK);
	values[3] = Int64GetDatum(after);
	values[4] = BoolGetDatum(true);
	values[5] = CStringGetTextDatum(EsSinkName(sink));
	PushActiveSnapshot(GetTransactionSnapshot());
	EsSpiExec(EsPlan(&plan, "SELECT o.id FROM (" ES_READY_ROWS ") o", 6, argtypes),
			  values, NULL, true, SPI_OK_SELECT);
	id = SPI_processed > 0 ?
		SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull) : (Datum) 0;
	if (!isnull && error != NULL && DatumGetInt64(id) == expect)
	{
		err = CStringGetTextDatum(error);
		EsRelayDeadLetter(&id, &err, 1, NULL);
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return isnull ? 0 : DatumGetInt64(id);
}

/*
 * Record settled messages in the outbox table 'outbox', in one transaction:
 * false (and nothing written) if that table no longer exists, because the
 * extension was dropped and created again since they were read: their ids
 * would name other rows.  An error leaves the outcome to be recorded again.
 */
bool
EsRelayRecord(EsOutcome *o, Oid outbox)
{
	bool		same;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "eventstore relay: recording deliveries");
	EsPinPlans();

	/* The lock keeps the table we compare the one we then write */
	same = EsLockOutbox(RowExclusiveLock) == outbox;
	if (same)
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
	return same;
}
