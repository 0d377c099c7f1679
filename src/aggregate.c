/*
 * aggregate.c
 *		Aggregates: eventstore.register_aggregate(), load_aggregate() and
 *		save_snapshot().
 *
 * load_aggregate starts from the newest snapshot of the category's reducer
 * revision at or below the version asked for.  With a registered reducer it
 * folds the events after the snapshot here, in C, calling the reducer once
 * per event, and stores a snapshot when it folded at least snapshot_every
 * events.  Without one it returns the snapshot and the events after it as
 * JSON, for the application to fold.
 *
 * One answer, one snapshot: the stream's version, the snapshot and the
 * events all come from the snapshot load_aggregate takes as it starts, so
 * the state it returns (and may store) is exactly the fold of the events up
 * to the version it reports.
 *
 * A reducer runs as its owner, with SECURITY_RESTRICTED_OPERATION and
 * search_path pinned to pg_catalog, pg_temp, as PostgreSQL runs index
 * expressions: its result is stored for every reader, so it must not depend
 * on (or be able to use) the rights of whoever happens to load.  The caller
 * still needs EXECUTE on it.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "compat.h"
#include "eventstore.h"

/* Events are fetched from the cursor in batches of this many */
#define ES_FOLD_BATCH 1000

/* A category's row in eventstore.aggregates */
typedef struct EsAggregateDef
{
	Oid			reducer;
	int32		snapshot_every;
	int32		revision;
} EsAggregateDef;

/* The snapshot a load starts from */
typedef struct EsSnapshot
{
	bool		found;
	int64		version;		/* 0 when none was found */
	Datum		state;
} EsSnapshot;

static Oid	EsCheckReducer(Oid reducer);

/* Look up the category's registered reducer (SPI connected) */
static bool
EsLookupAggregate(const char *category, EsAggregateDef *def)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	HeapTuple	tup;

	EsPlan(&plan,
		   "SELECT reducer, snapshot_every, revision FROM eventstore.aggregates"
		   " WHERE category OPERATOR(pg_catalog.=) $1",
		   1, argtypes);
	values[0] = CStringGetTextDatum(category);
	EsSpiExec(plan, values, NULL, true, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	def->reducer = DatumGetObjectId(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
	def->snapshot_every = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
	def->revision = DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull));
	return true;
}

/* The revision snapshots of this category are written with: 0 without a reducer */
int32
EsSnapshotRevision(const char *category)
{
	EsAggregateDef def;

	return EsLookupAggregate(category, &def) ? def.revision : 0;
}

/* The newest snapshot of 'revision' at or below 'version' (SPI connected) */
static EsSnapshot
EsFindSnapshot(text *stream_id, int32 revision, int64 version)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {TEXTOID, INT4OID, INT8OID};
	Datum		values[3];
	EsSnapshot	snap = {false, 0, (Datum) 0};
	bool		isnull;

	EsPlan(&plan,
		   "SELECT stream_version, state FROM eventstore.snapshots"
		   " WHERE stream_id OPERATOR(pg_catalog.=) $1"
		   " AND revision OPERATOR(pg_catalog.=) $2"
		   " AND stream_version OPERATOR(pg_catalog.<=) $3"
		   " ORDER BY stream_version DESC LIMIT 1",
		   3, argtypes);
	values[0] = PointerGetDatum(stream_id);
	values[1] = Int32GetDatum(revision);
	values[2] = Int64GetDatum(version);
	EsSpiExec(plan, values, NULL, true, SPI_OK_SELECT);
	if (SPI_processed == 1)
	{
		snap.found = true;
		snap.version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 1, &isnull));
		snap.state = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
								   &isnull);
	}
	return snap;
}

