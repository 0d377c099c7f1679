/*
 * subscribe.c
 *		Subscription consumers for bench/subscriptions.sh: how fast they read
 *		a backlog, and how soon a committed event reaches them.
 *
 *		subscribe --conninfo STR --mode read_all|read_all_ack|poll --category C
 *			[--subscription S] [--page 1000] [--consumers 1]
 *		subscribe --conninfo STR --mode latency|notify --category C
 *			[--subscription S] [--rate 1000] [--seconds 30] [--connections 4]
 *
 * read_all: one client pages through the category's committed events with
 * read_all(last, page, C) until a page is empty (the baseline).
 * read_all_ack: the same, each page in a transaction that also records its
 * last position, as a hand-made subscription would:
 *		BEGIN; SELECT * FROM eventstore.read_all(last, page, C);
 *		UPDATE bench_checkpoint SET position = last; COMMIT;
 * (the table bench_checkpoint(position bigint) is the caller's).
 * poll: <consumers> clients, each a connection of its own, loop on
 *		BEGIN; SELECT * FROM eventstore.poll(S, page); SELECT eventstore.ack(S, last); COMMIT;
 * until a poll finds nothing once every event the category held at the start
 * has been received (an empty poll before that, when the other consumers
 * hold every partition with events, is retried after 1 ms and counted).
 * Both fetch every column in text form and print
 *
 *		events=N seconds=X rate=EVENTS_PER_S empty_polls=K
 *
 * latency: <connections> producers append one-event transactions to new
 * streams "<C>-<run>-<i>" on a fixed schedule (rate per second for seconds),
 * event i carrying {"i": i}; one consumer loops on
 *		BEGIN; SELECT * FROM eventstore.poll(S, 1000, wait => '1s'); SELECT eventstore.ack(S, last); COMMIT;
 * Each event's latency runs from the moment its producer's commit returned
 * (the append's result received) until the consumer's poll that returned it
 * did (all of its rows received); one process, one clock (CLOCK_MONOTONIC).
 * notify (the baseline): the same producers append and call
 * pg_notify('bench_subscribe', '') in the same statement; the consumer
 * LISTENs, and after each notification pages with read_all(last, 1000, C)
 * until a page is empty, then waits for the next.  Prints
 *
 *		sent=N received=R missing=M rate=ACHIEVED p50_ms=X p99_ms=X max_ms=X
 *		lag_max_ms=X negative=K
 *
 * where lag is how late a send started and negative counts events received
 * before their commit returned.  Exits 0 when all arrived, 1 when some are
 * missing or on an error, 2 on misuse.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define BENCH_PROGRAM "subscribe"
#include "bench_util.h"

typedef struct Worker
{
	int			k;				/* its number: a consumer, or a producer */
	PGconn	   *conn;
	int64_t		lag;			/* producers: largest lateness of a send, ns */
	long		empty_polls;	/* poll consumers: empty polls before the end */
	pthread_t	thread;
} Worker;

static const char *conninfo, *mode, *category, *subscription;
static int	page = 1000, consumers = 1, rate = 1000, seconds = 30, connections = 4;
static char prefix[256];		/* latency: "<category>-<run>-" */
static long n_events;
static int64_t start_ns;
static int64_t *t_commit, *t_recv;

/* Shared between threads, under lock */
static long received = 0, warmup_seen = 0, stop_consumer = 0;

/* Add to one of the variables shared between threads; returns the new value */
static long
shared_add(long *var, long n)
{
	long		v;

	pthread_mutex_lock(&lock);
	v = (*var += n);
	pthread_mutex_unlock(&lock);
	return v;
}

/* Run a statement that returns no rows, or exit 1 */
static void
exec_ok(PGconn *conn, const char *sql)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s: %s", sql, PQerrorMessage(conn));
	PQclear(res);
}

