/*
 * produce_nats.c
 *		NATS JetStream benchmark drivers (bench/nats.sh), with nats.c.
 *
 *	produce_nats --url URL --input FILE [--max-pending 10000]
 *		The NATS limit of the relay's drain: publish every message of FILE
 *		(one JSON object a line: {"subject": ..., "headers": {...}, "data":
 *		"..."}) asynchronously to JetStream, at most --max-pending
 *		unacknowledged, and wait for every acknowledgement.  Prints
 *		"messages=N seconds=S failed=F" (the time from the first publish to
 *		the last acknowledgement; reading the file is not counted).
 *
 *	produce_nats --url URL --latency --subject-prefix P [--conninfo STR
 *			--category C | --calibrate] [--rate 1000] [--seconds 30]
 *			[--connections 4]
 *		Commit -> consumer latency: rate * seconds one-event transactions
 *		on a fixed schedule, event i to stream "<C>-<run>-<i>" over
 *		<connections> connections (C must be routed to the topic whose
 *		subjects are P.>); an ordered JetStream consumer (new messages only)
 *		notes when the subject of each arrives.  --calibrate publishes the
 *		same subjects straight to JetStream instead: the floor of NATS and
 *		the consumer.  Prints "sent=N received=R missing=M rate=X p50_ms=X
 *		p99_ms=X max_ms=X".  Exits 1 when messages are missing.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <nats/nats.h>

#define BENCH_PROGRAM "produce_nats"
#include "bench_util.h"

static const char *url = "nats://127.0.0.1:4222", *input, *conninfo, *category, *subject_prefix;
static int	max_pending = 10000, latency = 0, calibrate = 0, rate = 1000, seconds = 30, connections = 4;

/* Shared with nats.c's threads, under lock */
static long acked = 0, failed = 0, received = 0;
static int64_t *t_commit, *t_recv;
static long n_events;
static char prefix[256];		/* "<category>-<run>-" */

/* Acknowledgement handler: count it */
static void
on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	(void) js;
	(void) pa;
	(void) closure;
	pthread_mutex_lock(&lock);
	acked++;
	if (pae != NULL)
		failed++;
	pthread_mutex_unlock(&lock);
	natsMsg_Destroy(msg);
}

/* Connect and make a JetStream context counting acknowledgements */
static void
connect_js(natsConnection **nc, jsCtx **js)
{
	natsOptions *opts = NULL;
	jsOptions	jo;
	natsStatus	s;

	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(opts, url);
	if (s == NATS_OK)
		s = natsConnection_Connect(nc, opts);
	if (s == NATS_OK)
	{
		jsOptions_Init(&jo);
		jo.PublishAsync.AckHandler = on_ack;
		jo.PublishAsync.MaxPending = max_pending;
		s = natsConnection_JetStream(js, *nc, &jo);
	}
	natsOptions_Destroy(opts);
	if (s != NATS_OK)
		die("connect: %s\n", natsStatus_GetText(s));
}

/* The drain's limit: publish the file's messages, wait for every acknowledgement */
static int
produce(void)
{
	FILE	   *f = fopen(input, "r");
	natsMsg   **msgs = NULL;
	long		n = 0,
				cap = 0,
				i;
	char	   *line = NULL;
	size_t		len = 0;
	natsConnection *nc = NULL;
	jsCtx	   *js = NULL;
	int64_t		t0;

	if (f == NULL)
		die("%s: %s\n", input, strerror(errno));
	while (getline(&line, &len, f) > 0)
	{
		json_error_t jerr;
		json_t	   *j = json_loads(line, 0, &jerr);
		json_t	   *h;
		const char *data;
		const char *name;
		json_t	   *value;
		natsMsg    *m;

		if (j == NULL)
			die("input: %s\n", jerr.text);
		data = json_string_value(json_object_get(j, "data"));
		if (natsMsg_Create(&m, json_string_value(json_object_get(j, "subject")), NULL,
						   data, data ? (int) strlen(data) : 0) != NATS_OK)
			die("bad message: %s", line);
		h = json_object_get(j, "headers");
		json_object_foreach(h, name, value)
			natsMsgHeader_Add(m, name, json_string_value(value));
		if (n == cap)
			msgs = realloc(msgs, (cap = cap ? cap * 2 : 1024) * sizeof(natsMsg *));
		msgs[n++] = m;
		json_decref(j);
	}
	fclose(f);
	connect_js(&nc, &js);
	t0 = now_ns();
	for (i = 0; i < n; i++)
	{
		natsStatus	s = js_PublishMsgAsync(js, &msgs[i], NULL);

		if (s != NATS_OK)
			die("publish: %s\n", natsStatus_GetText(s));
	}
	while (shared(&acked) < n)
		usleep(200);
	printf("messages=%ld seconds=%.3f failed=%ld\n", n, (now_ns() - t0) / 1e9, shared(&failed));
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	free(msgs);
	free(line);
	return 0;
}