/* Store a snapshot as the extension's owner; an existing one is kept or replaced */
static void
EsWriteSnapshot(text *stream_id, int64 version, Datum state, int32 revision,
				bool replace)
{
	static SPIPlanPtr keep_plan = NULL;
	static SPIPlanPtr replace_plan = NULL;
	Oid			argtypes[4] = {TEXTOID, INT8OID, JSONBOID, INT4OID};
	Datum		values[4];
	EsSavedUser saved;

	values[0] = PointerGetDatum(stream_id);
	values[1] = Int64GetDatum(version);
	values[2] = state;
	values[3] = Int32GetDatum(revision);
	EsBecomeOwner(&saved);
	if (replace)
		EsSpiExec(EsPlan(&replace_plan,
						 "INSERT INTO eventstore.snapshots (stream_id, stream_version, state, revision)"
						 " VALUES ($1, $2, $3, $4)"
						 " ON CONFLICT (stream_id, revision, stream_version)"
						 " DO UPDATE SET state = excluded.state, created_at = excluded.created_at",
						 4, argtypes),
				  values, NULL, false, SPI_OK_INSERT);
	else
		EsSpiExec(EsPlan(&keep_plan,
						 "INSERT INTO eventstore.snapshots (stream_id, stream_version, state, revision)"
						 " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
						 4, argtypes),
				  values, NULL, false, SPI_OK_INSERT);
	EsRestoreUser(&saved);
}

/*
 * Fold the events in (snap->version, target] through the reducer; returns
 * how many were folded and leaves the state in *state / *state_null.  The
 * events are read as the caller, the reducer runs as its owner.
 *
 * Each call's garbage goes into a context reset per event; the state lives
 * in one of two contexts, the older of which is reset once the reducer
 * returned the newer state.
 */
static int64
EsFold(text *stream_id, const EsAggregateDef *def, const EsSnapshot *snap,
	   int64 target, Datum *state, bool *state_null)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {TEXTOID, INT8OID, INT8OID};
	Datum		values[3];
	Portal		portal;
	FmgrInfo	flinfo;
	MemoryContext call_cxt,
				state_cxt[2],
				oldcxt;
	int			cur = 0;
	int64		folded = 0;
	Oid			owner;
	EsSavedUser saved;

	/* The function may have changed since it was registered */
	owner = EsCheckReducer(def->reducer);
	if (EsProcAclCheck(def->reducer, GetUserId()) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION,
					   format_procedure(def->reducer));
	fmgr_info(def->reducer, &flinfo);

	call_cxt = AllocSetContextCreate(CurrentMemoryContext, "eventstore reducer call",
									 ALLOCSET_DEFAULT_SIZES);
	state_cxt[0] = AllocSetContextCreate(CurrentMemoryContext, "eventstore state",
										 ALLOCSET_DEFAULT_SIZES);
	state_cxt[1] = AllocSetContextCreate(CurrentMemoryContext, "eventstore state",
										 ALLOCSET_DEFAULT_SIZES);
	*state_null = !snap->found;
	if (snap->found)
		*state = datumCopy(snap->state, false, -1);

	EsPlan(&plan,
		   "SELECT e FROM eventstore.events e"
		   " WHERE e.stream_id OPERATOR(pg_catalog.=) $1"
		   " AND e.stream_version OPERATOR(pg_catalog.>) $2"
		   " AND e.stream_version OPERATOR(pg_catalog.<=) $3"
		   " ORDER BY e.stream_version",
		   3, argtypes);
	values[0] = PointerGetDatum(stream_id);
	values[1] = Int64GetDatum(snap->version);
	values[2] = Int64GetDatum(target);
	portal = SPI_cursor_open(NULL, plan, values, NULL, true);
	/* The reducer may run SQL: it must not be able to close our cursor */
	PinPortal(portal);

	EsBecomeUser(owner, &saved);
	for (;;)
	{
		SPITupleTable *batch;
		uint64		nrows,
					i;

		SPI_cursor_fetch(portal, true, ES_FOLD_BATCH);
		batch = SPI_tuptable;
		nrows = SPI_processed;
		if (nrows == 0)
			break;
		for (i = 0; i < nrows; i++)
		{
			LOCAL_FCINFO(fcinfo, 2);
			bool		isnull;
			Datum		result;

			CHECK_FOR_INTERRUPTS();
			InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
			fcinfo->args[0].value = *state;
			fcinfo->args[0].isnull = *state_null;
			fcinfo->args[1].value = SPI_getbinval(batch->vals[i], batch->tupdesc, 1,
												  &isnull);
			fcinfo->args[1].isnull = false;

			oldcxt = MemoryContextSwitchTo(call_cxt);
			result = FunctionCallInvoke(fcinfo);
			cur = 1 - cur;
			MemoryContextSwitchTo(state_cxt[cur]);
			*state_null = fcinfo->isnull;
			*state = fcinfo->isnull ? (Datum) 0 : datumCopy(result, false, -1);
			MemoryContextSwitchTo(oldcxt);
			MemoryContextReset(state_cxt[1 - cur]);
			MemoryContextReset(call_cxt);
			folded++;
		}
		SPI_freetuptable(batch);
	}
	EsRestoreUser(&saved);
	UnpinPortal(portal);
	SPI_cursor_close(portal);

	/* Move the final state out of the contexts we are about to delete */
	if (!*state_null)
		*state = datumCopy(*state, false, -1);
	MemoryContextDelete(call_cxt);
	MemoryContextDelete(state_cxt[0]);
	MemoryContextDelete(state_cxt[1]);
	return folded;
}

