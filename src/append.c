/*
 * append.c
 *		eventstore.append() and eventstore.append_event(): add events to a
 *		stream as its next versions, with an optimistic version check and
 *		idempotent retries.
 *
 * Locking: the stream's row in eventstore.streams is the stream's lock.  The
 * first statement of an append inserts or updates that row, so appenders of
 * one stream queue on its row lock while appenders of other streams never
 * meet.  Under READ COMMITTED a waiter re-checks the expected version against
 * the row the winner committed.  Positions are only taken (by the INSERT into
 * eventstore.events) after the version check passed, so a conflict does not
 * consume a position.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/uuid.h"

#include "eventstore.h"

/* One event of an append call */
typedef struct EsEvent
{
	Datum		id;				/* uuid */
	bool		id_given;		/* the caller chose the id */
	text	   *type;
	Jsonb	   *data;
	Jsonb	   *metadata;
} EsEvent;

/* One append call */
typedef struct EsAppend
{
	text	   *stream_id;
	bool		check;			/* expected_version was given */
	int64		expected;
	int			nevents;
	EsEvent    *events;
	int			nids;			/* how many events carry a caller's id */
} EsAppend;

/* The jsonb '{}', the default metadata */
static Jsonb *
EsEmptyObject(void)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
}

/* A JsonbValue as a C string, for error messages */
static char *
EsJsonbValueText(JsonbValue *v)
{
	return JsonbToCString(NULL, &JsonbValueToJsonb(v)->root, 0);
}

/* Parse event number 'n' (1-based) of the call from a JSON object */
static void
EsParseEvent(JsonbContainer *obj, int n, EsEvent *ev)
{
	JsonbIterator *it = JsonbIteratorInit(obj);
	JsonbIteratorToken tok;
	JsonbValue	v;

	/* Refuse keys we do not know: a typo must not silently drop a field */
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		if (!((v.val.string.len == 4 &&
			   (strncmp(v.val.string.val, "type", 4) == 0 ||
				strncmp(v.val.string.val, "data", 4) == 0)) ||
			  (v.val.string.len == 2 && strncmp(v.val.string.val, "id", 2) == 0) ||
			  (v.val.string.len == 8 && strncmp(v.val.string.val, "metadata", 8) == 0)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event %d has an unknown key \"%.*s\"", n,
							v.val.string.len, v.val.string.val),
					 errhint("An event has the keys \"type\", \"data\", \"metadata\" and \"id\".")));
	}

	if (getKeyJsonValueFromContainer(obj, "type", 4, &v) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d has no \"type\"", n)));
	if (v.type != jbvString || v.val.string.len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d has an invalid \"type\": %s", n,
						EsJsonbValueText(&v)),
				 errdetail("An event type is a non-empty string.")));
	ev->type = cstring_to_text_with_len(v.val.string.val, v.val.string.len);

	if (getKeyJsonValueFromContainer(obj, "data", 4, &v) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d has no \"data\"", n)));
	ev->data = JsonbValueToJsonb(&v);

	if (getKeyJsonValueFromContainer(obj, "metadata", 8, &v) == NULL)
		ev->metadata = EsEmptyObject();
	else if (v.type == jbvBinary && JsonContainerIsObject(v.val.binary.data))
		ev->metadata = JsonbValueToJsonb(&v);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event %d has invalid \"metadata\": %s", n,
						EsJsonbValueText(&v)),
				 errdetail("Metadata is a JSON object.")));

	ev->id_given = getKeyJsonValueFromContainer(obj, "id", 2, &v) != NULL;
	if (!ev->id_given)
		ev->id = DirectFunctionCall1(gen_random_uuid, (Datum) 0);
	else if (v.type == jbvString)
		ev->id = DirectFunctionCall1(uuid_in,
									 CStringGetDatum(pnstrdup(v.val.string.val,
															  v.val.string.len)));
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("event %d has an invalid \"id\": %s", n,
						EsJsonbValueText(&v)),
				 errdetail("An event id is a UUID string.")));
}

/* qsort comparator for the events' ids */
static int
EsCompareIds(const void *a, const void *b)
{
	return memcmp(DatumGetUUIDP(*(const Datum *) a),
				  DatumGetUUIDP(*(const Datum *) b), UUID_LEN);
}

