/*
 * produce_only.c
 *		The producer's limit: produce a set of messages with librdkafka alone
 *		(no database), using the relay's producer settings, and report how
 *		long the broker took to acknowledge all of them.
 *
 *		produce_only --brokers HOST:PORT[,...] [--input FILE] [--flush-every N]
 *
 * The input (standard input by default) holds one JSON object a line:
 *
 *		{"topic": "...", "key": "..." or null, "value": "..." or null,
 *		 "headers": {"name": "string value", ...}}
 *
 * All lines are parsed before the clock starts.  One warm-up message (not
 * timed) opens the connection and fetches metadata, as the relay is already
 * connected when its drain starts.  The timed section produces every message
 * in input order and ends when all delivery reports have arrived.  With
 * --flush-every N it waits for every report after each N messages, as the
 * relay does with each batch, so that it measures that discipline's cost.
 * Prints one line:
 *
 *		messages=N acked=A failed=F seconds=S.SSS rate=R first_error=NAME
 *
 * Exits 0 when every message was acknowledged, 1 when some were not (or the
 * warm-up failed), 2 on usage or input errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#define WARMUP_TIMEOUT_MS	30000
#define FLUSH_TIMEOUT_MS	120000
#define POLL_EVERY			1000

/* One input message; the strings point into its parsed line */
typedef struct message
{
	json_t	   *root;
	const char *topic;
	const char *key;
	const char *value;
	json_t	   *headers;
} message;

static long acked = 0;
static long failed = 0;
static const char *first_error = NULL;

/* Note the first error seen, by name */
static void
note_error(rd_kafka_resp_err_t err)
{
	if (first_error == NULL)
		first_error = rd_kafka_err2name(err);
}

/* Delivery report: count the message as acknowledged or failed */
static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	(void) rk;
	(void) opaque;
	if (msg->err)
	{
		failed++;
		note_error(msg->err);
	}
	else
		acked++;
}

/* Explain the command line and exit 2 */
static void
usage(const char *prog)
{
	fprintf(stderr, "usage: %s --brokers HOST:PORT[,...] [--input FILE] [--flush-every N]\n", prog);
	exit(2);
}

/* Reject input line lineno and exit 2 */
static void
bad_line(long lineno, const char *why)
{
	fprintf(stderr, "produce_only: line %ld: %s\n", lineno, why);
	exit(2);
}

/* Read and check every input line; exits 2 on a bad line */
static message *
read_messages(FILE *in, long *count)
{
	message    *msgs = NULL;
	long		n = 0,
				cap = 0,
				lineno = 0;
	char	   *line = NULL;
	size_t		linecap = 0;

	while (getline(&line, &linecap, in) >= 0)
	{
		json_error_t jerr;
		json_t	   *root,
				   *topic,
				   *key,
				   *value,
				   *headers;

		lineno++;
		if (line[strspn(line, " \t\r\n")] == '\0')
			continue;
		root = json_loads(line, 0, &jerr);
		if (root == NULL)
		{
			char		why[300];

			snprintf(why, sizeof(why), "not valid JSON: %s", jerr.text);
			bad_line(lineno, why);
		}
		if (!json_is_object(root))
			bad_line(lineno, "not a JSON object");
		topic = json_object_get(root, "topic");
		key = json_object_get(root, "key");
		value = json_object_get(root, "value");
		headers = json_object_get(root, "headers");
		if (!json_is_string(topic))
			bad_line(lineno, "no string \"topic\"");
		if ((key && !json_is_null(key) && !json_is_string(key)) ||
			(value && !json_is_null(value) && !json_is_string(value)) ||
			(headers && !json_is_null(headers) && !json_is_object(headers)))
			bad_line(lineno, "\"key\" and \"value\" must be strings or null, "
					 "\"headers\" an object");
		if (n == cap)
		{
			cap = cap ? cap * 2 : 1024;
			msgs = realloc(msgs, cap * sizeof(message));
			if (msgs == NULL)
			{
				fprintf(stderr, "produce_only: out of memory\n");
				exit(2);
			}
		}
		msgs[n].root = root;
		msgs[n].topic = json_string_value(topic);
		msgs[n].key = json_is_string(key) ? json_string_value(key) : NULL;
		msgs[n].value = json_is_string(value) ? json_string_value(value) : NULL;
		msgs[n].headers = json_is_object(headers) ? headers : NULL;
		n++;
	}
	free(line);
	*count = n;
	return msgs;
}

