/*
 * common.c
 *		Helpers shared by the SQL-callable functions: argument checks, the
 *		switch to the extension's owner for writes, cached SPI plans and the
 *		stream head lookup.
 *
 * The SQL functions run as their caller (SECURITY INVOKER), so a read runs
 * with the caller's privileges.  Writes to the extension's tables are done as
 * the owner of the eventstore schema instead: an application role that may
 * execute append() can append, but cannot INSERT into eventstore.events
 * directly and bypass the version check.  While running as the owner,
 * nothing resolves through the caller's search_path (see EsBecomeUser), and
 * every query text names its schema and qualifies its operators anyway.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/syscache.h"
#include "catalog/pg_namespace.h"

#include "compat.h"
#include "eventstore.h"

/* The OID of the eventstore schema */
Oid
EsSchemaOid(void)
{
	return get_namespace_oid("eventstore", false);
}

/*
 * Run what follows as 'userid', the way PostgreSQL runs maintenance commands
 * and index expressions as a table's owner (CVE-2018-1058, CVE-2022-1552):
 * with SECURITY_RESTRICTED_OPERATION, so that nothing run as that user can
 * change the session (SET ROLE, temporary objects, ...), and with search_path
 * pinned to pg_catalog, pg_temp at a new GUC nest level, so that no name or
 * operator in what runs resolves through the caller's search_path.  Our own
 * statements qualify every name and operator anyway.
 *
 * EsRestoreUser() undoes both.  On an error the (sub)transaction's abort
 * restores the user and the settings, so callers need no PG_TRY.
 */
void
EsBecomeUser(Oid userid, EsSavedUser *saved)
{
	GetUserIdAndSecContext(&saved->userid, &saved->sec_context);
	SetUserIdAndSecContext(userid,
						   saved->sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	saved->guc_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

/* The owner of the eventstore schema */
Oid
EsSchemaOwner(void)
{
	HeapTuple	tuple;
	Oid			owner;

	tuple = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(EsSchemaOid()));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for the eventstore schema");
	owner = ((Form_pg_namespace) GETSTRUCT(tuple))->nspowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* Run what follows as the owner of the eventstore schema (see EsBecomeUser) */
void
EsBecomeOwner(EsSavedUser *saved)
{
	EsBecomeUser(EsSchemaOwner(), saved);
}

/* Switch back to the user and settings saved by EsBecomeUser() */
void
EsRestoreUser(const EsSavedUser *saved)
{
	AtEOXact_GUC(false, saved->guc_nestlevel);
	SetUserIdAndSecContext(saved->userid, saved->sec_context);
}

/* Prepare a query once per backend and keep the plan in *cache */
SPIPlanPtr
EsPlan(SPIPlanPtr *cache, const char *sql, int nargs, const Oid *argtypes)
{
	return EsPlanWithOptions(cache, sql, nargs, argtypes, 0);
}

/*
 * EsPlan with cursor options: CURSOR_OPT_CUSTOM_PLAN keeps the parsed query
 * but plans it anew at each execution, for a query whose best plan depends
 * on how large a table is right now.
 */
SPIPlanPtr
EsPlanWithOptions(SPIPlanPtr *cache, const char *sql, int nargs,
				  const Oid *argtypes, int cursor_options)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, (Oid *) argtypes,
											  cursor_options);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*cache = plan;
	}
	return *cache;
}

/* Execute a kept plan; a negative result code is a can't-happen error */
void
EsSpiExec(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only,
		  int expected)
{
	int			rc = SPI_execute_plan(plan, values, nulls, read_only, 0);

	if (rc != expected)
		elog(ERROR, "SPI_execute_plan returned %s",
			 SPI_result_code_string(rc));
}

/* The stream id argument: NULL and the empty string are rejected */
text *
EsCheckStreamId(FunctionCallInfo fcinfo, int argno)
{
	text	   *stream_id;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stream_id must not be null")));
	stream_id = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(stream_id) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream_id must not be empty")));
	EsCheckKeyLength("stream_id", VARSIZE_ANY_EXHDR(stream_id));
	return stream_id;
}

/* Raise 54000 when a key ('what': stream_id, category, key) exceeds ES_MAX_KEY_BYTES */
void
EsCheckKeyLength(const char *what, size_t len)
{
	if (len > ES_MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("%s is too long (%zu bytes)", what, len),
				 errdetail("A stream id, category or message key has at most %d bytes.",
						   ES_MAX_KEY_BYTES)));
}

/*
 * The stream's current version, 0 when it has no events (SPI connected).
 * 'read_only': as the active snapshot sees it; else SPI takes a new snapshot
 * (under READ COMMITTED, one that sees every transaction committed by now).
 */
int64
EsStreamVersion(text *stream_id, bool read_only)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	Datum		version;

	EsPlan(&plan,
		   "SELECT version FROM eventstore.streams"
		   " WHERE stream_id OPERATOR(pg_catalog.=) $1",
		   1, argtypes);
	values[0] = PointerGetDatum(stream_id);
	EsSpiExec(plan, values, NULL, read_only, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return 0;
	version = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
							&isnull);
	return DatumGetInt64(version);
}

/*
 * Raise an error unless 'category' is one: the non-empty part of a stream id
 * before its first '-' (routes also take '*', which passes this check)
 */
void
EsCheckCategory(const char *category, bool wildcard)
{
	EsCheckKeyLength("category", strlen(category));
	if (category[0] == '\0' || strchr(category, '-') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid category \"%s\"", category),
				 wildcard ?
				 errdetail("A category is the non-empty part of a stream id before its first \"-\", or \"*\".") :
				 errdetail("A category is the non-empty part of a stream id before its first \"-\".")));
}

/* A stream's category: the part of its id before the first '-' */
char *
EsCategoryOf(const char *stream_id)
{
	const char *dash = strchr(stream_id, '-');

	return dash ? pnstrdup(stream_id, dash - stream_id) : pstrdup(stream_id);
}

/* Whether two jsonb values are equal, as jsonb's = operator says */
bool
EsJsonbEqual(Jsonb *a, Jsonb *b)
{
	return DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(a),
											JsonbPGetDatum(b)));
}

/*
 * The wait before attempt 'attempts' + 1 of a failed delivery (relay) or
 * event (subscriptions): exponential from eventstore.retry_backoff_initial
 * up to eventstore.retry_backoff_max, with equal jitter
 */
double
EsBackoffMs(int attempts)
{
	double		delay = es_retry_backoff_initial;

	while (attempts-- > 0 && delay < es_retry_backoff_max)
		delay *= 2;
	delay = Min(delay, es_retry_backoff_max);
	return delay / 2 + (delay / 2) * EsRandomDouble();
}
