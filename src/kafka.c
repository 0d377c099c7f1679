/*
 * kafka.c
 *		The relay's Kafka sink (sink.h): a librdkafka producer created from
 *		the eventstore.* settings, which takes messages one by one and
 *		reports what became of each as the broker answers.
 *
 * librdkafka runs threads of its own, which must never call into
 * PostgreSQL.  Delivery reports, errors and logs are all served from this
 * process's thread by rd_kafka_poll() (logs through log.queue), so the
 * callbacks below may use elog; the delivery report only records the
 * outcome in its message.  librdkafka writes a byte to a pipe when its
 * queue of reports stops being empty (rd_kafka_queue_io_event_enable): the
 * relay sleeps on that pipe and its latch together, so a report wakes it at
 * once.  Message data is copied by librdkafka (RD_KAFKA_MSG_F_COPY); only
 * the EsMessage opaque pointers outlive a produce call, and they stay valid
 * until the message is reported, or the producer destroyed.
 *
 * Order: the producer is idempotent (acks=all, at most 5 requests in flight,
 * retries that keep order), so the messages of one partition are written in
 * the order they were produced.  A message that times out while queued
 * would leave a gap that later messages of its key could jump; so queued
 * messages do not time out one by one (message.timeout.ms is set past our
 * own deadline): when eventstore.delivery_timeout passes, everything still
 * queued is purged at once, so no message of a partition can be sent after
 * an earlier one of the same partition failed that way.
 *
 * Secrets: values of eventstore.kafka_config may be passwords or private
 * paths, and librdkafka quotes values in its messages.  Every text of
 * librdkafka (configuration errors, rd_kafka_new's error, error and log
 * callbacks) has the configured values replaced by "***" before it is
 * logged.
 *
 * Shutdown: at process exit the producer is flushed for at most
 * min(eventstore.delivery_timeout, 5 s), then what is left is purged and
 * the producer destroyed; those messages stay in the outbox.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "eventstore.h"
#include "sink.h"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <unistd.h>

static rd_kafka_t *es_producer = NULL;

/* The pipe librdkafka writes to when reports wait to be served: {read, write} */
static int	es_report_pipe[2] = {-1, -1};

/* Set by a delivery report of a failure, cleared by EsKafkaTakeFailure() */
static bool es_failure_reported = false;

/* When the brokers were last probed while they seemed down */
static TimestampTz es_last_probe = 0;

/* The settings the producer was made with */
static char *es_started_brokers = NULL;
static char *es_started_config = NULL;
static int	es_started_timeout = 0;

/* Messages produced and not yet reported */
static int	es_pending = 0;

/* Set by the error callback when the producer can no longer be used */
static bool es_fatal = false;

/*
 * Whether the brokers cannot be reached: set when librdkafka reports all
 * brokers down or a batch failed only for that reason, cleared only by a
 * successful delivery
 */
static bool es_brokers_down = false;

/* The values of eventstore.kafka_config, scrubbed from librdkafka's texts */
static List *es_secrets = NIL;

/* The longest a shutdown waits for the broker */
#define ES_SHUTDOWN_FLUSH_MS 5000

/* How often, and how long, to ask brokers that seem down whether they are back */
#define ES_PROBE_INTERVAL_MS 1000
#define ES_PROBE_TIMEOUT_MS 200

/* The last broker-level error, so that each is logged once */
static rd_kafka_resp_err_t es_last_global_err = RD_KAFKA_RESP_ERR_NO_ERROR;

/* Delivery report: record the outcome in the message */
static void
EsDeliveryReport(rd_kafka_t *rk, const rd_kafka_message_t *rkmessage, void *opaque)
{
	EsMessage  *msg = (EsMessage *) rkmessage->_private;

	msg->err = rkmessage->err;
	msg->done = true;
	es_pending--;
	if (rkmessage->err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		es_brokers_down = false;
		es_last_global_err = RD_KAFKA_RESP_ERR_NO_ERROR;
	}
	else
		es_failure_reported = true;
}

/*
 * Copy 'text' into 'buf' (of 'size' bytes) with every configured value, and
 * 'also' if not NULL, replaced by "***"
 */