/* The consumer: note the first arrival of each event of this run */
static void
on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	const char *subj = natsMsg_GetSubject(msg);
	const char *dot = strrchr(subj, '.');
	size_t		plen = strlen(prefix);
	int64_t		now = now_ns();
	char	   *end;
	long		i;

	(void) nc;
	(void) sub;
	(void) closure;
	if (dot != NULL && strncmp(dot + 1, prefix, plen) == 0 &&
		(i = strtol(dot + 1 + plen, &end, 10)) >= 0 && i < n_events && *end == '\0')
	{
		pthread_mutex_lock(&lock);
		if (t_recv[i] == 0)
		{
			t_recv[i] = now;
			received++;
		}
		pthread_mutex_unlock(&lock);
	}
	natsMsg_Destroy(msg);
}

typedef struct LoadThread
{
	int			k;
	PGconn	   *conn;
	jsCtx	   *js;
	int64_t		start;
	pthread_t	thread;
} LoadThread;

/* One load connection: its events, each at its scheduled time */
static void *
load_main(void *arg)
{
	LoadThread *t = arg;
	long		i;

	for (i = t->k; i < n_events; i += connections)
	{
		int64_t		at = t->start + i * NS_PER_SEC / rate;
		int64_t		now;
		char		key[300],
					value[128],
					subject[600];

		while ((now = now_ns()) < at)
		{
			struct timespec ts = {0, (at - now) > 1000000 ? 1000000 : (at - now)};

			nanosleep(&ts, NULL);
		}
		snprintf(key, sizeof(key), "%s%ld", prefix, i);
		if (t->conn != NULL)
		{
			const char *params[2] = {key, value};
			PGresult   *res;

			snprintf(value, sizeof(value), "{\"type\": \"Ping\", \"data\": {\"i\": %ld}}", i);
			res = PQexecPrepared(t->conn, "append", 2, params, NULL, NULL, 0);
			t_commit[i] = now_ns();
			if (PQresultStatus(res) != PGRES_TUPLES_OK)
				die("%s", PQerrorMessage(t->conn));
			PQclear(res);
		}
		else
		{
			snprintf(value, sizeof(value), "{\"i\": %ld}", i);
			snprintf(subject, sizeof(subject), "%s.%s", subject_prefix, key);
			t_commit[i] = now_ns();
			if (js_PublishAsync(t->js, subject, value, (int) strlen(value), NULL) != NATS_OK)
				die("publish failed\n");
		}
	}
	return NULL;
}

