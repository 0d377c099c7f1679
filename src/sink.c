/*
 * sink.c
 *		The relay's sinks by id and by name, and what they share: the check
 *		of a sink name given by a user, and URLs scrubbed of their password
 *		before they are logged.
 */
#include "postgres.h"

#include "lib/stringinfo.h"

#include "sink.h"

/* The sinks by id (see sink.h) */
const EsSinkRoutine *const es_sinks[ES_NUM_SINKS] = {
	[ES_SINK_KAFKA] = &EsKafkaSink,
	[ES_SINK_RABBITMQ] = NULL,
	[ES_SINK_NATS] = &EsNatsSink,
};

/* The names a user gives, by id (also for sinks not built in) */
static const char *const es_sink_names[ES_NUM_SINKS] = {
	[ES_SINK_KAFKA] = "kafka",
	[ES_SINK_RABBITMQ] = "rabbitmq",
	[ES_SINK_NATS] = "nats",
};

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