/* Prepare a statement, or exit 1 */
static void
prepare(PGconn *conn, const char *name, const char *sql, int nparams)
{
	PGresult   *res = PQprepare(conn, name, sql, nparams, NULL);

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		die("%s: %s", sql, PQerrorMessage(conn));
	PQclear(res);
}

/* Run a prepared statement that returns rows, or exit 1 */
static PGresult *
run(PGconn *conn, const char *name, int nparams, const char *const *params)
{
	PGresult   *res = PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s: %s", name, PQerrorMessage(conn));
	return res;
}

/* Connect with the statements the mode needs, or exit 1 */
static PGconn *
db_connect(int producer)
{
	PGconn	   *conn = PQconnectdb(conninfo);

	if (PQstatus(conn) != CONNECTION_OK)
		die("%s", PQerrorMessage(conn));
	if (producer)
		prepare(conn, "append", strcmp(mode, "notify") == 0 ?
				"SELECT eventstore.append($1, 0, $2::jsonb), pg_notify('bench_subscribe', '')" :
				"SELECT eventstore.append($1, 0, $2::jsonb)", 2);
	else if (strncmp(mode, "read_all", 8) == 0 || strcmp(mode, "notify") == 0)
	{
		prepare(conn, "read", "SELECT * FROM eventstore.read_all($1::bigint, $2::integer, $3::text)", 3);
		if (strcmp(mode, "read_all_ack") == 0)
			prepare(conn, "checkpoint", "UPDATE bench_checkpoint SET position = $1::bigint", 1);
	}
	else
	{
		prepare(conn, "poll", strcmp(mode, "latency") == 0 ?
				"SELECT * FROM eventstore.poll($1, $2::integer, wait => '1s')" :
				"SELECT * FROM eventstore.poll($1, $2::integer)", 2);
		prepare(conn, "ack", "SELECT eventstore.ack($1, $2::bigint)", 2);
	}
	return conn;
}

/* The global_position of a result's last row (the result has rows) */
static const char *
last_position(const PGresult *res)
{
	int			col = PQfnumber(res, "global_position");

	if (col < 0)
		die("no global_position column\n");
	return PQgetvalue(res, PQntuples(res) - 1, col);
}

/* Acknowledge a page (poll modes) and commit */
static void
ack_and_commit(PGconn *conn, const PGresult *page_res)
{
	const char *params[2] = {subscription, NULL};

	if (PQntuples(page_res) > 0)
	{
		params[1] = last_position(page_res);
		PQclear(run(conn, "ack", 2, params));
	}
	exec_ok(conn, "COMMIT");
}

/* A poll consumer of a backlog: until a poll is empty and all were received */
static void *
poll_main(void *arg)
{
	Worker	   *w = arg;
	char		page_s[16];
	const char *params[2] = {subscription, page_s};

	snprintf(page_s, sizeof(page_s), "%d", page);
	for (;;)
	{
		PGresult   *res;
		int			n;

		exec_ok(w->conn, "BEGIN");
		res = run(w->conn, "poll", 2, params);
		n = PQntuples(res);
		ack_and_commit(w->conn, res);
		PQclear(res);
		if (n > 0)
			shared_add(&received, n);
		else if (shared(&received) >= n_events)
			break;
		else
		{
			w->empty_polls++;
			usleep(1000);
		}
	}
	return NULL;
}

/*
 * The read_all baselines: one client pages until a page is empty; with
 * 'record', each page in a transaction that records its last position
 */
static void
read_all_backlog(PGconn *conn, int record)
{
	char		last[32] = "0",
				page_s[16];
	const char *params[3] = {last, page_s, category};
	PGresult   *res;

	snprintf(page_s, sizeof(page_s), "%d", page);
	for (;;)
	{
		int			n;

		if (record)
			exec_ok(conn, "BEGIN");
		res = run(conn, "read", 3, params);
		n = PQntuples(res);
		if (n > 0)
			snprintf(last, sizeof(last), "%s", last_position(res));
		PQclear(res);
		if (record)
		{
			if (n > 0)
			{
				res = PQexecPrepared(conn, "checkpoint", 1, params, NULL, NULL, 0);
				if (PQresultStatus(res) != PGRES_COMMAND_OK)
					die("checkpoint: %s", PQerrorMessage(conn));
				PQclear(res);
			}
			exec_ok(conn, "COMMIT");
		}
		if (n == 0)
			break;
		received += n;
	}
}

