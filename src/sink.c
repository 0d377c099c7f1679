/*
 * sink.c
 *		The relay's sinks by id and by name, and what they share: the check
 *		of a sink name given by a user, settings read from "@/path/file",
 *		and URLs scrubbed of their secrets before they are logged.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "storage/fd.h"
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
 * A copy of a URL, or of a list of URLs, fit for the log: everything
 * between the first "://" and the last '@' (user names, passwords, tokens,
 * whatever characters they hold) replaced by "***".  An "@/path/file"
 * setting, a file name, is kept.
 */
char *
EsScrubUrl(const char *url)
{
	const char *at = strrchr(url, '@');
	const char *start;

	if (url[0] == '@' || at == NULL)
		return pstrdup(url);
	start = strstr(url, "://");
	start = (start != NULL && start < at) ? start + 3 : url;
	return psprintf("%.*s***%s", (int) (start - url), url, at);
}

/* The largest file an "@/path/file" setting may name */
#define ES_SETTING_FILE_MAX (64 * 1024)

/*
 * A setting that may be "@/path/file": itself, or the file's content,
 * trimmed; NULL, logged ('what' names the setting), if the file cannot be
 * read, is larger than 64 kB or holds a NUL byte
 */
char *
EsReadSettingFile(const char *setting, const char *what)
{
	FILE	   *file;
	StringInfoData buf;
	char		chunk[1024];
	size_t		n;
	int			start;
	struct stat st;

	if (setting[0] != '@')
		return pstrdup(setting);
	/* A FIFO would block the open, a device never end */
	if (stat(setting + 1, &st) == 0 && !S_ISREG(st.st_mode))
	{
		ereport(LOG,
				(errmsg("eventstore relay: the file of %s \"%s\" is not a regular file",
						what, setting + 1)));
		return NULL;
	}
	file = AllocateFile(setting + 1, "r");
	if (file == NULL)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("eventstore relay: could not open the file of %s \"%s\": %m",
						what, setting + 1)));
		return NULL;
	}
	initStringInfo(&buf);
	while (buf.len <= ES_SETTING_FILE_MAX &&
		   (n = fread(chunk, 1, sizeof(chunk), file)) > 0)
		appendBinaryStringInfo(&buf, chunk, n);
	FreeFile(file);
	if (buf.len > ES_SETTING_FILE_MAX || strlen(buf.data) != (size_t) buf.len)
	{
		ereport(LOG,
				(errmsg("eventstore relay: the file of %s \"%s\" is not a text of at most 64 kB",
						what, setting + 1)));
		pfree(buf.data);
		return NULL;
	}
	while (buf.len > 0 && strchr(" \t\r\n", buf.data[buf.len - 1]) != NULL)
		buf.data[--buf.len] = '\0';
	start = strspn(buf.data, " \t\r\n");
	return pstrdup(buf.data + start);
}

/*
 * Open a pipe whose both ends do not block, for a sink's client to signal
 * the relay; false, logged ('what' names its use), if it cannot be made
 */
bool
EsOpenSignalPipe(int fds[2], const char *what)
{
	if (pipe(fds) == 0 &&
		fcntl(fds[0], F_SETFL, O_NONBLOCK) == 0 &&
		fcntl(fds[1], F_SETFL, O_NONBLOCK) == 0)
		return true;
	ereport(LOG,
			(errmsg("eventstore relay: could not create a pipe for %s: %m", what)));
	if (fds[0] >= 0)
		close(fds[0]);
	if (fds[1] >= 0)
		close(fds[1]);
	fds[0] = fds[1] = -1;
	return false;
}
