/*
 * subscription.c
 *		Subscriptions' definitions and leases: create_subscription(),
 *		drop_subscription(), stream_partition(), the dead letters' requeue and
 *		discard, and what poll.c shares with them.
 *
 * A subscription selects events by category, event type and a jsonpath
 * filter, and splits them into partitions by stream (stream_partition()), so
 * that a stream's events are consumed in order while partitions are consumed
 * in parallel.  Each partition has a checkpoint in
 * eventstore.subscription_partitions.
 *
 * The lease: a transaction consumes a partition while it holds an exclusive
 * advisory lock on (subscription id, partition) in key space 17747, taken in
 * the top transaction's resource owner, so it is held until the transaction
 * ends whatever savepoints do, and is freed when its backend dies.  pg_locks
 * shows who holds it (the view eventstore.subscription_lag).  Only lease
 * holders write a partition's row.  A transaction's first lease of a
 * subscription also takes a share lock on (subscription id, ES_WHOLE), which
 * drop_subscription takes exclusively: a drop waits for the consumers, and
 * nothing they write outlives it.
 *
 * Everything runs as the caller, and reads and writes the tables as the
 * schema's owner (EsBecomeOwner): a consumer needs EXECUTE on poll, ack and
 * nack and no privilege on the tables.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonpath.h"
#include "utils/lsyscache.h"

#include "compat.h"
#include "eventstore.h"

/* The locktag_field4 of leases (horizons use 17745 and 17746) */
#define ES_LEASE_LOCKSPACE 17747

/* The "partition" of the lock on a whole subscription (see the header) */
#define ES_WHOLE PG_UINT32_MAX

/* The deepest .** a filter may descend (an unbounded one could exhaust the stack) */
#define ES_MAX_FILTER_DEPTH 64

/*
 * Raise 42704 for a subscription that does not exist ('detail': why, or
 * NULL)
 */
void
EsNoSubscription(const char *name, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("subscription \"%s\" does not exist", name),
			 detail ? errdetail_internal("%s", detail) : 0));
}

/* The name argument of a function that takes a subscription */
static text *
EsCheckSubscriptionName(FunctionCallInfo fcinfo, int argno, const char *what)
{
	text	   *name;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	name = PG_GETARG_TEXT_PP(argno);
	EsCheckKeyLength(what, VARSIZE_ANY_EXHDR(name));
	return name;
}

/*
 * The subscription called 'name' (SPI connected, as the owner); 42704 when
 * there is none.  Its values live in the SPI procedure's memory.
 */
EsSubscription *
EsLoadSubscription(text *name)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	EsSubscription *sub;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	values[0] = PointerGetDatum(name);
	EsSpiExec(EsPlan(&plan,
					 "SELECT id, category, event_types, filter, partitions,"
					 " on_failure OPERATOR(pg_catalog.=) 'park'"
					 " FROM eventstore.subscriptions WHERE name OPERATOR(pg_catalog.=) $1",
					 1, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	if (SPI_processed == 0)
		EsNoSubscription(text_to_cstring(name), NULL);
	tuple = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	sub = palloc0(sizeof(EsSubscription));
	sub->name = text_to_cstring(name);
	sub->id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
	d = SPI_getbinval(tuple, desc, 2, &isnull);
	sub->category = isnull ? NULL : DatumGetTextPP(d);
	d = SPI_getbinval(tuple, desc, 3, &isnull);
	sub->event_types = isnull ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM(d));
	d = SPI_getbinval(tuple, desc, 4, &isnull);
	sub->filter = isnull ? (Datum) 0 : PointerGetDatum(PG_DETOAST_DATUM(d));
	sub->partitions = DatumGetInt32(SPI_getbinval(tuple, desc, 5, &isnull));
	sub->park = DatumGetBool(SPI_getbinval(tuple, desc, 6, &isnull));
	return sub;
}

/* The local transaction that took a lease, to refuse its PREPARE */
static LocalTransactionId es_lease_lxid = InvalidLocalTransactionId;