/* Note the receipt of a page's events (latency modes), at time now */
static void
note_page(const PGresult *res, int64_t now)
{
	int			col = PQfnumber(res, "data"),
				r;

	if (col < 0)
		die("no data column\n");
	pthread_mutex_lock(&lock);
	for (r = 0; r < PQntuples(res); r++)
	{
		const char *data = PQgetvalue(res, r, col),
				   *p = strstr(data, "\"i\":");
		char	   *end;
		long		i;

		if (p == NULL)
			continue;
		i = strtol(p + 4, &end, 10);
		if (i < 0)
			warmup_seen = 1;
		else if (i < n_events && t_recv[i] == 0)
		{
			t_recv[i] = now;	/* the first copy only */
			received++;
		}
	}
	pthread_mutex_unlock(&lock);
}

/* latency: the consumer loops on poll with a wait, acking each page */
static void *
latency_main(void *arg)
{
	Worker	   *w = arg;
	const char *params[2] = {subscription, "1000"};

	while (!shared(&stop_consumer))
	{
		PGresult   *res;

		exec_ok(w->conn, "BEGIN");
		res = run(w->conn, "poll", 2, params);
		note_page(res, now_ns());
		ack_and_commit(w->conn, res);
		PQclear(res);
	}
	return NULL;
}