static const char *
EsScrub(const char *text, const char *also, char *buf, size_t size)
{
	size_t		used = 0;
	const char *p = text;

	while (*p != '\0' && used + 1 < size)
	{
		size_t		match = 0;
		ListCell   *lc;

		if (also != NULL && also[0] != '\0' && strncmp(p, also, strlen(also)) == 0)
			match = strlen(also);
		foreach(lc, es_secrets)
		{
			const char *secret = lfirst(lc);

			if (match == 0 && strncmp(p, secret, strlen(secret)) == 0)
				match = strlen(secret);
		}
		if (match > 0)
		{
			used += strlcpy(buf + used, "***", size - used);
			used = Min(used, size - 1);
			p += match;
		}
		else
			buf[used++] = *p++;
	}
	buf[used] = '\0';
	return buf;
}

/*
 * Remember a configured value for scrubbing.  Numbers, booleans and values
 * of fewer than 4 characters ("ssl", "all") are no secrets, and scrubbing
 * them would mangle every message that has them ("ssl.keystore.location");
 * they are still scrubbed from their own configuration error.
 */
static void
EsRememberSecret(const char *value)
{
	MemoryContext old;
	const char *c;

	if (strlen(value) < 4 || pg_strcasecmp(value, "true") == 0 ||
		pg_strcasecmp(value, "false") == 0)
		return;
	for (c = value; *c >= '0' && *c <= '9'; c++)
		;
	if (*c == '\0')
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	es_secrets = lappend(es_secrets, pstrdup(value));
	MemoryContextSwitchTo(old);
}

/* Broker-level errors: log each once; a fatal one retires the producer */
static void
EsErrorCallback(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	char		buf[1024];

	if (err == RD_KAFKA_RESP_ERR__FATAL)
		es_fatal = true;
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
	{
		es_brokers_down = true;
	}
	if (err == es_last_global_err)
		return;
	es_last_global_err = err;
	ereport(LOG,
			(errmsg("eventstore relay: Kafka error %s: %s",
					rd_kafka_err2name(err), EsScrub(reason, NULL, buf, sizeof(buf)))));
}

/*
 * librdkafka's own log lines, served from our thread through log.queue.
 * Warnings and worse go to the server log, except connection failures
 * ("FAIL"), which repeat while a broker is down and reach the error
 * callback anyway.
 */
static void
EsLogCallback(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	char		scrubbed[1024];

	ereport(level <= 4 && strcmp(fac, "FAIL") != 0 ? LOG : DEBUG1,
			(errmsg("eventstore relay: librdkafka %s: %s", fac,
					EsScrub(buf, NULL, scrubbed, sizeof(scrubbed)))));
}

/*
 * Set one producer property; the value is never logged (it may be a secret):
 * librdkafka's error text is logged with it scrubbed out
 */
static bool
EsConfSet(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		errstr[512];
	char		scrubbed[1024];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) == RD_KAFKA_CONF_OK)
		return true;
	ereport(LOG,
			(errmsg("eventstore relay: invalid Kafka property \"%s\"", name),
			 errdetail("librdkafka: %s", EsScrub(errstr, value, scrubbed, sizeof(scrubbed)))));
	return false;
}