/* The producer, configured as the relay's; exits if that fails */
static rd_kafka_t *
make_producer(const char *brokers)
{
	const char *props[][2] = {
		{"bootstrap.servers", brokers},
		{"enable.idempotence", "true"},
		{"acks", "all"},
		{"partitioner", "murmur2_random"},
		{"message.timeout.ms", "90000"},
		{"linger.ms", "1"},
		{"client.id", "eventstore-bench"},
		{"queue.buffering.max.messages", "100000"},
	};
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	char		errstr[512];
	size_t		i;

	for (i = 0; i < sizeof(props) / sizeof(props[0]); i++)
		if (rd_kafka_conf_set(conf, props[i][0], props[i][1],
							  errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			fprintf(stderr, "produce_only: %s: %s\n", props[i][0], errstr);
			exit(2);
		}
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "produce_only: could not create the producer: %s\n", errstr);
		exit(1);
	}
	return rk;
}

/* Produce one message, waiting while the queue is full; false if it failed */
static int
produce_one(rd_kafka_t *rk, const message *m)
{
	size_t		nhdrs = m->headers ? json_object_size(m->headers) : 0;
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(nhdrs);
	rd_kafka_resp_err_t err;
	const char *name;
	json_t	   *hval;

	if (m->headers != NULL)
		json_object_foreach(m->headers, name, hval)
		{
			if (json_is_string(hval))
				rd_kafka_header_add(hdrs, name, -1, json_string_value(hval), -1);
		}
	for (;;)
	{
		err = rd_kafka_producev(rk,
								RD_KAFKA_V_TOPIC(m->topic),
								RD_KAFKA_V_KEY(m->key, m->key ? strlen(m->key) : 0),
								RD_KAFKA_V_VALUE((void *) m->value,
												 m->value ? strlen(m->value) : 0),
								RD_KAFKA_V_HEADERS(hdrs),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(rk, 10);
	}
	if (err)
	{
		rd_kafka_headers_destroy(hdrs);
		note_error(err);
		return 0;
	}
	return 1;
}

int
main(int argc, char **argv)
{
	const char *brokers = NULL;
	const char *input = NULL;
	int			flush_every = 0;
	FILE	   *in = stdin;
	message    *msgs;
	message		warmup = {NULL, NULL, "produce-only-warmup", "{}", NULL};
	rd_kafka_t *rk;
	struct timespec start,
				end;
	double		seconds;
	long		n,
				i;
	int			i_arg;

	for (i_arg = 1; i_arg < argc; i_arg++)
	{
		if (strcmp(argv[i_arg], "--brokers") == 0 && i_arg + 1 < argc)
			brokers = argv[++i_arg];
		else if (strcmp(argv[i_arg], "--input") == 0 && i_arg + 1 < argc)
			input = argv[++i_arg];
		else if (strcmp(argv[i_arg], "--flush-every") == 0 && i_arg + 1 < argc &&
				 (flush_every = atoi(argv[i_arg + 1])) > 0)
			i_arg++;
		else
			usage(argv[0]);
	}
	if (brokers == NULL)
		usage(argv[0]);
	if (input != NULL && (in = fopen(input, "r")) == NULL)
	{
		perror(input);
		return 2;
	}
	msgs = read_messages(in, &n);
	if (in != stdin)
		fclose(in);
	if (n == 0)
	{
		fprintf(stderr, "produce_only: no messages\n");
		return 2;
	}

	rk = make_producer(brokers);

	/* Warm up: connection and metadata exist before the clock starts */
	warmup.topic = msgs[0].topic;
	if (!produce_one(rk, &warmup) ||
		rd_kafka_flush(rk, WARMUP_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		acked != 1)
	{
		fprintf(stderr, "produce_only: warm-up message not acknowledged within %d s: %s\n",
				WARMUP_TIMEOUT_MS / 1000, first_error ? first_error : "timed out");
		rd_kafka_destroy(rk);
		return 1;
	}
	acked = 0;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (i = 0; i < n; i++)
	{
		if (!produce_one(rk, &msgs[i]))
			failed++;
		if (flush_every > 0 && (i + 1) % flush_every == 0)
			rd_kafka_flush(rk, FLUSH_TIMEOUT_MS);
		else if ((i + 1) % POLL_EVERY == 0)
			rd_kafka_poll(rk, 0);
	}
	rd_kafka_flush(rk, FLUSH_TIMEOUT_MS);
	clock_gettime(CLOCK_MONOTONIC, &end);

	seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
	printf("messages=%ld acked=%ld failed=%ld seconds=%.3f rate=%ld first_error=%s\n",
		   n, acked, failed, seconds,
		   seconds > 0 ? (long) (acked / seconds) : 0L,
		   first_error ? first_error : "none");
	fflush(stdout);

	rd_kafka_destroy(rk);
	for (i = 0; i < n; i++)
		json_decref(msgs[i].root);
	free(msgs);
	return (failed == 0 && acked == n) ? 0 : 1;
}
