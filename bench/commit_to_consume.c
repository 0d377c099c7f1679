/*
 * commit_to_consume.c
 *		Latency from an event's commit in PostgreSQL to its receipt by a
 *		Kafka consumer, under a steady load of one-event transactions.
 *
 *		commit_to_consume --conninfo STR --brokers LIST --topic T --category C
 *			[--rate 1000] [--seconds 30] [--count N] [--connections 4]
 *			[--calibrate | --cold]
 *
 * Appends rate * seconds events (or --count) on a fixed schedule, event i to the new
 * stream "<category>-<run>-<i>", spread over <connections> connections; the
 * relay sends each to topic T keyed by its stream id (C must be routed to T).
 * A consumer assigned to all of T's partitions from their beginning (so that
 * none can miss a message while its end offset is still being looked up)
 * notes when each key of this run arrives and skips every other key.  Warm-up events ("<category>-<run>-warmup-<k>") first prove
 * that the consumer and the relay are running.  --calibrate needs no
 * database: it produces the same keys straight to T with the relay's
 * producer settings, which measures the broker's and the consumer's floor.
 * --cold produces the warm-up events that way too, so that the relay sees
 * T for the first time with the first event of the load: its first
 * messages to a topic its producer has not seen.  Prints one line:
 *
 *		sent=N received=R missing=M rate=ACHIEVED p50_ms=X p99_ms=X max_ms=X
 *		lag_max_ms=X negative=K first_ms=X
 *
 * where first is the latency of the first event sent (-1 if it is missing),
 * lag is how late a send started and negative counts events received
 * before their commit returned.  Exits 0 when none is missing, 1 when some
 * are or on an error, 2 on misuse.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#define BENCH_PROGRAM "commit_to_consume"
#include "bench_util.h"

typedef struct LoadThread
{
	int			k;				/* sends the events i with i % connections == k */
	PGconn	   *conn;			/* NULL with --calibrate */
	int64_t		lag;			/* largest lateness of a send, ns */
	pthread_t	thread;
} LoadThread;

static const char *conninfo, *brokers, *topic, *category;
static int	rate = 1000, seconds = 30, count = 0, connections = 4, calibrate = 0, cold = 0;
static char prefix[256];		/* "<category>-<run>-" */
static long n_events;
static int64_t start_ns;
static int64_t *t_sched, *t_commit, *t_recv;
static rd_kafka_t *producer;	/* --calibrate and --cold only */

/* Shared with the consumer thread, under lock */
static long stop_consumer = 0, warmup_seen = 0, received = 0;

/* Set one librdkafka property or exit 1 */
static void
conf_set(rd_kafka_conf_t *conf, const char *name, const char *value)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		die("%s: %s\n", name, errstr);
}

/* The bench's own producer: report a failed delivery (that event will be missing) */
static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	(void) rk;
	(void) opaque;
	if (msg->err)
		fprintf(stderr, "commit_to_consume: delivery failed: %s\n", rd_kafka_err2str(msg->err));
}

/* Connect and prepare the append, or exit 1 */
static PGconn *
db_connect(void)
{
	PGconn	   *conn = PQconnectdb(conninfo);
	PGresult   *res;

	if (PQstatus(conn) != CONNECTION_OK)
		die("%s", PQerrorMessage(conn));
	res = PQprepare(conn, "append", "SELECT eventstore.append($1, 0, $2::jsonb)", 2, NULL);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die("%s", PQerrorMessage(conn));
	PQclear(res);
	return conn;
}

/*
 * Append (with --calibrate: produce) event i keyed prefix + suffix; returns
 * the time it committed (was handed to librdkafka)
 */
static int64_t
send_event(PGconn *conn, const char *suffix, long i)
{
	char		key[512],
				value[128];
	const char *params[2] = {key, value};
	PGresult   *res;
	rd_kafka_resp_err_t err;
	int64_t		done;

	snprintf(key, sizeof(key), "%s%s", prefix, suffix);
	if (conn != NULL)
	{
		snprintf(value, sizeof(value), "{\"type\": \"Ping\", \"data\": {\"i\": %ld}}", i);
		res = PQexecPrepared(conn, "append", 2, params, NULL, NULL, 0);
		done = now_ns();
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			die("%s", PQerrorMessage(conn));
		PQclear(res);
		return done;
	}
	snprintf(value, sizeof(value), "{\"i\": %ld}", i);
	err = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic),
							RD_KAFKA_V_KEY(key, strlen(key)),
							RD_KAFKA_V_VALUE(value, strlen(value)),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	done = now_ns();
	if (err)
		die("produce: %s\n", rd_kafka_err2str(err));
	rd_kafka_poll(producer, 0);	/* serve delivery reports */
	return done;
}

