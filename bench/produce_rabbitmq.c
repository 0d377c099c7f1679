/*
 * produce_rabbitmq.c
 *		RabbitMQ's limit for the relay drain: publish a set of messages with
 *		rabbitmq-c alone (no database), the way the relay's sink does
 *		(persistent, mandatory, one channel with publisher confirms, at most
 *		16,384 unconfirmed), and report how long the broker took to confirm
 *		all of them.
 *
 *		produce_rabbitmq --port P [--host H] [--input FILE] [--rate N]
 *
 * The input (standard input by default) is bench/produce_only's: one JSON
 * object a line, {"topic": exchange, "key", "value", "headers": {...}};
 * headers are mapped as the sink maps them (ce_X -> cloudEvents_X,
 * content-type -> content_type, ce_id -> message_id).  All lines are
 * parsed before the clock starts.  With --rate, N messages a second, and a
 * header whose value is "now" gets the publish time (RFC 3339), for the
 * latency floor.  Prints one line:
 *
 *		messages=N acked=A failed=F seconds=S.SSS rate=R first_error=NAME
 *
 * Exits 0 when every message was confirmed, 1 if not, 2 on usage errors.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_UNCONFIRMED 16384

/* One input message, ready to publish */
typedef struct message
{
	amqp_bytes_t exchange;
	amqp_bytes_t key;
	amqp_bytes_t body;
	amqp_basic_properties_t props;
	amqp_bytes_t *stamp;		/* a header value "now": the publish time */
} message;

static long acked = 0;
static long failed = 0;
static const char *first_error = "none";
static char *answered = NULL;	/* by delivery tag */
static long nsent = 0;
static uint64_t lowest = 1;	/* the lowest tag not answered */

/* Seconds on the monotonic clock */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A message of one input line, mapped as the relay's sink does */
static int
parse(const char *line, message *m)
{
	json_error_t jerr;
	json_t	   *o = json_loads(line, 0, &jerr);
	json_t	   *h;
	const char *name;
	json_t	   *v;
	amqp_table_entry_t *entries;
	int			n = 0;

	if (o == NULL)
		return -1;
	memset(m, 0, sizeof(*m));
	m->exchange = amqp_bytes_malloc_dup(amqp_cstring_bytes((char *) json_string_value(json_object_get(o, "topic"))));
	m->key = json_is_string(json_object_get(o, "key")) ?
		amqp_bytes_malloc_dup(amqp_cstring_bytes((char *) json_string_value(json_object_get(o, "key")))) :
		amqp_empty_bytes;
	m->body = json_is_string(json_object_get(o, "value")) ?
		amqp_bytes_malloc_dup(amqp_cstring_bytes((char *) json_string_value(json_object_get(o, "value")))) :
		amqp_empty_bytes;
	m->props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
	m->props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
	h = json_object_get(o, "headers");
	entries = calloc(json_object_size(h) + 1, sizeof(amqp_table_entry_t));
	json_object_foreach(h, name, v)
	{
		amqp_bytes_t value = amqp_bytes_malloc_dup(amqp_cstring_bytes((char *) (json_string_value(v) ? json_string_value(v) : "")));

		if (strcmp(name, "content-type") == 0)
		{
			m->props._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
			m->props.content_type = value;
			continue;
		}
		if (strcmp(name, "ce_id") == 0)
		{
			m->props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
			m->props.message_id = amqp_bytes_malloc_dup(value);
		}
		if (strncmp(name, "ce_", 3) == 0)
		{
			char		buf[300];

			snprintf(buf, sizeof(buf), "cloudEvents_%s", name + 3);
			entries[n].key = amqp_bytes_malloc_dup(amqp_cstring_bytes(buf));
		}
		else
			entries[n].key = amqp_bytes_malloc_dup(amqp_cstring_bytes((char *) name));
		entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
		entries[n].value.value.bytes = value;
		if (strcmp(json_string_value(v) ? json_string_value(v) : "", "now") == 0)
		{
			entries[n].value.value.bytes = amqp_bytes_malloc(40);
			m->stamp = &entries[n].value.value.bytes;
		}
		n++;
	}
	if (n > 0)
	{
		m->props._flags |= AMQP_BASIC_HEADERS_FLAG;
		m->props.headers.num_entries = n;
		m->props.headers.entries = entries;
	}
	json_decref(o);
	return 0;
}

/* Write the current time (RFC 3339, microseconds) into a "now" header */
static void
stamp(amqp_bytes_t *b)
{
	struct timespec ts;
	struct tm	tm;
	char		buf[40];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	b->len = snprintf(b->bytes, 40, "%s.%06ldZ", buf, ts.tv_nsec / 1000);
}