/* Count the caller's ids and refuse the same id twice in one call */
static void
EsCheckIds(EsAppend *a)
{
	Datum	   *ids = palloc(sizeof(Datum) * a->nevents);
	int			i;

	a->nids = 0;
	for (i = 0; i < a->nevents; i++)
		if (a->events[i].id_given)
			ids[a->nids++] = a->events[i].id;
	qsort(ids, a->nids, sizeof(Datum), EsCompareIds);
	for (i = 1; i < a->nids; i++)
		if (EsCompareIds(&ids[i - 1], &ids[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event id %s appears more than once in the call",
							DatumGetCString(DirectFunctionCall1(uuid_out, ids[i])))));
	pfree(ids);
}

/* Parse the events argument: one event object or a non-empty array of them */
static void
EsParseEvents(Jsonb *events, EsAppend *a)
{
	JsonbContainer *root = &events->root;
	int			i;

	if (JB_ROOT_IS_SCALAR(events))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON object or an array of objects")));
	if (JB_ROOT_IS_OBJECT(events))
	{
		a->nevents = 1;
		a->events = palloc0(sizeof(EsEvent));
		EsParseEvent(root, 1, &a->events[0]);
	}
	else
	{
		a->nevents = JB_ROOT_COUNT(events);
		if (a->nevents == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("events must not be an empty array")));
		a->events = palloc0(sizeof(EsEvent) * a->nevents);
		for (i = 0; i < a->nevents; i++)
		{
			JsonbValue *v = getIthJsonbValueFromContainer(root, i);

			if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("event %d is not a JSON object: %s", i + 1,
								EsJsonbValueText(v))));
			EsParseEvent(v->val.binary.data, i + 1, &a->events[i]);
		}
	}
	EsCheckIds(a);
}

/* Read the expected_version argument: NULL, 0 or a positive version */
static void
EsParseExpected(FunctionCallInfo fcinfo, int argno, EsAppend *a)
{
	a->check = !PG_ARGISNULL(argno);
	a->expected = a->check ? PG_GETARG_INT64(argno) : 0;
	if (a->expected < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid expected_version " INT64_FORMAT, a->expected),
				 errhint("Use NULL for no check, 0 for a new stream, or the version the stream must be at.")));
}

/*
 * Find the events that already carry the caller's ids; leaves them in
 * SPI_tuptable and returns how many there are.
 */
static uint64
EsFindIds(EsAppend *a)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {UUIDARRAYOID};
	Datum	   *ids = palloc(sizeof(Datum) * a->nids);
	Datum		values[1];
	int			i,
				n = 0;

	EsPlan(&plan,
		   "SELECT event_id, stream_id, stream_version, event_type, data, metadata"
		   " FROM eventstore.events"
		   " WHERE event_id OPERATOR(pg_catalog.=) ANY ($1)",
		   1, argtypes);
	for (i = 0; i < a->nevents; i++)
		if (a->events[i].id_given)
			ids[n++] = a->events[i].id;
	values[0] = PointerGetDatum(construct_array(ids, n, UUIDOID, UUID_LEN,
												false, TYPALIGN_CHAR));
	EsSpiExec(plan, values, NULL, false, SPI_OK_SELECT);
	return SPI_processed;
}

/* Whether two texts are the same bytes */
static bool
EsTextEqual(text *a, text *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/*
 * Whether the rows EsFindIds() left in SPI_tuptable are exactly this call's
 * events at the versions it would have written: a retry of a call that
 * already succeeded.  Sets *version to the stream version it returned.
 */
static bool
EsIsRetry(EsAppend *a, int64 *version)
{
	SPITupleTable *tt = SPI_tuptable;
	bool		placed = a->check;	/* where the events must be is known */
	int64		first = a->check ? a->expected + 1 : 0;
	uint64		r;

	if (a->nids != a->nevents || SPI_processed != (uint64) a->nevents)
		return false;
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = tt->vals[r];
		bool		isnull;
		Datum		id = SPI_getbinval(tup, tt->tupdesc, 1, &isnull);
		text	   *stream = DatumGetTextPP(SPI_getbinval(tup, tt->tupdesc, 2, &isnull));
		int64		ver = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 3, &isnull));
		int			i;

		for (i = 0; i < a->nevents; i++)
			if (EsCompareIds(&id, &a->events[i].id) == 0)
				break;
		Assert(i < a->nevents);
		if (!placed)
		{
			first = ver - i;
			placed = true;
		}
		if (ver != first + i ||
			!EsTextEqual(stream, a->stream_id) ||
			!EsTextEqual(DatumGetTextPP(SPI_getbinval(tup, tt->tupdesc, 4, &isnull)),
						 a->events[i].type) ||
			!EsJsonbEqual(DatumGetJsonbP(SPI_getbinval(tup, tt->tupdesc, 5, &isnull)),
						  a->events[i].data) ||
			!EsJsonbEqual(DatumGetJsonbP(SPI_getbinval(tup, tt->tupdesc, 6, &isnull)),
						  a->events[i].metadata))
			return false;
	}
	*version = first + a->nevents - 1;
	return true;
}

