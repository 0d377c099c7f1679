/*
 * outbox.c
 *		The transactional outbox: eventstore.publish(), replay(), the rows
 *		append() enqueues for routed categories (see routes.c), and the
 *		callbacks that wake the relay and waiting subscription polls.
 *
 * Outbox rows are written in the caller's transaction, so a message exists
 * exactly when the transaction that produced it commits.  Outbox ids are
 * guarded by a horizon like event positions (see horizon.c): the relay only
 * takes rows below it, so it never sends a row while a smaller id of the
 * same key may still commit.
 *
 * Waking the relay: a transaction that took the outbox horizon wakes it as
 * it ends, committed or aborted, once its locks are released (a resource
 * release callback, RESOURCE_RELEASE_AFTER_LOCKS): woken earlier, the relay
 * could still see the horizon lock and skip the very rows that woke it.  An
 * abort matters too: committed rows of others above its bound were held back
 * by it.  A prepared transaction keeps its locks until COMMIT PREPARED or
 * ROLLBACK PREPARED, which wake the relay the same way (a ProcessUtility
 * hook).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/syscache.h"

#include "eventstore.h"
#include "sink.h"

/* Kafka's limit on topic name length */
#define ES_MAX_TOPIC_LEN 249

/* Set when this transaction took the outbox horizon: wake the relay at its end */
static bool es_wake_at_end = false;

/* Set when it made outbox rows the relay passed ready again: see EsWakeRelay() */
static bool es_revisit_at_end = false;

/* The sinks (bits 1 << sink) it enqueued rows for; 0: unknown, every sink */
static uint32 es_wake_sinks = 0;

/* Set when it enqueued outbox rows: note its commit for the relay's latencies */
static bool es_enqueued = false;

/* The outbox sequence's last value just before this transaction commits */
static int64 es_commit_bound = 0;

/* Set when this transaction took the events horizon: wake waiting polls at its end */
static bool es_wake_pollers = false;

/* Set when it created the extension or a database: wake the launcher at commit */
static bool es_wake_launcher = false;

/* Set when it dropped an extension: the relay looks whether ours is gone, at its end */
static bool es_check_extension = false;

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Raise an error unless 'topic' is a legal Kafka topic name */
void
EsCheckTopic(const char *topic)
{
	size_t		len = strlen(topic);
	const char *c;

	if (len == 0 || len > ES_MAX_TOPIC_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid topic name \"%s\"", topic),
				 errdetail("A Kafka topic name has 1 to %d characters.", ES_MAX_TOPIC_LEN)));
	for (c = topic; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			  (*c >= '0' && *c <= '9') || *c == '.' || *c == '_' || *c == '-'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid topic name \"%s\"", topic),
					 errdetail("A Kafka topic name has only ASCII letters, digits, \".\", \"_\" and \"-\".")));
}

/* Raise an error unless 'headers' is a JSON object of string values */
static void
EsCheckHeaders(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;

	if (!JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object of strings")));
	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY && v.val.string.len == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header names must not be empty")));
		if (tok == WJB_VALUE && v.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("header values must be strings"),
					 errdetail("Found %s.", JsonbToCString(NULL, &JsonbValueToJsonb(&v)->root, 0))));
	}
}

/*
 * Ask for the relay to be woken when this transaction ends (after its locks
 * are released), whether it commits or aborts; with 'revisit', to read
 * again rows it passed, which this transaction made ready
 */
void
EsWakeRelayAtCommit(bool revisit)
{
	es_wake_at_end = true;
	es_revisit_at_end = es_revisit_at_end || revisit;
}

/*
 * As EsWakeRelayAtCommit(false), for rows enqueued for 'sink': the relay
 * then reads only that sink's rows (and those of sinks with rows held back
 * by the horizon), not every sink's
 */
void
EsWakeRelayForSink(int sink)
{
	EsWakeRelayAtCommit(false);
	if (sink >= 0 && sink < 32)
		es_wake_sinks |= (uint32) 1 << sink;
}

/*
 * This transaction takes outbox ids (it holds the outbox horizon): wake the
 * relay at its end, and note its commit time for the relay's latencies
 */
void
EsOutboxEnqueuing(void)
{
	EsWakeRelayAtCommit(false);
	es_enqueued = true;
}

/*
 * The outbox sequence's last value, or 0 when it cannot be read: the
 * sequence this transaction took its ids from (EsHoldHorizon read it) was
 * dropped with the extension in this transaction.  Syscache lookups only,
 * and no name is resolved: a commit must not fail, nor slow down, for a
 * latency figure.
 */