/* Raise 42704 when the subscription was dropped (SPI connected, as the owner) */
static void
EsCheckStillThere(const EsSubscription *sub)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		values[2];

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(sub->id);
	EsSpiExec(EsPlan(&plan,
					 "SELECT FROM eventstore.subscriptions"
					 " WHERE name OPERATOR(pg_catalog.=) $1 AND id OPERATOR(pg_catalog.=) $2",
					 2, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	if (SPI_processed == 0)
		EsNoSubscription(sub->name, "It was dropped while this transaction waited for it.");
}

/*
 * Transaction callback: a prepared transaction would keep its leases with
 * no backend behind them, until COMMIT or ROLLBACK PREPARED; refuse it.
 */
void
EsSubscriptionXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_PREPARE && es_lease_lxid == EsMyLocalXid())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot prepare a transaction that holds a subscription's lease"),
				 errdetail("Its partitions would stay leased, with no consumer, until COMMIT PREPARED or ROLLBACK PREPARED.")));
}

/* Raise 22023 unless 'partition' is one of the subscription's */
void
EsCheckPartition(const EsSubscription *sub, int32 partition)
{
	if (partition < 0 || partition >= sub->partitions)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("subscription \"%s\" has no partition %d", sub->name, partition),
				 errdetail("Its partitions are 0 to %d.", sub->partitions - 1)));
}

/* The lock tag of a partition's lease, or of the whole subscription (ES_WHOLE) */
static void
EsLeaseTag(LOCKTAG *tag, const EsSubscription *sub, uint32 partition)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) sub->id, partition,
						 ES_LEASE_LOCKSPACE);
}

/*
 * Take a lock for the rest of the transaction (in the top transaction's
 * resource owner, whatever savepoints do)
 */
static LockAcquireResult
EsLockForTransaction(const LOCKTAG *tag, LOCKMODE mode, bool dontWait)
{
	ResourceOwner saved_owner = CurrentResourceOwner;
	LockAcquireResult res;

	CurrentResourceOwner = TopTransactionResourceOwner;
	PG_TRY();
	{
		res = LockAcquire(tag, mode, false, dontWait);
	}
	PG_FINALLY();
	{
		CurrentResourceOwner = saved_owner;
	}
	PG_END_TRY();
	return res;
}

/*
 * Take the lease of a partition for the rest of the transaction: waiting for
 * it like a row lock ('wait'), or false at once when another transaction
 * holds it.  *newly tells whether this call took it.
 */
bool
EsTakeLease(const EsSubscription *sub, int32 partition, bool wait, bool *newly)
{
	LOCKTAG		tag;
	LockAcquireResult res;

	/*
	 * First the share lock that keeps a drop out (see the file header).  A
	 * drop may have committed while we waited for it, and a subscription of
	 * the same name been created since: this one must still be there.
	 */
	EsLeaseTag(&tag, sub, ES_WHOLE);
	if (EsLockForTransaction(&tag, ShareLock, false) == LOCKACQUIRE_OK)
		EsCheckStillThere(sub);
	es_lease_lxid = EsMyLocalXid();

	EsLeaseTag(&tag, sub, (uint32) partition);
	res = EsLockForTransaction(&tag, ExclusiveLock, !wait);
	*newly = res == LOCKACQUIRE_OK;
	/* Polls waiting for a partition this holds look again when it ends */
	if (*newly)
		EsWakePollersAtEnd();
	return res != LOCKACQUIRE_NOT_AVAIL;
}

/* Give back a lease this transaction took and did not use */
void
EsReleaseLease(const EsSubscription *sub, int32 partition)
{
	LOCKTAG		tag;
	ResourceOwner saved_owner = CurrentResourceOwner;

	EsLeaseTag(&tag, sub, partition);
	CurrentResourceOwner = TopTransactionResourceOwner;
	(void) LockRelease(&tag, ExclusiveLock, false);
	CurrentResourceOwner = saved_owner;
}

/*
 * Run the query for the subscription's events of a partition after position
 * 'after' and before 'before', oldest first, at most 'limit' (SPI
 * connected, as the owner), into 'dest' (NULL: SPI_tuptable).  Rows have
 * the columns of eventstore.events; with a filter, a 10th is its verdict:
 * true, or NULL when it failed on the event (false ones are left out).
 * Kept statements: one per combination of the selections the subscription
 * uses.
 */