/* notify: the consumer reads after each notification until a page is empty */
static void *
notify_main(void *arg)
{
	Worker	   *w = arg;
	char		last[32] = "0";
	const char *params[3] = {last, "1000", category};
	PGresult   *res;
	PGnotify   *nf;

	/* Start at the category's head: the warm-up event comes after it */
	res = PQexec(w->conn, "SELECT coalesce(max(global_position), 0) FROM eventstore.events");
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s", PQerrorMessage(w->conn));
	snprintf(last, sizeof(last), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	while (!shared(&stop_consumer))
	{
		int			n;

		res = run(w->conn, "read", 3, params);
		note_page(res, now_ns());
		if ((n = PQntuples(res)) > 0)
			snprintf(last, sizeof(last), "%s", last_position(res));
		PQclear(res);
		if (n > 0)
			continue;
		/* Nothing more: wait for a notification (at most 100 ms) */
		for (;;)
		{
			fd_set		fds;
			struct timeval tv = {0, 100 * 1000};
			int			sock = PQsocket(w->conn),
						got = 0;

			if (!PQconsumeInput(w->conn))
				die("%s", PQerrorMessage(w->conn));
			while ((nf = PQnotifies(w->conn)) != NULL)
			{
				PQfreemem(nf);
				got = 1;
			}
			if (got || shared(&stop_consumer))
				break;
			FD_ZERO(&fds);
			FD_SET(sock, &fds);
			if (select(sock + 1, &fds, NULL, NULL, &tv) < 0 && errno != EINTR)
				die("select: %s\n", strerror(errno));
			if (!FD_ISSET(sock, &fds))
				break;			/* a timeout: read again anyway */
		}
	}
	return NULL;
}

/* Append event i (i < 0: a warm-up event); returns when its commit returned */
static int64_t
send_event(PGconn *conn, long i)
{
	char		stream[512],
				value[128];
	const char *params[2] = {stream, value};
	PGresult   *res;
	int64_t		done;

	if (i >= 0)
		snprintf(stream, sizeof(stream), "%s%ld", prefix, i);
	else
		snprintf(stream, sizeof(stream), "%swarmup%ld", prefix, -i);
	snprintf(value, sizeof(value), "{\"type\": \"Ping\", \"data\": {\"i\": %ld}}", i);
	res = PQexecPrepared(conn, "append", 2, params, NULL, NULL, 0);
	done = now_ns();
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s", PQerrorMessage(conn));
	PQclear(res);
	return done;
}

/* A producer: send its share of the events on schedule */
static void *
load_main(void *arg)
{
	Worker	   *w = arg;
	long		i;

	for (i = w->k; i < n_events; i += connections)
	{
		int64_t		sched = start_ns + (int64_t) ((double) i * NS_PER_SEC / rate);
		struct timespec ts = {sched / NS_PER_SEC, sched % NS_PER_SEC};
		int64_t		late;

		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		late = now_ns() - sched;
		w->lag = late > w->lag ? late : w->lag;
		t_commit[i] = send_event(w->conn, i);
	}
	return NULL;
}

/* The read_all, read_all_ack and poll modes: read the category's backlog, print the rate */
static int
backlog(void)
{
	Worker	   *w = calloc(consumers, sizeof(Worker));
	PGresult   *res;
	PGconn	   *conn;
	const char *params[1] = {category};
	long		empty = 0;
	int64_t		t0;
	double		secs;
	int			t;

	if (w == NULL)
		die("out of memory\n");
	conn = db_connect(0);
	res = PQexecParams(conn, "SELECT count(*) FROM eventstore.events WHERE category = $1",
					   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		die("%s", PQerrorMessage(conn));
	n_events = atol(PQgetvalue(res, 0, 0));
	PQclear(res);
	if (strncmp(mode, "read_all", 8) == 0)
	{
		t0 = now_ns();
		read_all_backlog(conn, strcmp(mode, "read_all_ack") == 0);
		secs = (double) (now_ns() - t0) / NS_PER_SEC;
	}
	else
	{
		for (t = 0; t < consumers; t++)
		{
			w[t].k = t;
			w[t].conn = t == 0 ? conn : db_connect(0);
		}
		t0 = now_ns();
		for (t = 0; t < consumers; t++)
			if (pthread_create(&w[t].thread, NULL, poll_main, &w[t]) != 0)
				die("could not start a consumer thread\n");
		for (t = 0; t < consumers; t++)
		{
			pthread_join(w[t].thread, NULL);
			empty += w[t].empty_polls;
		}
		secs = (double) (now_ns() - t0) / NS_PER_SEC;
	}
	printf("events=%ld seconds=%.3f rate=%.0f empty_polls=%ld\n",
		   received, secs, (double) received / secs, empty);
	if (received != n_events)
	{
		fprintf(stderr, "subscribe: received %ld events, the category has %ld\n", received, n_events);
		return 1;
	}
	return 0;
}

/* The latency and notify modes */
static int
latency(void)
{
	Worker	   *prod = calloc(connections, sizeof(Worker)),
				cons = {0};
	PGconn	   *warm_conn;
	double	   *lat;
	int64_t		deadline,
				last = 0,
				lag = 0;
	long		i,
				k,
				nrecv = 0,
				negative = 0;
	int			t;

	n_events = (long) rate * seconds;
	t_commit = calloc(n_events, sizeof(int64_t));
	t_recv = calloc(n_events, sizeof(int64_t));
	lat = calloc(n_events, sizeof(double));
	if (!prod || !t_commit || !t_recv || !lat)
		die("out of memory\n");
	snprintf(prefix, sizeof(prefix), "%s-%lxp%d-", category, (long) time(NULL), (int) getpid());

	warm_conn = db_connect(1);
	for (t = 0; t < connections; t++)
	{
		prod[t].k = t;
		prod[t].conn = db_connect(1);
	}
	cons.conn = db_connect(0);
	if (strcmp(mode, "notify") == 0)
		exec_ok(cons.conn, "LISTEN bench_subscribe");
	if (pthread_create(&cons.thread, NULL, strcmp(mode, "notify") == 0 ? notify_main : latency_main,
					   &cons) != 0)
		die("could not start the consumer thread\n");

	/* Warm-up events until the consumer receives one (15 s at most) */
	deadline = now_ns() + 15 * NS_PER_SEC;
	for (k = 1; !shared(&warmup_seen); k++)
	{
		if (now_ns() > deadline)
			die("no warm-up event arrived in 15 s\n");
		(void) send_event(warm_conn, -k);
		usleep(200 * 1000);
	}

	/* The load, from 100 ms on */
	start_ns = now_ns() + NS_PER_SEC / 10;
	for (t = 0; t < connections; t++)
		if (pthread_create(&prod[t].thread, NULL, load_main, &prod[t]) != 0)
			die("could not start a producer thread\n");
	for (t = 0; t < connections; t++)
	{
		pthread_join(prod[t].thread, NULL);
		lag = prod[t].lag > lag ? prod[t].lag : lag;
	}
	for (i = 0; i < n_events; i++)
		last = t_commit[i] > last ? t_commit[i] : last;

	/* Until all arrived, or 10 s after the last send */
	while (shared(&received) < n_events && now_ns() < last + 10 * NS_PER_SEC)
		usleep(10 * 1000);
	pthread_mutex_lock(&lock);
	stop_consumer = 1;
	pthread_mutex_unlock(&lock);
	pthread_join(cons.thread, NULL);

	for (i = 0; i < n_events; i++)
		if (t_recv[i] != 0)
		{
			lat[nrecv] = (double) (t_recv[i] - t_commit[i]) / 1e6;
			negative += lat[nrecv++] < 0;
		}
	qsort(lat, nrecv, sizeof(double), cmp_double);
	printf("sent=%ld received=%ld missing=%ld rate=%.0f p50_ms=%.3f p99_ms=%.3f "
		   "max_ms=%.3f lag_max_ms=%.3f negative=%ld\n",
		   n_events, nrecv, n_events - nrecv,
		   (double) n_events * NS_PER_SEC / (double) (last - start_ns),
		   percentile(lat, nrecv, 50), percentile(lat, nrecv, 99),
		   percentile(lat, nrecv, 100), (double) lag / 1e6, negative);
	return nrecv == n_events ? 0 : 1;
}

/* The options that take a value: a string, or an integer from 1 to 10^6 */
static const struct
{
	const char *name;
	const char **str;
	int		   *num;
}			options[] = {
	{"--conninfo", &conninfo, NULL}, {"--mode", &mode, NULL},
	{"--category", &category, NULL}, {"--subscription", &subscription, NULL},
	{"--page", NULL, &page}, {"--consumers", NULL, &consumers},
	{"--rate", NULL, &rate}, {"--seconds", NULL, &seconds},
	{"--connections", NULL, &connections},
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
	if (!conninfo || !mode || !category || strlen(category) >= 128)
		return 0;
	if (strcmp(mode, "read_all") == 0 || strcmp(mode, "read_all_ack") == 0 ||
		strcmp(mode, "notify") == 0)
		return 1;
	return (strcmp(mode, "poll") == 0 || strcmp(mode, "latency") == 0) && subscription != NULL;
}

int
main(int argc, char **argv)
{
	if (!parse_args(argc, argv))
	{
		fprintf(stderr, "usage: %s --conninfo STR --mode read_all|read_all_ack|poll --category C [--subscription S] "
				"[--page 1000] [--consumers 1]\n"
				"       %s --conninfo STR --mode latency|notify --category C [--subscription S] "
				"[--rate 1000] [--seconds 30] [--connections 4]\n", argv[0], argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (strncmp(mode, "read_all", 8) == 0 || strcmp(mode, "poll") == 0)
		return backlog();
	return latency();
}