static int64
EsOutboxBound(void)
{
	Oid			seq = EsLastSequenceRead(ES_SEQ_OUTBOX);
	HeapTuple	tup;
	Oid			owner;
	char		kind;

	if (!OidIsValid(seq))
		return 0;
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(seq));
	if (!HeapTupleIsValid(tup))
		return 0;
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	kind = ((Form_pg_class) GETSTRUCT(tup))->relkind;
	ReleaseSysCache(tup);
	if (kind != RELKIND_SEQUENCE ||
		pg_class_aclcheck(seq, owner, ACL_SELECT | ACL_USAGE) != ACLCHECK_OK)
		return 0;
	return EsSequenceLastValue(seq, owner);
}

/*
 * Ask for waiting polls (subscriptions) to be woken when this transaction
 * ends, after its locks are released, whether it commits or aborts
 */
void
EsWakePollersAtEnd(void)
{
	es_wake_pollers = true;
}

/*
 * Transaction callback.  A transaction that enqueued messages notes its
 * commit time for the relay, with the outbox ids it covers (read before the
 * commit, written once it is visible and before its locks go).  A prepared
 * transaction keeps its locks, so there is nothing to wake the relay or
 * polls for until COMMIT/ROLLBACK PREPARED.
 */
void
EsOutboxXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (es_enqueued)
				es_commit_bound = EsOutboxBound();
			break;
		case XACT_EVENT_COMMIT:
			if (es_enqueued && es_commit_bound > 0)
				EsNoteOutboxCommit(es_commit_bound);
			es_enqueued = false;
			if (es_wake_launcher)
				EsWakeLauncher();
			es_wake_launcher = false;
			break;
		case XACT_EVENT_PREPARE:
			es_wake_launcher = false;
			es_wake_at_end = false;
			es_revisit_at_end = false;
			es_wake_sinks = 0;
			es_wake_pollers = false;
			es_enqueued = false;
			break;
		case XACT_EVENT_ABORT:
			es_enqueued = false;
			es_wake_launcher = false;
			break;
		default:
			break;
	}
}

/*
 * Resource release callback: wake the relay once the top-level transaction
 * that asked for it has released its locks, so that the relay no longer sees
 * its horizon lock.  Nothing here may raise an error; SetLatch() does not.
 */
void
EsOutboxResourceRelease(ResourceReleasePhase phase, bool isCommit,
						bool isTopLevel, void *arg)
{
	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || !isTopLevel)
		return;
	if (es_check_extension)
	{
		es_check_extension = false;
		EsWakeRelayToCheckExtension();
	}
	if (es_wake_pollers)
	{
		es_wake_pollers = false;
		EsWakePollers();
	}
	if (es_wake_at_end)
	{
		es_wake_at_end = false;
		EsWakeRelay(es_revisit_at_end, es_wake_sinks);
		es_revisit_at_end = false;
		es_wake_sinks = 0;
	}
}

/*
 * ProcessUtility hook: COMMIT PREPARED and ROLLBACK PREPARED release the
 * prepared transaction's locks, so the relay is woken when the transaction
 * running them ends.  Any prepared transaction wakes it (one spare round
 * when it enqueued nothing): which one held the horizon is not known here.
 * A committed CREATE EXTENSION eventstore, CREATE or ALTER DATABASE wakes
 * the launcher, which starts a relay where the extension now is; a DROP
 * EXTENSION wakes this database's relay, which ends if it was ours.
 */