/* Note the receipt of one message if its key is one of ours */
static void
consume_one(const rd_kafka_message_t *msg, int64_t now)
{
	char		key[512],
			   *end;
	size_t		plen = strlen(prefix);
	long		i;

	if (msg->key == NULL || msg->key_len >= sizeof(key) || msg->key_len <= plen ||
		memcmp(msg->key, prefix, plen) != 0)
		return;
	memcpy(key, msg->key, msg->key_len);
	key[msg->key_len] = '\0';
	pthread_mutex_lock(&lock);
	if (strncmp(key + plen, "warmup-", 7) == 0)
		warmup_seen = 1;
	else if ((i = strtol(key + plen, &end, 10)) >= 0 && i < n_events &&
			 *end == '\0' && t_recv[i] == 0)
	{
		t_recv[i] = now;		/* the first copy only */
		received++;
	}
	pthread_mutex_unlock(&lock);
}

/* The consumer thread: poll until told to stop */
static void *
consumer_main(void *arg)
{
	rd_kafka_t *rk = arg;
	rd_kafka_message_t *msg;

	while (!shared(&stop_consumer))
	{
		if ((msg = rd_kafka_consumer_poll(rk, 5)) == NULL)
			continue;
		if (msg->err)
			fprintf(stderr, "commit_to_consume: consumer: %s\n",
					rd_kafka_message_errstr(msg));
		else
			consume_one(msg, now_ns());
		rd_kafka_message_destroy(msg);
	}
	return NULL;
}

/* Create the consumer and assign it all of the topic's partitions at the end */
static rd_kafka_t *
consumer_start(const char *run)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *parts;
	const struct rd_kafka_metadata *md;
	rd_kafka_resp_err_t err;
	rd_kafka_topic_t *rkt;
	rd_kafka_t *rk;
	char		errstr[512];
	int64_t		deadline = now_ns() + 10 * NS_PER_SEC;
	int			p;

	snprintf(errstr, sizeof(errstr), "eventstore-bench-%s", run);
	conf_set(conf, "group.id", errstr);
	conf_set(conf, "bootstrap.servers", brokers);
	conf_set(conf, "enable.auto.commit", "false");
	conf_set(conf, "enable.partition.eof", "false");
	conf_set(conf, "fetch.wait.max.ms", "1");	/* the mock may hold a fetch */
	conf_set(conf, "fetch.min.bytes", "1");
	if ((rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr))) == NULL)
		die("%s\n", errstr);
	rkt = rd_kafka_topic_new(rk, topic, NULL);
	/* The topic was created beforehand, but metadata may lag a little */
	while ((err = rd_kafka_metadata(rk, 0, rkt, &md, 1000)) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		   md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0)
	{
		if (!err)
		{
			err = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
			rd_kafka_metadata_destroy(md);
		}
		if (now_ns() > deadline)
			die("no metadata for topic %s: %s\n", topic, rd_kafka_err2str(err));
		usleep(100 * 1000);
	}
	parts = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
	for (p = 0; p < md->topics[0].partition_cnt; p++)
		rd_kafka_topic_partition_list_add(parts, topic, md->topics[0].partitions[p].id);
	for (p = 0; p < parts->cnt; p++)
		parts->elems[p].offset = RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	if ((err = rd_kafka_assign(rk, parts)) != RD_KAFKA_RESP_ERR_NO_ERROR)
		die("assign: %s\n", rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(parts);
	return rk;
}

/* Send events until the consumer receives one of them, or exit 1 after 15 s */
static void
warm_up(PGconn *conn)
{
	int64_t		deadline = now_ns() + 15 * NS_PER_SEC;
	char		suffix[64];
	long		k;

	for (k = 0; !shared(&warmup_seen); k++)
	{
		if (now_ns() > deadline)
			die("no warm-up event arrived in 15 s (is %s routed to %s, the relay running?)\n",
				category, topic);
		snprintf(suffix, sizeof(suffix), "warmup-%ld", k);
		(void) send_event(conn, suffix, k);
		usleep(200 * 1000);
	}
}

/* A load thread: send its share of the events on schedule */
static void *
load_main(void *arg)
{
	LoadThread *lt = arg;
	char		suffix[32];
	long		i;

	for (i = lt->k; i < n_events; i += connections)
	{
		int64_t		sched = start_ns + (int64_t) ((double) i * NS_PER_SEC / rate);
		struct timespec ts = {sched / NS_PER_SEC, sched % NS_PER_SEC};
		int64_t		late;

		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		t_sched[i] = sched;
		late = now_ns() - sched;
		lt->lag = late > lt->lag ? late : lt->lag;
		snprintf(suffix, sizeof(suffix), "%ld", i);
		t_commit[i] = send_event(lt->conn, suffix, i);
	}
	return NULL;
}

