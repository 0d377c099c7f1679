/*
 * cloudevents.c
 *		The Kafka headers of a routed event (the CloudEvents Kafka binding,
 *		binary content mode), built in one place: by the relay straight from
 *		the event's columns, and by eventstore.cloudevent_headers() as jsonb;
 *		and the events' source (ce_source), the setting or a default built
 *		from the database name.
 *
 * The relay used to build them with a SQL expression and parse its JSON
 * text back: that was two thirds of the cost of reading an outbox batch.
 *
 * ce_sequence is the event's global position, zero-padded to 19 digits: the
 * CloudEvents sequence extension compares values as strings, and its
 * ordering domain is the source, which is one database, so the one sequence
 * over all events of the store is the one that fits (the stream version
 * restarts at 1 in every stream; it travels as ce_streamversion).
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
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

/*
 * recorded_at as RFC 3339 in UTC with microseconds: 2026-11-22T13:53:32.912169Z.
 * RFC 3339 has four-digit years, so only years 0000 (1 BC) to 9999 fit.
 */
static char *
EsRfc3339(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0 ||
		tm.tm_year < 0 || tm.tm_year > 9999)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("recorded_at is out of range for a CloudEvents time"),
				 errdetail("ce_time is an RFC 3339 timestamp: years 0000 to 9999, not infinity.")));
	return psprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
					tm.tm_year, tm.tm_mon, tm.tm_mday,
					tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
}

/* Whether 'c' is an RFC 3986 unreserved character */
static bool
EsUriUnreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/*
 * Whether 'source' is made of the characters an RFC 3986 URI-reference may
 * hold: unreserved, reserved (gen-delims and sub-delims), and '%' followed
 * by two hex digits.  Spaces, control characters, other ASCII (such as
 * '"', '<', '\\', '{') and non-ASCII bytes are refused: a URI carries them
 * percent-encoded.  This checks characters, not the full grammar.
 */
bool
EsCloudEventsSourceIsValid(const char *source)
{
	const unsigned char *c;

	for (c = (const unsigned char *) source; *c; c++)
	{
		if (EsUriUnreserved(*c) || strchr(":/?#[]@!$&'()*+,;=", *c) != NULL)
			continue;
		if (*c == '%' && isxdigit(c[1]) && isxdigit(c[2]))
		{
			c += 2;
			continue;
		}
		return false;
	}
	return true;
}

/*
 * ce_source: eventstore.cloudevents_source, or by default
 * /eventstore/<database> with the database name in UTF-8 and every byte
 * outside RFC 3986's unreserved characters percent-encoded, so that any
 * name gives a valid URI-reference ("my db" is /eventstore/my%20db).  Needs
 * a transaction (it reads the catalog).
 */
char *
EsCloudEventsSource(void)
{
	char	   *name;
	const unsigned char *c;
	StringInfoData buf;

	if (es_cloudevents_source[0] != '\0')
		return pstrdup(es_cloudevents_source);
	name = get_database_name(MyDatabaseId);
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_DATABASE),
				 errmsg("database with OID %u does not exist", MyDatabaseId)));
	/* SQL_ASCII names have no known encoding: their bytes are encoded as they are */
	if (GetDatabaseEncoding() != PG_SQL_ASCII)
		name = pg_server_to_any(name, strlen(name), PG_UTF8);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "/eventstore/");
	for (c = (const unsigned char *) name; *c; c++)
	{
		if (EsUriUnreserved(*c))
			appendStringInfoChar(&buf, (char) *c);
		else
			appendStringInfo(&buf, "%%%02X", *c);
	}
	return buf.data;
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
	out[n++].value = psprintf("%019" INT64_MODIFIER "d", ev->global_position);
	out[n].name = "ce_streamversion";
	out[n++].value = psprintf(INT64_FORMAT, ev->stream_version);
	for (i = 0; i < lengthof(es_ce_metadata); i++)
	{
		JsonbValue	v;
		char	   *text;

		/* A lookup by key is only defined on an object */
		if (!JsonContainerIsObject(&ev->metadata->root) ||
			getKeyJsonValueFromContainer(&ev->metadata->root, es_ce_metadata[i].key,
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

/*
 * Read an eventstore.events row into an EsEventRow.  The row may be built by
 * hand (ROW(...)::eventstore.events), so nothing the table's constraints
 * would guarantee is taken for granted: every column used must be non-NULL,
 * metadata a JSON object, event_type and stream_id non-empty, stream_version
 * and global_position positive.
 */
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

	if (!JB_ROOT_IS_OBJECT(ev->metadata))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event column \"metadata\" must be a JSON object")));
	if (VARSIZE_ANY_EXHDR(ev->event_type) == 0 || VARSIZE_ANY_EXHDR(ev->stream_id) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event column \"%s\" must not be empty",
						VARSIZE_ANY_EXHDR(ev->event_type) == 0 ? "event_type" : "stream_id")));
	if (ev->stream_version <= 0 || ev->global_position <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event column \"%s\" must be positive: " INT64_FORMAT,
						ev->stream_version <= 0 ? "stream_version" : "global_position",
						ev->stream_version <= 0 ? ev->stream_version : ev->global_position)));
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
	char	   *source = NULL;
	int			n,
				i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	EsEventRowFromTuple(PG_GETARG_HEAPTUPLEHEADER(0), &ev);
	if (!PG_ARGISNULL(1))
	{
		source = text_to_cstring(PG_GETARG_TEXT_PP(1));
		if (source[0] == '\0' || !EsCloudEventsSourceIsValid(source))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid CloudEvents source \"%s\"", source),
					 errdetail("A source is a non-empty URI-reference: no spaces, control characters or non-ASCII characters, which are percent-encoded (%%20)."),
					 errhint("Pass NULL to leave ce_source out.")));
	}
	n = EsCloudEventHeaders(&ev, source, headers);

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