void
EsPrepareEvents(const EsSubscription *sub, int32 partition, int64 after,
				int64 before, int64 limit, DestReceiver *dest)
{
	static SPIPlanPtr plans[16];
	Oid			argtypes[8] = {INT8OID, INT8OID, TEXTOID, TEXTARRAYOID, INT4OID,
	INT4OID, JSONPATHOID, INT8OID};
	Datum		values[8];
	bool		nulls[8] = {false};
	int			shape = (sub->category ? 1 : 0) | (sub->event_types ? 2 : 0) |
		(sub->filter ? 4 : 0) | (sub->partitions > 1 ? 8 : 0);
	SPIExecuteOptions options = {0};
	int			i;
	int			rc;

	if (plans[shape] == NULL)
	{
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT e.*");
		if (sub->filter)
			appendStringInfoString(&sql,
								   ", pg_catalog.jsonb_path_match(pg_catalog.to_jsonb(e.*), $7,"
								   " '{}'::pg_catalog.jsonb, true)");
		appendStringInfoString(&sql, " FROM eventstore.events e WHERE ");
		appendStringInfoString(&sql, sub->category ? ES_CATEGORY_RANGE("$3", "$1", "$2") :
							   "e.global_position OPERATOR(pg_catalog.>) $1"
							   " AND e.global_position OPERATOR(pg_catalog.<) $2");
		if (sub->event_types)
			appendStringInfoString(&sql, " AND e.event_type OPERATOR(pg_catalog.=) ANY ($4)");
		if (sub->partitions > 1)
			appendStringInfoString(&sql,
								   " AND eventstore.in_partition(e.stream_id, $5, $6)");
		if (sub->filter)
			appendStringInfoString(&sql,
								   " AND pg_catalog.jsonb_path_match(pg_catalog.to_jsonb(e.*), $7,"
								   " '{}'::pg_catalog.jsonb, true) IS NOT FALSE");
		appendStringInfoString(&sql, sub->category ?
							   " ORDER BY e.category, e.global_position LIMIT $8" :
							   " ORDER BY e.global_position LIMIT $8");
		/*
		 * Planned for each call's positions: a generic plan does not know
		 * how far apart they are, and walks the primary key through the
		 * whole table where the category's index reads only its events
		 */
		EsPlanWithOptions(&plans[shape], sql.data, 8, argtypes, CURSOR_OPT_CUSTOM_PLAN);
	}
	values[0] = Int64GetDatum(after);
	values[1] = Int64GetDatum(before);
	values[2] = PointerGetDatum(sub->category);
	nulls[2] = sub->category == NULL;
	values[3] = sub->event_types;
	nulls[3] = sub->event_types == (Datum) 0;
	values[4] = Int32GetDatum(sub->partitions);
	values[5] = Int32GetDatum(partition);
	values[6] = sub->filter;
	nulls[6] = sub->filter == (Datum) 0;
	values[7] = Int64GetDatum(limit);

	options.params = makeParamList(8);
	for (i = 0; i < 8; i++)
	{
		options.params->params[i].value = values[i];
		options.params->params[i].isnull = nulls[i];
		options.params->params[i].pflags = PARAM_FLAG_CONST;
		options.params->params[i].ptype = argtypes[i];
	}
	options.read_only = false;
	options.dest = dest;
	rc = SPI_execute_plan_extended(plans[shape], &options);
	/* SPI says SPI_OK_UTILITY for a SELECT into a receiver of our own */
	if (rc != (dest ? SPI_OK_UTILITY : SPI_OK_SELECT))
		elog(ERROR, "SPI_execute_plan_extended returned %s", SPI_result_code_string(rc));
}

/* The partition of a stream among 'partitions' */
int32
EsStreamPartition(text *stream_id, int32 partitions)
{
	return (int32) (hash_bytes((const unsigned char *) VARDATA_ANY(stream_id),
							   VARSIZE_ANY_EXHDR(stream_id)) % (uint32) partitions);
}

/* Raise 22023 unless 1 <= partitions <= ES_MAX_PARTITIONS */
static void
EsCheckPartitions(int32 partitions)
{
	if (partitions < 1 || partitions > ES_MAX_PARTITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions must be between 1 and %d: %d",
						ES_MAX_PARTITIONS, partitions)));
}

