/*
 * sink.c
 *		The relay's sinks by id and by name, and what they share: the check
 *		of a sink name given by a user, and URLs scrubbed of their password
 *		before they are logged.
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "sink.h"

StaticAssertDecl(ES_NUM_SINKS == ES_RELAY_SINKS, "shared memory has statistics for every sink");

/* The sinks by id (see sink.h) */
const EsSinkRoutine *const es_sinks[ES_NUM_SINKS] = {
	[ES_SINK_KAFKA] = &EsKafkaSink,
	[ES_SINK_RABBITMQ] = &EsRabbitMQSink,
	[ES_SINK_NATS] = &EsNatsSink,
};

/* The names a user gives, by id (also for sinks not built in) */
static const char *const es_sink_names[ES_NUM_SINKS] = {
	[ES_SINK_KAFKA] = "kafka",
	[ES_SINK_RABBITMQ] = "rabbitmq",
	[ES_SINK_NATS] = "nats",
};

/* A sink's name in messages: Kafka, RabbitMQ, NATS */
const char *
EsSinkTitle(EsSinkId id)
{
	static const char *const titles[ES_NUM_SINKS] = {
		[ES_SINK_KAFKA] = "Kafka",
		[ES_SINK_RABBITMQ] = "RabbitMQ",
		[ES_SINK_NATS] = "NATS",
	};

	return titles[id];
}

/* The id of a sink's name; -1 if none */
int
EsSinkByName(const char *name)
{
	int			i;

	for (i = 0; i < ES_NUM_SINKS; i++)
		if (strcmp(es_sink_names[i], name) == 0)
			return i;
	return -1;
}

/* A sink's name */
const char *
EsSinkName(EsSinkId id)
{
	return es_sink_names[id];
}

/* Check a sink name given by a user; ERROR if unknown */
EsSinkId
EsCheckSinkName(const char *name)
{
	int			id = name != NULL ? EsSinkByName(name) : -1;

	if (id < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown sink \"%s\"", name ? name : "(null)"),
				 errhint("A sink is kafka, rabbitmq or nats.")));
	return (EsSinkId) id;
}

/*
 * The sink argument 'argno' of a function that takes one last (publish,
 * replay): Kafka when called through a signature without it (a schema
 * older than 0.5.0), an error when null or unknown
 */
EsSinkId
EsSinkArgument(FunctionCallInfo fcinfo, int argno)
{
	if (PG_NARGS() <= argno)
		return ES_SINK_KAFKA;
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("sink must not be null")));
	return EsCheckSinkName(text_to_cstring(PG_GETARG_TEXT_PP(argno)));
}

/*
 * A copy of a URL (or of several, separated by commas) with the password
 * of each replaced by "***": scheme://user:***@host...
 */
char *
EsScrubUrl(const char *url)
{
	StringInfoData out;
	const char *p = url;

	initStringInfo(&out);
	while (*p != '\0')
	{
		const char *end = strchr(p, ',');
		const char *auth = strstr(p, "://");
		const char *at;
		const char *colon;
		int			len = end ? (int) (end - p) : (int) strlen(p);

		auth = (auth != NULL && auth < p + len) ? auth + 3 : p;
		at = memchr(auth, '@', len - (auth - p));
		colon = at ? memchr(auth, ':', at - auth) : NULL;
		if (colon != NULL)
		{
			appendBinaryStringInfo(&out, p, colon + 1 - p);
			appendStringInfoString(&out, "***");
			appendBinaryStringInfo(&out, at, len - (at - p));
		}
		else
			appendBinaryStringInfo(&out, p, len);
		if (end == NULL)
			break;
		appendStringInfoChar(&out, ',');
		p = end + 1;
	}
	return out.data;
}