/* Apply one "key=value" entry of eventstore.kafka_config */
static bool
EsConfApplyPair(rd_kafka_conf_t *conf, char *pair)
{
	char	   *eq = strchr(pair, '=');
	char	   *name = pair;
	char	   *end;
	char	   *value;

	while (*name == ' ' || *name == '\t' || *name == '\n' || *name == '\r')
		name++;
	if (*name == '\0' || *name == '#')
		return true;
	if (eq == NULL)
	{
		ereport(LOG,
				(errmsg("eventstore relay: eventstore.kafka_config has an entry without \"=\"")));
		return false;
	}
	*eq = '\0';
	for (end = eq - 1; end > name && (*end == ' ' || *end == '\t'); end--)
		*end = '\0';
	for (value = eq + 1; *value == ' ' || *value == '\t'; value++)
		;
	for (end = value + strlen(value); end > value &&
		 (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r' || end[-1] == '\n'); end--)
		end[-1] = '\0';
	EsRememberSecret(value);
	return EsConfSet(conf, name, value);
}

/*
 * Apply eventstore.kafka_config: key=value pairs separated by semicolons,
 * or "@/path/file" to read them from a file, one per line.  PostgreSQL logs
 * the new value of a setting changed by a reload, so secrets belong in the
 * file: then only its path is ever logged.
 */
static bool
EsConfApplyExtra(rd_kafka_conf_t *conf, const char *config)
{
	char	   *copy;
	char	   *pair;
	char	   *save = NULL;
	const char *sep = ";";
	bool		ok = true;

	if (config[0] == '@')
	{
		FILE	   *file = AllocateFile(config + 1, "r");
		StringInfoData buf;
		char		line[4096];

		if (file == NULL)
		{
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("eventstore relay: could not open Kafka configuration file \"%s\": %m",
							config + 1)));
			return false;
		}
		initStringInfo(&buf);
		while (fgets(line, sizeof(line), file) != NULL)
			appendStringInfoString(&buf, line);
		FreeFile(file);
		copy = buf.data;
		sep = "\n";
	}
	else
		copy = pstrdup(config);

	for (pair = strtok_r(copy, sep, &save); pair != NULL; pair = strtok_r(NULL, sep, &save))
		ok = EsConfApplyPair(conf, pair) && ok;
	pfree(copy);
	return ok;
}

/*
 * Have librdkafka write to a pipe of ours whenever its main queue (delivery
 * reports, errors, logs) stops being empty; without a pipe the relay still
 * serves the queue, only later (at its next wake-up)
 */
static void
EsReportPipeOpen(void)
{
	rd_kafka_queue_t *queue;

	if (es_report_pipe[0] < 0 && !EsOpenSignalPipe(es_report_pipe, "delivery reports"))
		return;
	queue = rd_kafka_queue_get_main(es_producer);
	rd_kafka_queue_io_event_enable(queue, es_report_pipe[1], "r", 1);
	rd_kafka_queue_destroy(queue);
}

/* The pipe to sleep on for delivery reports, PGINVALID_SOCKET if none */
static pgsocket
EsKafkaReportSocket(void)
{
	return es_producer != NULL && es_report_pipe[0] >= 0 ? es_report_pipe[0] : PGINVALID_SOCKET;
}


/* Whether a producer exists */
static bool
EsKafkaRunning(void)
{
	return es_producer != NULL;
}

/* Whether the producer hit a fatal error and must be made anew */
static bool
EsKafkaFailed(void)
{
	return es_fatal;
}

/* Whether the settings the producer depends on changed since it started */
static bool
EsKafkaSettingsChanged(void)
{
	return es_producer != NULL &&
		(strcmp(es_started_brokers, es_kafka_brokers) != 0 ||
		 strcmp(es_started_config, es_kafka_config) != 0 ||
		 es_started_timeout != es_delivery_timeout);
}

/* Create the producer from the settings; false (logged) if they are wrong */
static bool
EsKafkaStart(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];
	char		scrubbed[1024];
	char		timeout[32];
	bool		ok;

	Assert(es_producer == NULL);
	list_free_deep(es_secrets);
	es_secrets = NIL;
	/* Our queued messages never time out before we purge them */
	snprintf(timeout, sizeof(timeout), "%d", es_delivery_timeout + 60000);
	ok = EsConfSet(conf, "bootstrap.servers", es_kafka_brokers) &&
		EsConfSet(conf, "enable.idempotence", "true") &&
		EsConfSet(conf, "acks", "all") &&
		EsConfSet(conf, "partitioner", "murmur2_random") &&
		EsConfSet(conf, "message.timeout.ms", timeout) &&
		EsConfSet(conf, "linger.ms", "1") &&
		EsConfSet(conf, "client.id", "eventstore-relay") &&
		EsConfSet(conf, "log.queue", "true");
	ok = ok && EsConfApplyExtra(conf, es_kafka_config);
	if (!ok)
	{
		rd_kafka_conf_destroy(conf);
		return false;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, EsDeliveryReport);
	rd_kafka_conf_set_error_cb(conf, EsErrorCallback);
	rd_kafka_conf_set_log_cb(conf, EsLogCallback);

	es_producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (es_producer == NULL)
	{
		ereport(LOG,
				(errmsg("eventstore relay: could not create the Kafka producer: %s",
						EsScrub(errstr, NULL, scrubbed, sizeof(scrubbed)))));
		return false;
	}
	rd_kafka_set_log_queue(es_producer, NULL);
	EsReportPipeOpen();

	es_started_brokers = MemoryContextStrdup(TopMemoryContext, es_kafka_brokers);
	es_started_config = MemoryContextStrdup(TopMemoryContext, es_kafka_config);
	es_started_timeout = es_delivery_timeout;
	es_fatal = false;
	es_brokers_down = false;
	es_last_global_err = RD_KAFKA_RESP_ERR_NO_ERROR;
	ereport(LOG,
			(errmsg("eventstore relay: producing to %s", es_kafka_brokers)));
	return true;
}