PG_FUNCTION_INFO_V1(eventstore_stream_partition);

/* SQL: eventstore.stream_partition(stream_id text, partitions integer) -> integer */
Datum
eventstore_stream_partition(PG_FUNCTION_ARGS)
{
	int32		partitions = PG_GETARG_INT32(1);

	EsCheckPartitions(partitions);
	PG_RETURN_INT32(EsStreamPartition(PG_GETARG_TEXT_PP(0), partitions));
}

PG_FUNCTION_INFO_V1(eventstore_in_partition);

/*
 * SQL: eventstore.in_partition(stream_id text, partitions integer, partition
 * integer) -> boolean
 */
Datum
eventstore_in_partition(PG_FUNCTION_ARGS)
{
	int32		partitions = PG_GETARG_INT32(1);

	EsCheckPartitions(partitions);
	PG_RETURN_BOOL(EsStreamPartition(PG_GETARG_TEXT_PP(0), partitions) ==
				   PG_GETARG_INT32(2));
}

/*
 * Raise 22023 unless every item of the jsonpath is one poll can evaluate on
 * any event without raising an error: no $variables (poll passes none) and
 * no .datetime() (whose comparisons can need a time zone)
 */
static void
EsCheckFilterItems(JsonPathItem *v)
{
	JsonPathItem arg;

	check_stack_depth();
	for (;;)
	{
		switch (v->type)
		{
			case jpiVariable:
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("filter must not use jsonpath variables"),
						 errhint("Write the value into the filter.")));
				break;
			case jpiDatetime:
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("filter must not use .datetime()"),
						 errhint("Compare the ISO 8601 strings instead.")));
				break;
			case jpiAnd:
			case jpiOr:
			case jpiEqual:
			case jpiNotEqual:
			case jpiLess:
			case jpiGreater:
			case jpiLessOrEqual:
			case jpiGreaterOrEqual:
			case jpiAdd:
			case jpiSub:
			case jpiMul:
			case jpiDiv:
			case jpiMod:
			case jpiStartsWith:
				jspGetLeftArg(v, &arg);
				EsCheckFilterItems(&arg);
				jspGetRightArg(v, &arg);
				EsCheckFilterItems(&arg);
				break;
			case jpiNot:
			case jpiIsUnknown:
			case jpiExists:
			case jpiPlus:
			case jpiMinus:
			case jpiFilter:
				jspGetArg(v, &arg);
				EsCheckFilterItems(&arg);
				break;
			case jpiAny:
				if (v->content.anybounds.last > ES_MAX_FILTER_DEPTH)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("filter must bound .** to at most %d levels",
									ES_MAX_FILTER_DEPTH),
							 errdetail("An unbounded .** can exhaust the stack on a deeply nested event."),
							 errhint("Write .**{1 to %d} or a smaller bound.", ES_MAX_FILTER_DEPTH)));
				break;
			case jpiLikeRegex:
				jspInitByBuffer(&arg, v->base, v->content.like_regex.expr);
				EsCheckFilterItems(&arg);
				break;
			case jpiIndexArray:
				{
					int			i;

					for (i = 0; i < v->content.array.nelems; i++)
					{
						JsonPathItem from;
						JsonPathItem to;

						if (jspGetArraySubscript(v, &from, &to, i))
							EsCheckFilterItems(&to);
						EsCheckFilterItems(&from);
					}
				}
				break;
			default:
				break;
		}
		if (!jspGetNext(v, &arg))
			return;
		*v = arg;
	}
}

/* Raise 22023 unless the filter is a predicate poll can evaluate */
static void
EsCheckFilter(JsonPath *filter)
{
	JsonPathItem v;

	jspInit(&v, filter);
	switch (v.type)
	{
		case jpiAnd:
		case jpiOr:
		case jpiNot:
		case jpiIsUnknown:
		case jpiEqual:
		case jpiNotEqual:
		case jpiLess:
		case jpiGreater:
		case jpiLessOrEqual:
		case jpiGreaterOrEqual:
		case jpiExists:
		case jpiStartsWith:
		case jpiLikeRegex:
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("filter must be a jsonpath predicate"),
					 errdetail("A filter is a boolean expression on the event, such as '$.data.total >= 1000'.")));
	}
	EsCheckFilterItems(&v);
}

