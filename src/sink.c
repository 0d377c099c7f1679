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

/* Whether 'p' starts a URL: a scheme (letters, digits, + - .) then "://" */
static bool
EsStartsUrl(const char *p)
{
	const char *q = p;

	while (isalnum((unsigned char) *q) || *q == '+' || *q == '-' || *q == '.')
		q++;
	return q > p && strncmp(q, "://", 3) == 0;
}

/*
 * A copy of a URL, or of several separated by commas (a comma counts as a
 * separator only before another scheme://), with the secret of each
 * replaced by "***": the password of user:password@, or the whole user
 * part when it has no password (a token, as NATS takes it).  The user part
 * ends at the last '@' before the path: a password may hold '@' and ','.
 */
char *
EsScrubUrl(const char *url)
{
	StringInfoData out;
	const char *p = url;

	/* @file: a file name, not a URL */
	if (url[0] == '@')
		return pstrdup(url);
	initStringInfo(&out);
	while (*p != '\0')
	{
		const char *end = p;
		const char *auth = strstr(p, "://");
		const char *path;
		const char *at = NULL;
		const char *q;

		/* This URL ends at a comma before the next scheme://, or at the end */
		while (*end != '\0' && !(*end == ',' && EsStartsUrl(end + 1)))
			end++;
		auth = (auth != NULL && auth < end) ? auth + 3 : p;
		path = auth;
		while (path < end && *path != '/')
			path++;
		for (q = auth; q < path; q++)
			if (*q == '@')
				at = q;
		if (at != NULL)
		{
			const char *colon = memchr(auth, ':', at - auth);

			appendBinaryStringInfo(&out, p, auth - p);
			if (colon != NULL)
				appendBinaryStringInfo(&out, auth, colon + 1 - auth);
			appendStringInfoString(&out, "***");
			appendBinaryStringInfo(&out, at, end - at);
		}
		else
			appendBinaryStringInfo(&out, p, end - p);
		if (*end == '\0')
			break;
		appendStringInfoChar(&out, ',');
		p = end + 1;
	}
	return out.data;
}