/* The options that take a value: a string, or an integer from 1 to 10^6 */
static const struct
{
	const char *name;
	const char **str;
	int		   *num;
}			options[] = {
	{"--conninfo", &conninfo, NULL}, {"--brokers", &brokers, NULL},
	{"--topic", &topic, NULL}, {"--category", &category, NULL},
	{"--rate", NULL, &rate}, {"--seconds", NULL, &seconds},
	{"--count", NULL, &count}, {"--connections", NULL, &connections},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

/* Parse the command line; false on misuse */
static int
parse_args(int argc, char **argv)
{
	char	   *end;
	size_t		o;
	long		v;
	int			a;

	for (a = 1; a < argc; a++)
	{
		if (strcmp(argv[a], "--calibrate") == 0)
		{
			calibrate = 1;
			continue;
		}
		if (strcmp(argv[a], "--cold") == 0)
		{
			cold = 1;
			continue;
		}
		for (o = 0; o < NOPTIONS && strcmp(argv[a], options[o].name) != 0; o++)
			;
		if (o == NOPTIONS || ++a == argc)
			return 0;
		if (options[o].str != NULL)
			*options[o].str = argv[a];
		else if ((v = strtol(argv[a], &end, 10)) >= 1 && v <= 1000000 && *end == '\0')
			*options[o].num = (int) v;
		else
			return 0;
	}
	return brokers && topic && category && strlen(category) < 128 && (conninfo || calibrate) &&
		!(calibrate && cold);
}

int
main(int argc, char **argv)
{
	char		run[64],
				errstr[512];
	rd_kafka_t *consumer;
	pthread_t	consumer_thread;
	LoadThread *threads;
	PGconn	   *warm_conn = NULL;
	double	   *lat;
	int64_t		last = 0,
				lag = 0;
	long		i,
				nrecv = 0,
				negative = 0;
	int			t;

	if (!parse_args(argc, argv))
	{
		fprintf(stderr, "usage: %s --conninfo STR --brokers LIST --topic T --category C "
				"[--rate 1000] [--seconds 30] [--count N] [--connections 4] "
				"[--calibrate | --cold]\n", argv[0]);
		return 2;
	}
	snprintf(run, sizeof(run), "%lxp%d", (long) time(NULL), (int) getpid());
	snprintf(prefix, sizeof(prefix), "%s-%s-", category, run);
	n_events = count > 0 ? count : (long) rate * seconds;
	t_sched = calloc(n_events, sizeof(int64_t));
	t_commit = calloc(n_events, sizeof(int64_t));
	t_recv = calloc(n_events, sizeof(int64_t));
	lat = calloc(n_events, sizeof(double));
	threads = calloc(connections, sizeof(LoadThread));
	if (!t_sched || !t_commit || !t_recv || !lat || !threads)
		die("out of memory\n");

	/* The senders: a connection per thread, or one shared producer */
	if (calibrate || cold)
	{
		rd_kafka_conf_t *conf = rd_kafka_conf_new();

		conf_set(conf, "bootstrap.servers", brokers);
		conf_set(conf, "enable.idempotence", "true");
		conf_set(conf, "acks", "all");
		conf_set(conf, "linger.ms", "1");
		rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
		if ((producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr))) == NULL)
			die("%s\n", errstr);
	}
	if (!calibrate)
	{
		warm_conn = cold ? NULL : db_connect();
		for (t = 0; t < connections; t++)
			threads[t].conn = db_connect();
	}

	consumer = consumer_start(run);
	if (pthread_create(&consumer_thread, NULL, consumer_main, consumer) != 0)
		die("could not start the consumer thread\n");
	warm_up(warm_conn);

	/* The load, from 100 ms on */
	start_ns = now_ns() + NS_PER_SEC / 10;
	for (t = 0; t < connections; t++)
	{
		threads[t].k = t;
		if (pthread_create(&threads[t].thread, NULL, load_main, &threads[t]) != 0)
			die("could not start a load thread\n");
	}
	for (t = 0; t < connections; t++)
	{
		pthread_join(threads[t].thread, NULL);
		lag = threads[t].lag > lag ? threads[t].lag : lag;
	}
	for (i = 0; i < n_events; i++)
		last = t_commit[i] > last ? t_commit[i] : last;

	/* Until all arrived, or 10 s after the last send */
	while (shared(&received) < n_events && now_ns() < last + 10 * NS_PER_SEC)
		usleep(10 * 1000);
	pthread_mutex_lock(&lock);
	stop_consumer = 1;
	pthread_mutex_unlock(&lock);
	pthread_join(consumer_thread, NULL);

	for (i = 0; i < n_events; i++)
		if (t_recv[i] != 0)
		{
			lat[nrecv] = (double) (t_recv[i] - t_commit[i]) / 1e6;
			negative += lat[nrecv++] < 0;
		}
	qsort(lat, nrecv, sizeof(double), cmp_double);
	printf("sent=%ld received=%ld missing=%ld rate=%.0f p50_ms=%.3f p99_ms=%.3f "
		   "max_ms=%.3f lag_max_ms=%.3f negative=%ld first_ms=%.3f\n",
		   n_events, nrecv, n_events - nrecv,
		   (double) n_events * NS_PER_SEC / (double) (last - start_ns),
		   percentile(lat, nrecv, 50), percentile(lat, nrecv, 99),
		   percentile(lat, nrecv, 100), (double) lag / 1e6, negative,
		   t_recv[0] != 0 ? (double) (t_recv[0] - t_commit[0]) / 1e6 : -1.0);
	fflush(stdout);

	rd_kafka_consumer_close(consumer);
	rd_kafka_destroy(consumer);
	if (producer != NULL)
	{
		rd_kafka_flush(producer, 5000);
		rd_kafka_destroy(producer);
	}
	return nrecv == n_events ? 0 : 1;
}
