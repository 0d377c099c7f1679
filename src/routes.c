/*
 * routes.c
 *		Routes: eventstore.add_route() and remove_route(), and the per-backend
 *		cache of eventstore.routes that append() consults for every call.
 *
 * Looking the route up with a query cost an executor start and end per
 * append (a tenth of a one-event append's CPU, with no route at all), so
 * each backend keeps the table's rows in memory instead.  A statement
 * trigger on eventstore.routes (eventstore.routes_changed) queues a relcache
 * invalidation of the table for every INSERT, UPDATE, DELETE or TRUNCATE,
 * whoever runs it; PostgreSQL delivers it like any catalog change: to this
 * backend at its next command, to others when the change commits, and back
 * to this backend when the change rolls back.
 *
 * The cache is filled from the latest snapshot, not the statement's or the
 * transaction's: a REPEATABLE READ transaction that took its snapshot before
 * a route change committed would otherwise fill the cache with the old
 * routes after the change's invalidation already arrived, and keep them
 * until the routes changed again.  The latest snapshot sees every route
 * change committed by now and this transaction's own; a change that
 * commits later sends an invalidation that reaches this backend at its next
 * lock acquisition, which makes the next append load the routes again.  So
 * an append routes by the routes committed when it looked them up, whatever
 * its isolation level, as a catalog lookup would.
 *
 * A route names its sink (kafka, rabbitmq, nats).  Between the install of a
 * new library and ALTER EXTENSION eventstore UPDATE, the table may still
 * lack that column (before 0.5.0): every route then goes to Kafka, and the
 * route functions called through the old SQL signatures write no sink.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "eventstore.h"
#include "sink.h"

/* One row of eventstore.routes */
typedef struct EsRoute
{
	char	   *category;
	char	   *topic;
	const char *sink;			/* one of es_sinks' names */
} EsRoute;

/* The cached rows, in es_routes_cxt; valid until an invalidation arrives */
static EsRoute *es_routes = NULL;
static int	es_nroutes = 0;
static bool es_routes_valid = false;
static Oid	es_routes_relid = InvalidOid;
static MemoryContext es_routes_cxt = NULL;

/* Invalidations of eventstore.routes seen so far */
static uint64 es_routes_invalidations = 0;

/* Relcache callback: forget the cache when eventstore.routes changed */
static void
EsRoutesInvalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == es_routes_relid)
	{
		es_routes_valid = false;
		es_routes_invalidations++;
	}
}

/*
 * Read eventstore.routes into the cache (SPI connected) with the latest
 * snapshot (see the file header).  The cache only becomes valid if the load
 * completed and no invalidation arrived while the query ran; an error
 * leaves it invalid, so the next call reads it anew.
 */
static void
EsRoutesLoad(void)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr plan_without_sink = NULL;
	uint64		seen;
	bool		has_sink;
	uint64		i;
	int			rc;

	if (es_routes_cxt == NULL)
	{
		es_routes_cxt = AllocSetContextCreate(CacheMemoryContext, "eventstore routes",
											  ALLOCSET_SMALL_SIZES);
		CacheRegisterRelcacheCallback(EsRoutesInvalidate, (Datum) 0);
	}
	es_routes_valid = false;
	es_routes_relid = get_relname_relid("routes", EsSchemaOid());

	/* Take in the invalidations sent so far before the snapshot is taken */
	AcceptInvalidationMessages();
	seen = es_routes_invalidations;
	/* After them: an update that added the column invalidated the table */
	has_sink = get_attnum(es_routes_relid, "sink") != InvalidAttrNumber;
	rc = SPI_execute_snapshot(has_sink ?
							  EsPlan(&plan, "SELECT category, topic, sink FROM eventstore.routes",
									 0, NULL) :
							  EsPlan(&plan_without_sink,
									 "SELECT category, topic, 'kafka' FROM eventstore.routes",
									 0, NULL),
							  NULL, NULL, GetLatestSnapshot(), InvalidSnapshot,
							  true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_snapshot returned %s", SPI_result_code_string(rc));
	MemoryContextReset(es_routes_cxt);
	es_routes = MemoryContextAlloc(es_routes_cxt, sizeof(EsRoute) * Max(SPI_processed, 1));
	es_nroutes = (int) SPI_processed;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		HeapTuple	tup = SPI_tuptable->vals[i];
		char	   *sink = TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3,
															 &isnull));
		int			id = EsSinkByName(sink);

		es_routes[i].category =
			MemoryContextStrdup(es_routes_cxt,
								TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)));
		es_routes[i].topic =
			MemoryContextStrdup(es_routes_cxt,
								TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)));
		/* The table's check constraint allows no other name */
		es_routes[i].sink = EsSinkName(id < 0 ? ES_SINK_KAFKA : (EsSinkId) id);
	}
	es_routes_valid = (es_routes_invalidations == seen);
}