/*
 * Destroy the producer; messages still queued in it are dropped.  Their
 * delivery reports are served first (bounded): a message still unreported
 * after that is left as it was (not done), for the caller to deal with; no
 * report reaches it after this returns.
 */
static void
EsKafkaStop(void)
{
	int			i;

	if (es_producer == NULL)
		return;
	rd_kafka_purge(es_producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	for (i = 0; i < 100 && es_pending > 0; i++)
		rd_kafka_poll(es_producer, 10);
	rd_kafka_destroy(es_producer);
	es_producer = NULL;
	es_pending = 0;
	es_failure_reported = false;
	pfree(es_started_brokers);
	pfree(es_started_config);
}

/*
 * Process exit (before_shmem_exit): give the broker a bounded time to
 * acknowledge what is in flight, then purge and destroy the producer.  What
 * was not acknowledged stays in the outbox and is sent again after a
 * restart; acknowledged messages of an unrecorded batch too (at-least-once).
 */
static void
EsKafkaAtExit(void)
{
	int			left;

	if (es_producer == NULL)
		return;
	/* Without a postmaster nothing waits for us: leave at once */
	if (PostmasterIsAlive())
		(void) rd_kafka_flush(es_producer, Min(es_delivery_timeout, ES_SHUTDOWN_FLUSH_MS));
	left = es_pending;
	if (left > 0)
		ereport(LOG,
				(errmsg_plural("eventstore relay: %d Kafka message was left unacknowledged at shutdown",
							   "eventstore relay: %d Kafka messages were left unacknowledged at shutdown",
							   left, left),
				 errdetail("They stay in eventstore.outbox and are sent when the relay runs again.")));
	EsKafkaStop();
}

/* Whether the brokers are known to be unreachable (see es_brokers_down) */
static bool
EsKafkaBrokersDown(void)
{
	return es_brokers_down;
}

/* A batch failed only because the brokers could not be reached */
static void
EsKafkaSetBrokersDown(void)
{
	es_brokers_down = true;
}

/* How many messages were produced and not yet reported */
static int
EsKafkaInFlight(void)
{
	return es_pending;
}

/* Whether a delivery error will never go away by retrying */
static bool
EsKafkaIsPermanent(int err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
		case RD_KAFKA_RESP_ERR_INVALID_MSG:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
		case RD_KAFKA_RESP_ERR__BAD_MSG:
			return true;
		default:
			return false;
	}
}

/* The message's headers as librdkafka's */
static rd_kafka_headers_t *
EsHeaders(const EsMessage *msg)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(msg->nheaders);
	int			i;

	for (i = 0; i < msg->nheaders; i++)
		rd_kafka_header_add(hdrs, msg->headers[i].name, -1, msg->headers[i].value, -1);
	return hdrs;
}

/* Whether an error says the brokers cannot be reached */
static bool
EsKafkaIsBrokerDown(int err)
{
	return err == RD_KAFKA_RESP_ERR__TRANSPORT ||
		err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ||
		err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT ||
		err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
		err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
		err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT;
}

/*
 * Serve what librdkafka queued for us: delivery reports, errors, logs;
 * true if a delivery failed.  The pipe is emptied first, so that a report
 * queued meanwhile writes to it again and wakes the next sleep.
 */