static void EsDuplicateIdError(EsAppend *a) pg_attribute_noreturn();

/*
 * SE002 for an id that a concurrent append took while this one inserted
 * some of its events: which stored event has it is not known here
 */
static void
EsDuplicateIdError(EsAppend *a)
{
	ereport(ERROR,
			(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
			 errmsg("an event id of this append to stream \"%s\" was used by a concurrent append",
					text_to_cstring(a->stream_id)),
			 errdetail("A retried append is only accepted when all its events match the stored ones.")));
}

/*
 * The append cannot go ahead as asked: return the version of a retried call
 * that already succeeded, or raise SE001 (wrong version) or SE002 (an id is
 * used by another event).
 */
static int64
EsResolveConflict(EsAppend *a)
{
	char	   *stream = text_to_cstring(a->stream_id);
	int64		current = EsStreamVersion(a->stream_id, false);
	int64		version;
	bool		isnull;

	if (a->nids > 0 && EsFindIds(a) > 0 && EsIsRetry(a, &version))
		return version;
	if (a->check && current != a->expected)
		ereport(ERROR,
				(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
				 errmsg("wrong expected version for stream \"%s\": expected " INT64_FORMAT ", actual " INT64_FORMAT,
						stream, a->expected, current),
				 errhint("Reload the stream and decide again, or pass NULL as expected_version to skip the check.")));
	if (a->check && (a->nids == 0 || SPI_processed == 0))
		ereport(ERROR,
				(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
				 errmsg("stream \"%s\" changed concurrently at version " INT64_FORMAT,
						stream, current),
				 errdetail("Its version was " INT64_FORMAT " each time the append looked, but other appends moved it in between.",
						   a->expected),
				 errhint("Reload the stream and decide again, or pass NULL as expected_version to skip the check.")));
	if (a->nids == 0 || SPI_processed == 0)
		EsDuplicateIdError(a);
	ereport(ERROR,
			(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
			 errmsg("event id %s is already used by version " INT64_FORMAT " of stream \"%s\"",
					DatumGetCString(DirectFunctionCall1(uuid_out,
														SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull))),
					DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull)),
					TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull))),
			 errdetail("A retried append is only accepted when all its events match the stored ones.")));
	pg_unreachable();
}

/*
 * Move the stream's head by the number of events if the expected version
 * holds; this takes (or waits for) the stream's row lock.  Sets *base to the
 * version before the append and returns false on a version mismatch.
 */
static bool
EsAdvanceHead(EsAppend *a, int64 *base)
{
	static SPIPlanPtr create_plan = NULL;
	static SPIPlanPtr move_plan = NULL;
	static SPIPlanPtr any_plan = NULL;
	Oid			argtypes[3] = {TEXTOID, INT8OID, INT8OID};
	Datum		values[3];
	bool		isnull;

	values[0] = PointerGetDatum(a->stream_id);
	if (a->check && a->expected == 0)
	{
		values[1] = Int64GetDatum(a->nevents);
		EsSpiExec(EsPlan(&create_plan,
						 "INSERT INTO eventstore.streams (stream_id, version)"
						 " VALUES ($1, $2) ON CONFLICT (stream_id) DO NOTHING",
						 2, argtypes),
				  values, NULL, false, SPI_OK_INSERT);
		*base = 0;
		return SPI_processed == 1;
	}
	if (a->check)
	{
		values[1] = Int64GetDatum(a->expected);
		values[2] = Int64GetDatum(a->expected + a->nevents);
		EsSpiExec(EsPlan(&move_plan,
						 "UPDATE eventstore.streams SET version = $3"
						 " WHERE stream_id OPERATOR(pg_catalog.=) $1"
						 " AND version OPERATOR(pg_catalog.=) $2",
						 3, argtypes),
				  values, NULL, false, SPI_OK_UPDATE);
		*base = a->expected;
		return SPI_processed == 1;
	}
	values[1] = Int64GetDatum(a->nevents);
	EsSpiExec(EsPlan(&any_plan,
					 "INSERT INTO eventstore.streams AS s (stream_id, version)"
					 " VALUES ($1, $2) ON CONFLICT (stream_id) DO UPDATE"
					 " SET version = s.version OPERATOR(pg_catalog.+) excluded.version"
					 " RETURNING s.version",
					 2, argtypes),
			  values, NULL, false, SPI_OK_INSERT_RETURNING);
	*base = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull)) - a->nevents;
	return true;
}