/*
 * The topic routed from 'category' (its own route, else '*'), and in *sink
 * its sink's name; NULL when it has none (SPI connected).  Routes are few,
 * so a linear scan does.
 */
const char *
EsRouteTopic(const char *category, const char **sink)
{
	const EsRoute *wildcard = NULL;
	int			i;

	if (!es_routes_valid)
		EsRoutesLoad();
	for (i = 0; i < es_nroutes; i++)
	{
		if (strcmp(es_routes[i].category, category) == 0)
		{
			*sink = es_routes[i].sink;
			return es_routes[i].topic;
		}
		if (strcmp(es_routes[i].category, "*") == 0)
			wildcard = &es_routes[i];
	}
	if (wildcard == NULL)
		return NULL;
	*sink = wildcard->sink;
	return wildcard->topic;
}

PG_FUNCTION_INFO_V1(eventstore_routes_changed);

/*
 * Trigger function of eventstore.routes_changed: every statement that
 * changes the table invalidates the route caches.
 */
Datum
eventstore_routes_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstore.routes_changed() must be called as a trigger")));
	/* Its NULL result would skip the row in a BEFORE or INSTEAD OF ROW trigger */
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstore.routes_changed() must be fired AFTER the change")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/* The category argument of the route functions: '*' or a category */
static text *
EsCheckRouteCategory(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("category must not be null")));
	EsCheckCategory(text_to_cstring(PG_GETARG_TEXT_PP(0)), true);
	return PG_GETARG_TEXT_PP(0);
}

PG_FUNCTION_INFO_V1(eventstore_add_route);

/*
 * SQL: eventstore.add_route(category text, topic text, sink text);
 * replaces a route.  Called through the two-argument signature of a schema
 * older than 0.5.0, it writes no sink (Kafka).
 */
Datum
eventstore_add_route(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr plan_without_sink = NULL;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	bool		with_sink = PG_NARGS() >= 3;
	EsSavedUser saved;

	values[0] = PointerGetDatum(EsCheckRouteCategory(fcinfo));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be null")));
	EsCheckTopic(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	values[1] = PG_GETARG_DATUM(1);
	values[2] = CStringGetTextDatum(EsSinkName(EsSinkArgument(fcinfo, 2)));
	EsWarnIfNotServed();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	if (with_sink)
		EsSpiExec(EsPlan(&plan,
						 "INSERT INTO eventstore.routes (category, topic, sink) VALUES ($1, $2, $3)"
						 " ON CONFLICT (category) DO UPDATE SET topic = excluded.topic,"
						 " sink = excluded.sink, created_at = excluded.created_at",
						 3, argtypes),
				  values, NULL, false, SPI_OK_INSERT);
	else
		EsSpiExec(EsPlan(&plan_without_sink,
						 "INSERT INTO eventstore.routes (category, topic) VALUES ($1, $2)"
						 " ON CONFLICT (category) DO UPDATE SET topic = excluded.topic,"
						 " created_at = excluded.created_at",
						 2, argtypes),
				  values, NULL, false, SPI_OK_INSERT);
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(eventstore_remove_route);

/* SQL: eventstore.remove_route(category text) */
Datum
eventstore_remove_route(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	EsSavedUser saved;

	values[0] = PointerGetDatum(EsCheckRouteCategory(fcinfo));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsSpiExec(EsPlan(&plan,
					 "DELETE FROM eventstore.routes WHERE category OPERATOR(pg_catalog.=) $1",
					 1, argtypes),
			  values, NULL, false, SPI_OK_DELETE);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no route for category \"%s\"", TextDatumGetCString(values[0]))));
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}