/* Read the broker's answers, waiting at most 'wait' for the first; -1 on errors */
static int
serve(amqp_connection_state_t conn, struct timeval *wait)
{
	struct timeval zero = {0, 0};
	int			first = 1;

	for (;;)
	{
		amqp_frame_t f;
		int			st = amqp_simple_wait_frame_noblock(conn, &f, first ? wait : &zero);

		first = 0;
		if (st == AMQP_STATUS_TIMEOUT)
			return 0;
		if (st != AMQP_STATUS_OK)
		{
			fprintf(stderr, "produce_rabbitmq: %s\n", amqp_error_string2(st));
			return -1;
		}
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		switch (f.payload.method.id)
		{
			case AMQP_BASIC_ACK_METHOD:
			case AMQP_BASIC_NACK_METHOD:
				{
					/*
					 * ack and nack share the first two fields; confirms
					 * come in any order (an unroutable message's at once)
					 */
					amqp_basic_ack_t *a = f.payload.method.decoded;
					uint64_t	t = a->multiple ? lowest : a->delivery_tag;

					for (; t <= a->delivery_tag && t <= (uint64_t) nsent; t++)
					{
						if (answered[t])
							continue;
						answered[t] = 1;
						if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
							acked++;
						else
						{
							failed++;
							first_error = "NACKED";
						}
					}
					while (lowest <= (uint64_t) nsent && answered[lowest])
						lowest++;
					break;
				}
			case AMQP_BASIC_RETURN_METHOD:
				failed++;
				acked--;		/* its ack follows */
				first_error = "NO_ROUTE";
				break;
			case AMQP_CHANNEL_CLOSE_METHOD:
			case AMQP_CONNECTION_CLOSE_METHOD:
				fprintf(stderr, "produce_rabbitmq: the broker closed the channel\n");
				return -1;
		}
		amqp_maybe_release_buffers(conn);
	}
}

int
main(int argc, char **argv)
{
	const char *host = "127.0.0.1";
	const char *input = NULL;
	double		rate = 0;
	int			port = 0;
	FILE	   *in = stdin;
	message    *msgs = NULL;
	long		n = 0,
				cap = 0,
				i;
	char	   *line = NULL;
	size_t		linecap = 0;
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	struct timeval tv = {5, 0};
	double		t0,
				secs;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc)
			host = argv[++i];
		else if (strcmp(argv[i], "--input") == 0 && i + 1 < argc)
			input = argv[++i];
		else if (strcmp(argv[i], "--rate") == 0 && i + 1 < argc)
			rate = atof(argv[++i]);
		else
			port = -1;
	}
	if (port <= 0 || (input && (in = fopen(input, "r")) == NULL))
	{
		fprintf(stderr, "usage: produce_rabbitmq --port P [--host H] [--input FILE] [--rate N]\n");
		return 2;
	}
	while (getline(&line, &linecap, in) > 0)
	{
		if (n == cap)
			msgs = realloc(msgs, (cap = cap ? cap * 2 : 1024) * sizeof(message));
		if (parse(line, &msgs[n]) != 0)
		{
			fprintf(stderr, "produce_rabbitmq: line %ld is not valid JSON\n", n + 1);
			return 2;
		}
		n++;
	}

	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	if (amqp_socket_open_noblock(sock, host, port, &tv) != AMQP_STATUS_OK ||
		amqp_login(conn, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN,
				   "guest", "guest").reply_type != AMQP_RESPONSE_NORMAL ||
		!amqp_channel_open(conn, 1) ||
		!amqp_confirm_select(conn, 1))
	{
		fprintf(stderr, "produce_rabbitmq: could not connect to %s:%d\n", host, port);
		return 1;
	}

	answered = calloc(n + 2, 1);
	t0 = now_s();
	for (i = 0; i < n; i++)
	{
		while (i - acked - failed >= MAX_UNCONFIRMED)
		{
			struct timeval w = {1, 0};

			if (serve(conn, &w) < 0)
				return 1;
		}
		while (rate > 0 && now_s() < t0 + i / rate)
		{
			struct timeval w = {0, 200};

			if (serve(conn, &w) < 0)
				return 1;
		}
		if (msgs[i].stamp)
			stamp(msgs[i].stamp);
		if (amqp_basic_publish(conn, 1, msgs[i].exchange, msgs[i].key, 1, 0,
							   &msgs[i].props, msgs[i].body) != AMQP_STATUS_OK)
		{
			fprintf(stderr, "produce_rabbitmq: publish failed\n");
			return 1;
		}
		nsent++;
		if (i % 64 == 0 && serve(conn, &(struct timeval) {0, 0}) < 0)
			return 1;
	}
	while (acked + failed < n && now_s() - t0 < 300)
	{
		struct timeval w = {1, 0};

		if (serve(conn, &w) < 0)
			break;
	}
	secs = now_s() - t0;
	printf("messages=%ld acked=%ld failed=%ld seconds=%.3f rate=%ld first_error=%s\n",
		   n, acked, failed, secs, (long) (n / (secs > 0 ? secs : 1e-9)), first_error);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	return acked == n ? 0 : 1;
}