/* Commit -> consumer latency */
static int
measure_latency(void)
{
	natsConnection *nc = NULL;
	jsCtx	   *js = NULL;
	natsSubscription *sub = NULL;
	jsSubOptions so;
	jsErrCode	jerr = 0;
	natsStatus	s;
	LoadThread *threads = calloc(connections, sizeof(LoadThread));
	double	   *lat;
	long		n = 0,
				i;
	int64_t		start,
				deadline,
				last = 0;
	char		filter[300];
	int			k;

	n_events = (long) rate * seconds;
	t_commit = calloc(n_events, sizeof(int64_t));
	t_recv = calloc(n_events, sizeof(int64_t));
	lat = calloc(n_events, sizeof(double));
	snprintf(prefix, sizeof(prefix), "%s-%ld-", calibrate ? "floor" : category, (long) time(NULL));
	connect_js(&nc, &js);
	jsSubOptions_Init(&so);
	so.Ordered = true;
	so.Config.DeliverPolicy = js_DeliverNew;
	snprintf(filter, sizeof(filter), "%s.>", subject_prefix);
	s = js_Subscribe(&sub, js, filter, on_msg, NULL, NULL, &so, &jerr);
	if (s != NATS_OK)
		die("subscribe %s: %s (%d)\n", filter, natsStatus_GetText(s), (int) jerr);
	sleep(1);
	start = now_ns() + NS_PER_SEC / 10;
	for (k = 0; k < connections; k++)
	{
		threads[k].k = k;
		threads[k].js = js;
		threads[k].start = start;
		if (!calibrate)
		{
			PGresult   *res;

			threads[k].conn = PQconnectdb(conninfo);
			if (PQstatus(threads[k].conn) != CONNECTION_OK)
				die("%s", PQerrorMessage(threads[k].conn));
			res = PQprepare(threads[k].conn, "append",
							"SELECT eventstore.append($1, 0, $2::jsonb)", 2, NULL);
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				die("%s", PQerrorMessage(threads[k].conn));
			PQclear(res);
		}
		pthread_create(&threads[k].thread, NULL, load_main, &threads[k]);
	}
	for (k = 0; k < connections; k++)
	{
		pthread_join(threads[k].thread, NULL);
		if (threads[k].conn)
			PQfinish(threads[k].conn);
	}
	deadline = now_ns() + 10 * NS_PER_SEC;
	while (shared(&received) < n_events && now_ns() < deadline)
		usleep(10000);
	pthread_mutex_lock(&lock);
	for (i = 0; i < n_events; i++)
		if (t_recv[i] != 0)
			lat[n++] = (t_recv[i] - t_commit[i]) / 1e6;
	pthread_mutex_unlock(&lock);
	qsort(lat, n, sizeof(double), cmp_double);
	for (i = 0; i < n_events; i++)
		last = t_commit[i] > last ? t_commit[i] : last;
	printf("sent=%ld received=%ld missing=%ld rate=%.0f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
		   n_events, n, n_events - n, n_events / ((last - start) / 1e9),
		   percentile(lat, n, 50), percentile(lat, n, 99), n ? lat[n - 1] : 0.0);
	natsSubscription_Unsubscribe(sub);
	natsSubscription_Destroy(sub);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	return n == n_events ? 0 : 1;
}

int
main(int argc, char **argv)
{
	int			i;

	for (i = 1; i < argc; i++)
	{
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--latency") == 0)
			latency = 1;
		else if (strcmp(a, "--calibrate") == 0)
			calibrate = 1;
		else if (v == NULL)
			die("usage: see produce_nats.c\n");
		else if (strcmp(a, "--url") == 0)
			url = argv[++i];
		else if (strcmp(a, "--input") == 0)
			input = argv[++i];
		else if (strcmp(a, "--max-pending") == 0)
			max_pending = atoi(argv[++i]);
		else if (strcmp(a, "--conninfo") == 0)
			conninfo = argv[++i];
		else if (strcmp(a, "--category") == 0)
			category = argv[++i];
		else if (strcmp(a, "--subject-prefix") == 0)
			subject_prefix = argv[++i];
		else if (strcmp(a, "--rate") == 0)
			rate = atoi(argv[++i]);
		else if (strcmp(a, "--seconds") == 0)
			seconds = atoi(argv[++i]);
		else if (strcmp(a, "--connections") == 0)
			connections = atoi(argv[++i]);
		else
			die("unknown option %s\n", a);
	}
	if (latency)
	{
		if (subject_prefix == NULL || (!calibrate && (conninfo == NULL || category == NULL)))
			die("--latency needs --subject-prefix and --conninfo and --category (or --calibrate)\n");
		return measure_latency();
	}
	if (input == NULL)
		die("--input FILE is needed\n");
	return produce();
}