/* Raise 22023 unless event_types is a one-dimensional array of non-empty strings */
static void
EsCheckEventTypes(ArrayType *types)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (ARR_NDIM(types) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_types must be a one-dimensional, non-empty array"),
				 errhint("Pass NULL for every event type.")));
	deconstruct_array(types, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (nulls[i] || VARSIZE_ANY_EXHDR(DatumGetPointer(elems[i])) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event_types must not contain null or empty strings")));
}

/* An argument that must not be NULL */
static void
EsCheckNotNull(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

PG_FUNCTION_INFO_V1(eventstore_create_subscription);

/*
 * SQL: eventstore.create_subscription(name text, category text, event_types
 * text[], filter jsonpath, start_position bigint, partitions integer,
 * on_failure text) -> void
 */
Datum
eventstore_create_subscription(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[7] = {TEXTOID, TEXTOID, TEXTARRAYOID, JSONPATHOID, INT8OID,
	INT4OID, TEXTOID};
	Datum		values[7];
	char		nulls[7] = "       ";
	text	   *name = EsCheckSubscriptionName(fcinfo, 0, "name");
	int64		start;
	int64		head;
	char	   *on_failure;
	EsSavedUser saved;

	if (VARSIZE_ANY_EXHDR(name) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("name must not be empty")));
	if (!PG_ARGISNULL(1))
		EsCheckCategory(text_to_cstring(PG_GETARG_TEXT_PP(1)), false);
	if (!PG_ARGISNULL(2))
		EsCheckEventTypes(PG_GETARG_ARRAYTYPE_P(2));
	if (!PG_ARGISNULL(3))
		EsCheckFilter(PG_GETARG_JSONPATH_P(3));
	EsCheckNotNull(fcinfo, 5, "partitions");
	EsCheckPartitions(PG_GETARG_INT32(5));
	EsCheckNotNull(fcinfo, 6, "on_failure");
	on_failure = text_to_cstring(PG_GETARG_TEXT_PP(6));
	if (strcmp(on_failure, "skip") != 0 && strcmp(on_failure, "park") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("on_failure must be \"skip\" or \"park\": \"%s\"", on_failure)));

	/*
	 * NULL: below the horizon, where every event that will ever commit is
	 * visible now, so that no later commit is skipped
	 */
	if (PG_ARGISNULL(4))
		start = EsHorizon(ES_SEQ_EVENTS) - 1;
	else
	{
		/* At most the head, the last position taken */
		head = EsLastValue(ES_SEQ_EVENTS);
		start = PG_GETARG_INT64(4);
		if (start < 0 || start > head)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("start_position must be between 0 and the head (%lld): %lld",
							(long long) head, (long long) start)));
	}

	values[0] = PointerGetDatum(name);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	values[4] = Int64GetDatum(start);
	values[5] = PG_GETARG_DATUM(5);
	values[6] = PG_GETARG_DATUM(6);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsSpiExec(EsPlan(&plan,
					 "WITH s AS (INSERT INTO eventstore.subscriptions (name, category,"
					 " event_types, filter, start_position, partitions, on_failure)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING"
					 " RETURNING name, partitions, start_position),"
					 " p AS (INSERT INTO eventstore.subscription_partitions"
					 " (subscription, partition, checkpoint)"
					 " SELECT s.name, g.g, s.start_position FROM s,"
					 " pg_catalog.generate_series(0, s.partitions OPERATOR(pg_catalog.-) 1) g(g))"
					 " SELECT pg_catalog.count(*) FROM s",
					 7, argtypes),
			  values, nulls, false, SPI_OK_SELECT);
	{
		bool		isnull;

		if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										1, &isnull)) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("subscription \"%s\" already exists", text_to_cstring(name))));
	}
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(eventstore_drop_subscription);

/*
 * SQL: eventstore.drop_subscription(name text) -> void.  Its partitions'
 * checkpoints and its dead letters go with it.
 */