static bool
EsKafkaServe(void)
{
	char		buf[64];
	bool		failed;

	if (es_producer == NULL)
		return false;
	if (es_report_pipe[0] >= 0)
		while (read(es_report_pipe[0], buf, sizeof(buf)) > 0)
			;
	rd_kafka_poll(es_producer, 0);
	failed = es_failure_reported;
	es_failure_reported = false;
	return failed;
}

/* Purge the messages queued and not yet sent (they fail with _PURGE_QUEUE) */
static void
EsKafkaPurgeQueue(void)
{
	if (es_producer != NULL)
		rd_kafka_purge(es_producer, RD_KAFKA_PURGE_F_QUEUE);
}

/*
 * While the brokers seem down and nothing is in flight to tell otherwise,
 * ask one of them for metadata about once a second (waiting at most
 * ES_PROBE_TIMEOUT_MS): an answer means they are reachable again, and the
 * state leaves broker_down even while there is nothing to send
 */
static void
EsKafkaProbe(void)
{
	const struct rd_kafka_metadata *md = NULL;
	TimestampTz now = GetCurrentTimestamp();

	if (es_producer == NULL || !es_brokers_down || es_pending > 0 ||
		!TimestampDifferenceExceeds(es_last_probe, now, ES_PROBE_INTERVAL_MS))
		return;
	es_last_probe = now;
	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	if (rd_kafka_metadata(es_producer, 0, NULL, &md, ES_PROBE_TIMEOUT_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
		es_brokers_down = false;
	pgstat_report_wait_end();
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
}

/*
 * Hand one message to librdkafka; a local refusal is its outcome (done).
 * False, and nothing done, when librdkafka's queue is full: the caller
 * tries again once reports made room, without blocking meanwhile (the
 * delivery timeout and its purge must go on).
 */
static bool
EsKafkaProduce(EsMessage *msg)
{
	rd_kafka_headers_t *hdrs = EsHeaders(msg);
	rd_kafka_resp_err_t err;

	err = rd_kafka_producev(es_producer,
							RD_KAFKA_V_TOPIC(msg->topic),
							RD_KAFKA_V_KEY(msg->key, msg->key ? strlen(msg->key) : 0),
							RD_KAFKA_V_VALUE(msg->value, msg->value ? strlen(msg->value) : 0),
							RD_KAFKA_V_HEADERS(hdrs),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_OPAQUE(msg),
							RD_KAFKA_V_END);
	if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
	{
		rd_kafka_headers_destroy(hdrs);
		return false;
	}
	msg->produced = true;
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		es_pending++;
	else
	{
		rd_kafka_headers_destroy(hdrs);
		msg->err = err;
		msg->done = true;
	}
	return true;
}

/* A Kafka error as last_error shows it: its name, then its text */
static char *
EsKafkaErrorText(int err)
{
	return psprintf("%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t) err),
					rd_kafka_err2str((rd_kafka_resp_err_t) err));
}

/* Whether eventstore.kafka_brokers is set */
static bool
EsKafkaConfigured(void)
{
	return es_kafka_brokers[0] != '\0';
}

/* The Kafka sink */
const EsSinkRoutine EsKafkaSink = {
	.name = "kafka",
	.configured = EsKafkaConfigured,
	.settings_changed = EsKafkaSettingsChanged,
	.start = EsKafkaStart,
	.stop = EsKafkaStop,
	.running = EsKafkaRunning,
	.failed = EsKafkaFailed,
	.send = EsKafkaProduce,
	.serve = EsKafkaServe,
	.purge = EsKafkaPurgeQueue,
	.probe = EsKafkaProbe,
	.socket = EsKafkaReportSocket,
	.in_flight = EsKafkaInFlight,
	.is_permanent = EsKafkaIsPermanent,
	.is_unreachable = EsKafkaIsBrokerDown,
	.error_text = EsKafkaErrorText,
	.lost_err = RD_KAFKA_RESP_ERR__PURGE_INFLIGHT,
	.down = EsKafkaBrokersDown,
	.set_down = EsKafkaSetBrokersDown,
	.at_exit = EsKafkaAtExit,
};