/* The positions an INSERT ... RETURNING global_position left in SPI_tuptable */
static Datum *
EsReturnedPositions(void)
{
	Datum	   *positions = palloc(sizeof(Datum) * SPI_processed);
	uint64		i;
	bool		isnull;

	for (i = 0; i < SPI_processed; i++)
		positions[i] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
									 &isnull);
	return positions;
}

/*
 * Insert the events as versions base + 1 ... base + nevents; returns their
 * positions in version order.
 *
 * When the caller chose ids, an id may be taken by a concurrent append that
 * committed after our check (the same call retried in parallel, or another
 * stream): the INSERT then skips that event (ON CONFLICT (event_id) DO
 * NOTHING, which waits for the other transaction to end) rather than fail
 * with a unique violation, and this returns NULL with *inserted set to how
 * many events it did insert.
 */
static Datum *
EsInsertEvents(EsAppend *a, int64 base, uint64 *inserted)
{
	static SPIPlanPtr plans[2][2];	/* [several events][caller's ids] */
	Oid			argtypes[6] = {TEXTOID, INT8OID, UUIDOID, TEXTOID, JSONBOID, JSONBOID};
	Datum		values[6];
	bool		many = a->nevents > 1;
	bool		ids = a->nids > 0;
	const char *guard = ids ? " ON CONFLICT (event_id) DO NOTHING" : "";
	int			i;

	values[0] = PointerGetDatum(a->stream_id);
	values[1] = Int64GetDatum(base + 1);
	if (!many)
	{
		values[2] = a->events[0].id;
		values[3] = PointerGetDatum(a->events[0].type);
		values[4] = JsonbPGetDatum(a->events[0].data);
		values[5] = JsonbPGetDatum(a->events[0].metadata);
		if (plans[0][ids] == NULL)
			EsPlan(&plans[0][ids],
				   psprintf("INSERT INTO eventstore.events"
							" (stream_id, stream_version, event_id, event_type, data, metadata)"
							" VALUES ($1, $2, $3, $4, $5, $6)%s RETURNING global_position",
							guard),
				   6, argtypes);
	}
	else
	{
		Datum	   *idv = palloc(sizeof(Datum) * a->nevents);
		Datum	   *types = palloc(sizeof(Datum) * a->nevents);
		Datum	   *datas = palloc(sizeof(Datum) * a->nevents);
		Datum	   *metas = palloc(sizeof(Datum) * a->nevents);

		argtypes[2] = UUIDARRAYOID;
		argtypes[3] = TEXTARRAYOID;
		argtypes[4] = argtypes[5] = JSONBARRAYOID;
		for (i = 0; i < a->nevents; i++)
		{
			idv[i] = a->events[i].id;
			types[i] = PointerGetDatum(a->events[i].type);
			datas[i] = JsonbPGetDatum(a->events[i].data);
			metas[i] = JsonbPGetDatum(a->events[i].metadata);
		}
		values[2] = PointerGetDatum(construct_array(idv, a->nevents, UUIDOID,
													UUID_LEN, false, TYPALIGN_CHAR));
		values[3] = PointerGetDatum(construct_array(types, a->nevents, TEXTOID,
													-1, false, TYPALIGN_INT));
		values[4] = PointerGetDatum(construct_array(datas, a->nevents, JSONBOID,
													-1, false, TYPALIGN_INT));
		values[5] = PointerGetDatum(construct_array(metas, a->nevents, JSONBOID,
													-1, false, TYPALIGN_INT));
		/* Positions follow the versions: one INSERT, rows in ordinality order */
		if (plans[1][ids] == NULL)
			EsPlan(&plans[1][ids],
				   psprintf("INSERT INTO eventstore.events"
							" (stream_id, stream_version, event_id, event_type, data, metadata)"
							" SELECT $1, $2 OPERATOR(pg_catalog.+) u.o OPERATOR(pg_catalog.-) 1,"
							" u.i, u.t, u.d, u.m"
							" FROM ROWS FROM (pg_catalog.unnest($3), pg_catalog.unnest($4),"
							" pg_catalog.unnest($5), pg_catalog.unnest($6))"
							" WITH ORDINALITY AS u(i, t, d, m, o)"
							" ORDER BY u.o%s RETURNING global_position",
							guard),
				   6, argtypes);
	}
	EsSpiExec(plans[many][ids], values, NULL, false, SPI_OK_INSERT_RETURNING);
	*inserted = SPI_processed;
	if (SPI_processed != (uint64) a->nevents)
		return NULL;
	return EsReturnedPositions();
}