/* The events in (after, target] as a JSON array, for the caller to fold */
static Datum
EsEventsJson(text *stream_id, int64 after, int64 target)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[3] = {TEXTOID, INT8OID, INT8OID};
	Datum		values[3];
	bool		isnull;

	EsPlan(&plan,
		   "SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
		   "'id', event_id, 'type', event_type, 'version', stream_version,"
		   " 'position', global_position, 'data', data, 'metadata', metadata,"
		   " 'recorded_at', recorded_at) ORDER BY stream_version), '[]'::pg_catalog.jsonb)"
		   " FROM eventstore.events"
		   " WHERE stream_id OPERATOR(pg_catalog.=) $1"
		   " AND stream_version OPERATOR(pg_catalog.>) $2"
		   " AND stream_version OPERATOR(pg_catalog.<=) $3",
		   3, argtypes);
	values[0] = PointerGetDatum(stream_id);
	values[1] = Int64GetDatum(after);
	values[2] = Int64GetDatum(target);
	EsSpiExec(plan, values, NULL, true, SPI_OK_SELECT);
	return SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
}

/*
 * Raise an error unless the stream has reached 'version'; 'read_only': as
 * seen by the active snapshot, else by a new one
 */
static int64
EsCheckVersionExists(text *stream_id, int64 version, bool read_only)
{
	int64		current = EsStreamVersion(stream_id, read_only);

	if (version > current)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream \"%s\" has no version " INT64_FORMAT,
						text_to_cstring(stream_id), version),
				 errdetail("Its current version is " INT64_FORMAT ".", current)));
	return current;
}

PG_FUNCTION_INFO_V1(eventstore_load_aggregate);

/* SQL: eventstore.load_aggregate(stream_id text, as_of_version bigint) */
Datum
eventstore_load_aggregate(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *stream_id = EsCheckStreamId(fcinfo, 0);
	int64		target;
	char	   *category;
	EsAggregateDef def;
	bool		have_reducer;
	EsSnapshot	snap;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (!PG_ARGISNULL(1) && PG_GETARG_INT64(1) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("as_of_version must not be negative: " INT64_FORMAT,
						PG_GETARG_INT64(1))));
	InitMaterializedSRF(fcinfo, 0);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/*
	 * Every read below runs with this one snapshot (read-only SPI uses the
	 * active snapshot).  Under READ COMMITTED it is taken now, after the
	 * command counter moved past what earlier parts of the calling
	 * statement wrote: an append_event() in the same statement is seen.
	 */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());

	target = PG_ARGISNULL(1) ? EsStreamVersion(stream_id, true) :
		(EsCheckVersionExists(stream_id, PG_GETARG_INT64(1), true), PG_GETARG_INT64(1));
	category = EsCategoryOf(text_to_cstring(stream_id));
	have_reducer = EsLookupAggregate(category, &def);
	snap = EsFindSnapshot(stream_id, have_reducer ? def.revision : 0, target);

	values[0] = PointerGetDatum(stream_id);
	values[1] = Int64GetDatum(target);
	values[3] = Int64GetDatum(snap.version);
	nulls[3] = !snap.found;
	if (have_reducer)
	{
		int64		folded = EsFold(stream_id, &def, &snap, target,
									&values[2], &nulls[2]);

		values[4] = DirectFunctionCall1(jsonb_in, CStringGetDatum("[]"));
		/* A snapshot is a cache: never write one where we cannot */
		if (folded >= def.snapshot_every && !nulls[2] &&
			!XactReadOnly && !RecoveryInProgress())
			EsWriteSnapshot(stream_id, target, values[2], def.revision, false);
	}
	else
	{
		values[2] = snap.state;
		nulls[2] = !snap.found;
		values[4] = EsEventsJson(stream_id, snap.version, target);
	}

	/* The tuplestore copies the values out of SPI's memory */
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	PopActiveSnapshot();
	SPI_finish();
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(eventstore_save_snapshot);

