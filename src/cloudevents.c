/*
 * cloudevents.c
 *		The Kafka headers of a routed event (the CloudEvents Kafka binding,
 *		binary content mode), built in one place: by the relay straight from
 *		the event's columns, and by eventstore.cloudevent_headers() as jsonb.
 *
 * The relay used to build them with a SQL expression and parse its JSON
 * text back: that was two thirds of the cost of reading an outbox batch.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/uuid.h"

#include "eventstore.h"

/* Metadata keys copied into headers of their own */
static const struct
{
	const char *key;
	const char *header;
}			es_ce_metadata[] = {
	{"correlation_id", "ce_correlationid"},
	{"causation_id", "ce_causationid"},
	{"traceparent", "ce_traceparent"},
};

/* A jsonb value as ->> gives it: strings unquoted, NULL for a JSON null */
static char *
EsJsonbValueAsText(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return NULL;
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	}
}

/* recorded_at as RFC 3339 in UTC with microseconds: 2026-11-22T13:53:32.912169Z */
static char *
EsRfc3339(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
					tm.tm_year, tm.tm_mon, tm.tm_mday,
					tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/*
 * Fill 'out' (room for ES_CE_MAX_HEADERS) with the event's headers, in the
 * current memory context; returns how many.  'source' NULL leaves out
 * ce_source, and metadata keys that are absent or JSON null are left out.
 */
int
EsCloudEventHeaders(const EsEventRow *ev, const char *source, EsHeader *out)
{
	int			n = 0;
	size_t		i;

	out[n].name = "ce_specversion";
	out[n++].value = "1.0";
	out[n].name = "ce_id";
	out[n++].value = DatumGetCString(DirectFunctionCall1(uuid_out, ev->event_id));
	out[n].name = "ce_type";
	out[n++].value = text_to_cstring(ev->event_type);
	if (source != NULL)
	{
		out[n].name = "ce_source";
		out[n++].value = (char *) source;
	}
	out[n].name = "ce_subject";
	out[n++].value = text_to_cstring(ev->stream_id);
	out[n].name = "ce_time";
	out[n++].value = EsRfc3339(ev->recorded_at);
	out[n].name = "content-type";
	out[n++].value = "application/json";
	out[n].name = "ce_sequence";
	out[n++].value = psprintf(INT64_FORMAT, ev->stream_version);
	out[n].name = "ce_position";
	out[n++].value = psprintf(INT64_FORMAT, ev->global_position);
	for (i = 0; i < lengthof(es_ce_metadata); i++)
	{
		JsonbValue	v;
		char	   *text;

		if (getKeyJsonValueFromContainer(&ev->metadata->root, es_ce_metadata[i].key,
										 strlen(es_ce_metadata[i].key), &v) == NULL ||
			(text = EsJsonbValueAsText(&v)) == NULL)
			continue;
		out[n].name = es_ce_metadata[i].header;
		out[n++].value = text;
	}
	out[n].name = "eventstore-metadata";
	out[n++].value = JsonbToCString(NULL, &ev->metadata->root, VARSIZE(ev->metadata));
	Assert(n <= ES_CE_MAX_HEADERS);
	return n;
}

/* Read an eventstore.events row into an EsEventRow */
static void
EsEventRowFromTuple(HeapTupleHeader row, EsEventRow *ev)
{
	static const char *const columns[] = {"event_id", "event_type", "stream_id",
	"recorded_at", "stream_version", "global_position", "metadata"};
	Datum		values[lengthof(columns)];
	size_t		i;

	for (i = 0; i < lengthof(columns); i++)
	{
		bool		isnull;

		values[i] = GetAttributeByName(row, columns[i], &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event column \"%s\" must not be null", columns[i])));
	}
	ev->event_id = values[0];
	ev->event_type = DatumGetTextPP(values[1]);
	ev->stream_id = DatumGetTextPP(values[2]);
	ev->recorded_at = DatumGetTimestampTz(values[3]);
	ev->stream_version = DatumGetInt64(values[4]);
	ev->global_position = DatumGetInt64(values[5]);
	ev->metadata = DatumGetJsonbP(values[6]);
}

PG_FUNCTION_INFO_V1(eventstore_cloudevent_headers);

/*
 * SQL: eventstore.cloudevent_headers(e eventstore.events, source text) ->
 * jsonb, the headers the relay sends with the event, for inspection
 */
Datum
eventstore_cloudevent_headers(PG_FUNCTION_ARGS)
{
	EsEventRow	ev;
	EsHeader	headers[ES_CE_MAX_HEADERS];
	JsonbParseState *state = NULL;
	JsonbValue *result;
	int			n,
				i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	EsEventRowFromTuple(PG_GETARG_HEAPTUPLEHEADER(0), &ev);
	n = EsCloudEventHeaders(&ev, PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
							headers);

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < n; i++)
	{
		JsonbValue	v;

		v.type = jbvString;
		v.val.string.val = (char *) headers[i].name;
		v.val.string.len = strlen(headers[i].name);
		(void) pushJsonbValue(&state, WJB_KEY, &v);
		v.val.string.val = headers[i].value;
		v.val.string.len = strlen(headers[i].value);
		(void) pushJsonbValue(&state, WJB_VALUE, &v);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}