static void
EsProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				 ProcessUtilityContext context, ParamListInfo params,
				 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, TransactionStmt) &&
		(((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED ||
		 ((TransactionStmt *) parsetree)->kind == TRANS_STMT_ROLLBACK_PREPARED))
	{
		EsWakeRelayAtCommit(true);
		EsWakePollersAtEnd();
	}
	else if ((IsA(parsetree, CreateExtensionStmt) &&
			  strcmp(((CreateExtensionStmt *) parsetree)->extname, "eventstore") == 0) ||
			 IsA(parsetree, CreatedbStmt) || IsA(parsetree, AlterDatabaseStmt))
		es_wake_launcher = true;
	else if (IsA(parsetree, DropStmt) &&
			 ((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
		es_check_extension = true;
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/* Install the ProcessUtility hook, chaining the previous one */
void
EsInstallUtilityHook(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = EsProcessUtility;
}

/*
 * Whether a relay serves this database (eventstore.database is empty or
 * names it): true without a preloaded library (eventstore.database is then
 * not defined and there is no relay to ask)
 */
bool
EsDatabaseIsServed(void)
{
	static int	served = -1;	/* -1: not looked up yet */

	if (es_database == NULL)
		return true;
	if (served < 0)
	{
		char	   *here = get_database_name(MyDatabaseId);

		served = here == NULL || EsDatabaseNameIsServed(here);
	}
	return served;
}

/*
 * Warn, once per session, that messages enqueued here are not relayed: the
 * relays serve another database (eventstore.database), or every relay slot
 * is taken by other databases (eventstore.max_relays)
 */
void
EsWarnIfNotServed(void)
{
	static bool warned = false;

	if (warned)
		return;
	if (!EsDatabaseIsServed())
	{
		warned = true;
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("database \"%s\" is not served by the eventstore relay",
						get_database_name(MyDatabaseId)),
				 errdetail("The relay serves database \"%s\"; messages enqueued here stay in eventstore.outbox.",
						   es_database),
				 errhint("Set eventstore.database to this database, or empty it to serve every database (a server restart), to relay its outbox.")));
	}
	else if (EsRelaySlotsFull())
	{
		warned = true;
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("database \"%s\" is not served by the eventstore relay",
						get_database_name(MyDatabaseId)),
				 errdetail("Every relay slot is taken by another database (eventstore.max_relays = %d); messages enqueued here stay in eventstore.outbox.",
						   es_max_relays),
				 errhint("Raise eventstore.max_relays (a server restart) to relay this database's outbox.")));
	}
}

/*
 * Enqueue appended events for the topic routed from their category, if any
 * (SPI connected, running as the owner).  'positions' are the events'
 * positions in version order.
 */