Datum
eventstore_drop_subscription(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	text	   *name = EsCheckSubscriptionName(fcinfo, 0, "name");
	EsSavedUser saved;
	bool		isnull;

	values[0] = PointerGetDatum(name);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);

	/* Wait for the transactions that consume it, and keep new ones out */
	{
		EsSubscription *sub = EsLoadSubscription(name);
		LOCKTAG		tag;

		EsLeaseTag(&tag, sub, ES_WHOLE);
		(void) EsLockForTransaction(&tag, ExclusiveLock, false);
	}
	EsSpiExec(EsPlan(&plan,
					 "WITH s AS (DELETE FROM eventstore.subscriptions"
					 " WHERE name OPERATOR(pg_catalog.=) $1 RETURNING name),"
					 " p AS (DELETE FROM eventstore.subscription_partitions"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1),"
					 " d AS (DELETE FROM eventstore.subscription_dead_letters"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1)"
					 " SELECT pg_catalog.count(*) FROM s",
					 1, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									1, &isnull)) == 0)
		EsNoSubscription(text_to_cstring(name), NULL);
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Take the leases of the partitions that hold the chosen dead letters, in
 * partition order (so that two operators never deadlock), waiting for the
 * consumers that hold them.  'ids' NULL: every dead letter not requeued.
 */
static void
EsLeaseDeadLetterPartitions(const EsSubscription *sub, Datum ids, bool ids_null)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {TEXTOID, INT8ARRAYOID};
	Datum		values[2];
	char		nulls[2] = "  ";
	int32	   *parts;
	uint64		n;
	uint64		i;
	bool		isnull;
	bool		newly;

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = ids;
	nulls[1] = ids_null ? 'n' : ' ';
	EsSpiExec(EsPlan(&plan,
					 "SELECT DISTINCT partition FROM eventstore.subscription_dead_letters"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1"
					 " AND ($2 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($2))"
					 " ORDER BY partition",
					 2, argtypes),
			  values, nulls, false, SPI_OK_SELECT);
	n = SPI_processed;
	parts = palloc(sizeof(int32) * (n + 1));
	for (i = 0; i < n; i++)
		parts[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											   SPI_tuptable->tupdesc, 1, &isnull));
	for (i = 0; i < n; i++)
		(void) EsTakeLease(sub, parts[i], true, &newly);
}

PG_FUNCTION_INFO_V1(eventstore_requeue_subscription_dead_letters);

/*
 * SQL: eventstore.requeue_subscription_dead_letters(subscription text, ids
 * bigint[] DEFAULT NULL) -> bigint, how many.  A requeued dead letter is
 * offered again, without the filter: one after its partition's checkpoint
 * when the partition's events reach it (a partition parked at it resumes),
 * one at or before the checkpoint by the next poll, before the partition's
 * next events.  It leaves the table when it is acknowledged.
 */
Datum
eventstore_requeue_subscription_dead_letters(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {TEXTOID, INT8ARRAYOID};
	Datum		values[2];
	char		nulls[2] = "  ";
	text	   *name = EsCheckSubscriptionName(fcinfo, 0, "subscription");
	EsSubscription *sub;
	EsSavedUser saved;
	uint64		n;

	values[0] = PointerGetDatum(name);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	sub = EsLoadSubscription(name);
	EsLeaseDeadLetterPartitions(sub, values[1], PG_ARGISNULL(1));
	EsSpiExec(EsPlan(&plan,
					 "UPDATE eventstore.subscription_dead_letters"
					 " SET requeued_at = pg_catalog.now(), delivered_at = NULL"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1 AND requeued_at IS NULL"
					 " AND ($2 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($2))",
					 2, argtypes),
			  values, nulls, false, SPI_OK_UPDATE);
	n = SPI_processed;
	EsRestoreUser(&saved);
	SPI_finish();
	/* Requeued events are there to poll: wake waiting polls at commit */
	EsWakePollersAtEnd();
	PG_RETURN_INT64((int64) n);
}

PG_FUNCTION_INFO_V1(eventstore_discard_subscription_dead_letters);