/*
 * Put the stream's head back to 'base' after EsAdvanceHead() moved it and
 * the events could not be inserted (we hold the row's lock)
 */
static void
EsResetHead(EsAppend *a, int64 base)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {TEXTOID, INT8OID};
	Datum		values[2];

	values[0] = PointerGetDatum(a->stream_id);
	values[1] = Int64GetDatum(base);
	EsSpiExec(EsPlan(&plan,
					 "UPDATE eventstore.streams SET version = $2"
					 " WHERE stream_id OPERATOR(pg_catalog.=) $1",
					 2, argtypes),
			  values, NULL, false, SPI_OK_UPDATE);
}

/*
 * How often an append whose expected version became true while it looked
 * (see EsAppendEvents) tries again before it reports a conflict
 */
#define ES_APPEND_TRIES 10

/*
 * Append the parsed events; returns the stream's new version.
 *
 * Under READ COMMITTED each statement below sees what committed before it
 * started.  An UPDATE of the head can miss a head that a concurrent append
 * created or moved to the expected version and committed after the UPDATE's
 * snapshot but before we looked again; then the version check is true and
 * we try again, with a new snapshot, instead of reporting a conflict that
 * is not there.
 */
static int64
EsAppendEvents(EsAppend *a)
{
	EsSavedUser saved;
	int64		version = 0;
	int			try;

	/* No version computed below may overflow */
	if (a->check && a->expected > PG_INT64_MAX - a->nevents)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid expected_version " INT64_FORMAT, a->expected),
				 errdetail("The stream's version after the append would be out of range.")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);

	for (try = 1;; try++)
	{
		int64		base;
		Datum	   *positions;
		uint64		inserted;

		if (a->nids > 0 && EsFindIds(a) > 0)
		{
			version = EsResolveConflict(a);
			break;
		}
		if (!EsAdvanceHead(a, &base))
		{
			if (try < ES_APPEND_TRIES && a->check &&
				EsStreamVersion(a->stream_id, false) == a->expected)
				continue;
			version = EsResolveConflict(a);
			break;
		}
		EsHoldHorizon(ES_SEQ_EVENTS);
		positions = EsInsertEvents(a, base, &inserted);
		if (positions == NULL)
		{
			/* A concurrent append took one of our ids: see EsInsertEvents */
			if (inserted > 0)
				EsDuplicateIdError(a);
			EsResetHead(a, base);
			version = EsResolveConflict(a);
			break;
		}
		EsRouteEvents(a->stream_id, EsCategoryOf(text_to_cstring(a->stream_id)),
					  positions, a->nevents);
		version = base + a->nevents;
		break;
	}

	EsRestoreUser(&saved);
	SPI_finish();
	return version;
}

PG_FUNCTION_INFO_V1(eventstore_append);

/* SQL: eventstore.append(stream_id text, expected_version bigint, events jsonb) */
Datum
eventstore_append(PG_FUNCTION_ARGS)
{
	EsAppend	a;

	a.stream_id = EsCheckStreamId(fcinfo, 0);
	EsParseExpected(fcinfo, 1, &a);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be null")));
	EsParseEvents(PG_GETARG_JSONB_P(2), &a);
	PG_RETURN_INT64(EsAppendEvents(&a));
}

PG_FUNCTION_INFO_V1(eventstore_append_event);

/*
 * SQL: eventstore.append_event(stream_id text, expected_version bigint,
 *		event_type text, data jsonb, metadata jsonb, event_id uuid)
 */
Datum
eventstore_append_event(PG_FUNCTION_ARGS)
{
	EsAppend	a;
	EsEvent		ev;

	a.stream_id = EsCheckStreamId(fcinfo, 0);
	EsParseExpected(fcinfo, 1, &a);
	if (PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", PG_ARGISNULL(2) ? "event_type" : "data")));
	ev.type = PG_GETARG_TEXT_PP(2);
	if (VARSIZE_ANY_EXHDR(ev.type) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_type must not be empty")));
	ev.data = PG_GETARG_JSONB_P(3);
	ev.metadata = PG_ARGISNULL(4) ? EsEmptyObject() : PG_GETARG_JSONB_P(4);
	if (!JB_ROOT_IS_OBJECT(ev.metadata))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metadata must be a JSON object")));
	ev.id_given = !PG_ARGISNULL(5);
	ev.id = ev.id_given ? PG_GETARG_DATUM(5) :
		DirectFunctionCall1(gen_random_uuid, (Datum) 0);
	a.nevents = 1;
	a.events = &ev;
	a.nids = ev.id_given ? 1 : 0;
	PG_RETURN_INT64(EsAppendEvents(&a));
}