void
EsRouteEvents(text *stream_id, const char *category, Datum *positions,
			  int npositions)
{
	static SPIPlanPtr enqueue_plan = NULL;
	static SPIPlanPtr enqueue_sink_plan = NULL;
	Oid			enqueue_types[4] = {TEXTOID, TEXTOID, INT8ARRAYOID, TEXTOID};
	Datum		values[4];
	const char *sink = NULL;
	const char *topic = EsRouteTopic(category, &sink);

	if (topic == NULL)
		return;
	values[0] = CStringGetTextDatum(topic);
	values[1] = PointerGetDatum(stream_id);
	values[2] = PointerGetDatum(construct_array(positions, npositions, INT8OID,
												sizeof(int64), FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	values[3] = CStringGetTextDatum(sink);
	EsHoldHorizon(ES_SEQ_OUTBOX);
	/* Kafka is the column's default (and the only sink before 0.5.0) */
	if (strcmp(sink, "kafka") == 0)
		EsSpiExec(EsPlan(&enqueue_plan,
						 "INSERT INTO eventstore.outbox (topic, message_key, event_position)"
						 " SELECT $1, $2, p.pos FROM pg_catalog.unnest($3) WITH ORDINALITY AS p(pos, o)"
						 " ORDER BY p.o",
						 3, enqueue_types),
				  values, NULL, false, SPI_OK_INSERT);
	else
		EsSpiExec(EsPlan(&enqueue_sink_plan,
						 "INSERT INTO eventstore.outbox (topic, message_key, event_position, sink)"
						 " SELECT $1, $2, p.pos, $4"
						 " FROM pg_catalog.unnest($3) WITH ORDINALITY AS p(pos, o)"
						 " ORDER BY p.o",
						 4, enqueue_types),
				  values, NULL, false, SPI_OK_INSERT);
	EsWakeRelayForSink(EsSinkByName(sink));
}

PG_FUNCTION_INFO_V1(eventstore_publish);

/*
 * SQL: eventstore.publish(topic text, key text, payload jsonb, headers
 * jsonb, sink text).  Called through the four-argument signature of a
 * schema older than 0.5.0, it publishes to Kafka.
 */
Datum
eventstore_publish(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr sink_plan = NULL;
	Oid			argtypes[5] = {TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	EsSinkId	sink = EsSinkArgument(fcinfo, 4);
	EsSavedUser saved;
	bool		isnull;
	int64		id;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be null")));
	EsCheckTopic(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	if (!PG_ARGISNULL(1))
		EsCheckKeyLength("key", VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(1)));
	if (!PG_ARGISNULL(3))
		EsCheckHeaders(PG_GETARG_JSONB_P(3));
	EsWarnIfNotServed();

	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	values[3] = PG_ARGISNULL(3) ?
		DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")) : PG_GETARG_DATUM(3);
	values[4] = CStringGetTextDatum(EsSinkName(sink));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsHoldHorizon(ES_SEQ_OUTBOX);
	/* Kafka is the column's default (and the only sink before 0.5.0) */
	if (sink == ES_SINK_KAFKA)
		EsSpiExec(EsPlan(&plan,
						 "INSERT INTO eventstore.outbox (topic, message_key, payload, headers)"
						 " VALUES ($1, $2, $3, $4) RETURNING id",
						 4, argtypes),
				  values, nulls, false, SPI_OK_INSERT_RETURNING);
	else
		EsSpiExec(EsPlan(&sink_plan,
						 "INSERT INTO eventstore.outbox (topic, message_key, payload, headers, sink)"
						 " VALUES ($1, $2, $3, $4, $5) RETURNING id",
						 5, argtypes),
				  values, nulls, false, SPI_OK_INSERT_RETURNING);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	EsRestoreUser(&saved);
	SPI_finish();
	EsWakeRelayForSink(sink);
	PG_RETURN_INT64(id);
}

PG_FUNCTION_INFO_V1(eventstore_replay);

/*
 * SQL: eventstore.replay(topic text, category text, from_position bigint,
 *		to_position bigint, sink text) -> bigint.
 *
 * Enqueues the stored events with from_position < position <= to_position
 * (of one category, or all) for 'topic', in global order, with one
 * INSERT ... SELECT that streams rows, so millions of events need no more
 * memory than a few.  Without to_position it stops below read_all's horizon,
 * so it never skips an event that is still being committed.
 */
Datum
eventstore_replay(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr sink_plan = NULL;
	Oid			argtypes[5] = {TEXTOID, TEXTOID, INT8OID, INT8OID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	EsSinkId	sink = EsSinkArgument(fcinfo, 4);
	EsSavedUser saved;
	int64		from_position;
	uint64		n;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be null")));
	EsCheckTopic(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	if (!PG_ARGISNULL(1))
		EsCheckCategory(text_to_cstring(PG_GETARG_TEXT_PP(1)), false);
	from_position = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2);
	if (from_position < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_position must not be negative: " INT64_FORMAT, from_position)));
	if (!PG_ARGISNULL(3) && PG_GETARG_INT64(3) < from_position)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("to_position " INT64_FORMAT " is before from_position " INT64_FORMAT,
						PG_GETARG_INT64(3), from_position)));
	if (PG_ARGISNULL(3) && IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("replay without to_position requires the READ COMMITTED isolation level"),
				 errhint("Pass to_position, or call replay outside a REPEATABLE READ or SERIALIZABLE transaction.")));

	EsWarnIfNotServed();
	values[0] = PG_GETARG_DATUM(0);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	values[2] = Int64GetDatum(from_position);
	values[4] = CStringGetTextDatum(EsSinkName(sink));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	values[3] = Int64GetDatum(PG_ARGISNULL(3) ? EsHorizon(ES_SEQ_EVENTS) - 1 :
							  PG_GETARG_INT64(3));
	EsHoldHorizon(ES_SEQ_OUTBOX);
	if (sink == ES_SINK_KAFKA)
		EsSpiExec(EsPlan(&plan,
						 "INSERT INTO eventstore.outbox (topic, message_key, event_position)"
						 " SELECT $1, stream_id, global_position FROM eventstore.events"
						 " WHERE global_position OPERATOR(pg_catalog.>) $3"
						 " AND global_position OPERATOR(pg_catalog.<=) $4"
						 " AND ($2 IS NULL OR category OPERATOR(pg_catalog.=) $2)"
						 " ORDER BY global_position",
						 4, argtypes),
				  values, nulls, false, SPI_OK_INSERT);
	else
		EsSpiExec(EsPlan(&sink_plan,
						 "INSERT INTO eventstore.outbox (topic, message_key, event_position, sink)"
						 " SELECT $1, stream_id, global_position, $5 FROM eventstore.events"
						 " WHERE global_position OPERATOR(pg_catalog.>) $3"
						 " AND global_position OPERATOR(pg_catalog.<=) $4"
						 " AND ($2 IS NULL OR category OPERATOR(pg_catalog.=) $2)"
						 " ORDER BY global_position",
						 5, argtypes),
				  values, nulls, false, SPI_OK_INSERT);
	n = SPI_processed;
	EsRestoreUser(&saved);
	SPI_finish();
	if (n > 0)
		EsWakeRelayForSink(sink);
	PG_RETURN_INT64((int64) n);
}