/* SQL: eventstore.save_snapshot(stream_id text, version bigint, state jsonb) */
Datum
eventstore_save_snapshot(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsCheckStreamId(fcinfo, 0);
	int64		version;

	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", PG_ARGISNULL(1) ? "version" : "state")));
	version = PG_GETARG_INT64(1);
	if (version <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("snapshot version must be positive: " INT64_FORMAT, version)));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsCheckVersionExists(stream_id, version, false);
	EsWriteSnapshot(stream_id, version, PG_GETARG_DATUM(2),
					EsSnapshotRevision(EsCategoryOf(text_to_cstring(stream_id))),
					true);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Raise an error unless 'reducer' is (jsonb, eventstore.events) -> jsonb,
 * not strict; returns its owner
 */
static Oid
EsCheckReducer(Oid reducer)
{
	Oid			events_type = get_rel_type_id(get_relname_relid("events", EsSchemaOid()));
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(reducer));
	Form_pg_proc proc;
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("reducer function with OID %u does not exist", reducer)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	if (proc->prokind != PROKIND_FUNCTION || proc->proretset ||
		proc->pronargs != 2 || proc->proargtypes.values[0] != JSONBOID ||
		proc->proargtypes.values[1] != events_type || proc->prorettype != JSONBOID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("reducer %s has the wrong signature", format_procedure(reducer)),
				 errdetail("A reducer is declared (state jsonb, event eventstore.events) RETURNS jsonb.")));
	if (isAnyTempNamespace(proc->pronamespace))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("reducer %s must not be in a temporary schema", format_procedure(reducer)),
				 errdetail("A temporary function goes away with the session that created it.")));
	if (proc->proisstrict)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FUNCTION_DEFINITION),
				 errmsg("reducer %s must not be STRICT", format_procedure(reducer)),
				 errdetail("The first event of a stream is folded into a NULL state."),
				 errhint("Declare it CALLED ON NULL INPUT and handle the NULL state.")));
	owner = proc->proowner;
	ReleaseSysCache(tup);
	return owner;
}

PG_FUNCTION_INFO_V1(eventstore_register_aggregate);

/*
 * SQL: eventstore.register_aggregate(category text, reducer regprocedure,
 *		snapshot_every integer, revision integer)
 */
Datum
eventstore_register_aggregate(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr plan = NULL;
	static const char *const argnames[] = {"category", "reducer", "snapshot_every", "revision"};
	Oid			argtypes[4] = {TEXTOID, REGPROCEDUREOID, INT4OID, INT4OID};
	Datum		values[4];
	EsSavedUser saved;
	int			i;

	for (i = 0; i < 4; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", argnames[i])));
	EsCheckCategory(text_to_cstring(PG_GETARG_TEXT_PP(0)), false);
	if (PG_GETARG_INT32(2) <= 0 || PG_GETARG_INT32(3) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be positive", PG_GETARG_INT32(2) <= 0 ? "snapshot_every" : "revision")));
	(void) EsCheckReducer(PG_GETARG_OID(1));
	/* The reducer will run as its owner, for every loader: only its owner may */
	if (!EsProcOwnerCheck(PG_GETARG_OID(1), GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_FUNCTION,
					   format_procedure(PG_GETARG_OID(1)));

	for (i = 0; i < 4; i++)
		values[i] = PG_GETARG_DATUM(i);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsSpiExec(EsPlan(&plan,
					 "INSERT INTO eventstore.aggregates (category, reducer, snapshot_every, revision)"
					 " VALUES ($1, $2, $3, $4) ON CONFLICT (category) DO UPDATE"
					 " SET reducer = excluded.reducer, snapshot_every = excluded.snapshot_every,"
					 " revision = excluded.revision, registered_at = excluded.registered_at",
					 4, argtypes),
			  values, NULL, false, SPI_OK_INSERT);
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}