/*
 * SQL: eventstore.discard_subscription_dead_letters(subscription text, ids
 * bigint[]) -> bigint, how many.  A partition parked at a discarded dead
 * letter moves past it, unless it has events before it that are not
 * acknowledged yet (55000: acknowledge them first).
 */
Datum
eventstore_discard_subscription_dead_letters(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr select_plan = NULL;
	static SPIPlanPtr move_plan = NULL;
	static SPIPlanPtr delete_plan = NULL;
	Oid			argtypes[2] = {TEXTOID, INT8ARRAYOID};
	Oid			move_types[3] = {TEXTOID, INT4OID, INT8OID};
	Datum		values[3];
	text	   *name = EsCheckSubscriptionName(fcinfo, 0, "subscription");
	EsSubscription *sub;
	EsSavedUser saved;
	SPITupleTable *parked;
	uint64		nparked;
	uint64		i;
	uint64		n;

	EsCheckNotNull(fcinfo, 1, "ids");
	values[0] = PointerGetDatum(name);
	values[1] = PG_GETARG_DATUM(1);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	sub = EsLoadSubscription(name);
	EsLeaseDeadLetterPartitions(sub, values[1], false);

	/* The chosen dead letters that hold their partition, in order */
	EsSpiExec(EsPlan(&select_plan,
					 "SELECT d.partition, d.event_position, p.checkpoint"
					 " FROM eventstore.subscription_dead_letters d"
					 " JOIN eventstore.subscription_partitions p"
					 " ON p.subscription OPERATOR(pg_catalog.=) d.subscription"
					 " AND p.partition OPERATOR(pg_catalog.=) d.partition"
					 " WHERE d.subscription OPERATOR(pg_catalog.=) $1"
					 " AND d.id OPERATOR(pg_catalog.=) ANY ($2)"
					 " AND d.event_position OPERATOR(pg_catalog.>) p.checkpoint"
					 " ORDER BY d.partition, d.event_position",
					 2, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	parked = SPI_tuptable;
	nparked = SPI_processed;
	for (i = 0; i < nparked; i++)
	{
		bool		isnull;
		int32		partition = DatumGetInt32(SPI_getbinval(parked->vals[i], parked->tupdesc, 1, &isnull));
		int64		position = DatumGetInt64(SPI_getbinval(parked->vals[i], parked->tupdesc, 2, &isnull));
		int64		checkpoint = DatumGetInt64(SPI_getbinval(parked->vals[i], parked->tupdesc, 3, &isnull));

		/* An earlier dead letter of this partition moved it already */
		if (i > 0 && partition == DatumGetInt32(SPI_getbinval(parked->vals[i - 1], parked->tupdesc, 1, &isnull)))
			checkpoint = DatumGetInt64(SPI_getbinval(parked->vals[i - 1], parked->tupdesc, 2, &isnull));
		EsPrepareEvents(sub, partition, checkpoint, position, 1, NULL);
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition %d of subscription \"%s\" has events before dead letter at position %lld that are not acknowledged",
							partition, sub->name, (long long) position),
					 errhint("Acknowledge the events before it first (eventstore.ack).")));
		values[1] = Int32GetDatum(partition);
		values[2] = Int64GetDatum(position);
		EsSpiExec(EsPlan(&move_plan,
						 "UPDATE eventstore.subscription_partitions SET checkpoint = $3,"
						 " failed_position = NULL, attempts = 0, next_attempt_at = NULL,"
						 " first_failed_at = NULL, last_error = NULL"
						 " WHERE subscription OPERATOR(pg_catalog.=) $1"
						 " AND partition OPERATOR(pg_catalog.=) $2",
						 3, move_types),
				  values, NULL, false, SPI_OK_UPDATE);
	}

	values[1] = PG_GETARG_DATUM(1);
	EsSpiExec(EsPlan(&delete_plan,
					 "DELETE FROM eventstore.subscription_dead_letters"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1"
					 " AND id OPERATOR(pg_catalog.=) ANY ($2)",
					 2, argtypes),
			  values, NULL, false, SPI_OK_DELETE);
	n = SPI_processed;
	EsRestoreUser(&saved);
	SPI_finish();
	EsWakePollersAtEnd();
	PG_RETURN_INT64((int64) n);
}
