/*
 * mock_kafka.c
 *		The test and demo broker: librdkafka's Kafka-protocol mock cluster on
 *		loopback, driven by line commands on standard input.
 *
 * Prints "bootstrap=<host:port,...>" once the cluster listens, then answers
 * each command with one line, "ok" or "error: ...":
 *
 *		down <broker id|all>		take brokers down (connections refused)
 *		up <broker id|all>			bring them back
 *		produce_error <n> <error>	fail the next n Produce requests with
 *									<error> (a name such as
 *									NOT_ENOUGH_REPLICAS, or a number)
 *		create_topic <name> <partitions>
 *		quit						(or end of input) stop
 *
 * Auto-created topics get 4 partitions.  The tool exits by itself after
 * --timeout seconds (default 600), so a test that forgets it leaves nothing
 * running.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define PRODUCE_API_KEY 0

static volatile sig_atomic_t stop_requested = 0;

/* SIGTERM/SIGINT: leave the command loop */
static void
on_signal(int sig)
{
	(void) sig;
	stop_requested = 1;
}

/* An error code from its name (with or without RD_KAFKA_RESP_ERR_) or number */
static int
parse_error(const char *text, rd_kafka_resp_err_t *err)
{
	const struct rd_kafka_err_desc *descs;
	size_t		n,
				i;
	char	   *end;
	long		num;

	if (strncmp(text, "RD_KAFKA_RESP_ERR_", 18) == 0)
		text += 18;
	num = strtol(text, &end, 10);
	if (*text != '\0' && *end == '\0')
	{
		*err = (rd_kafka_resp_err_t) num;
		return 1;
	}
	rd_kafka_get_err_descs(&descs, &n);
	for (i = 0; i < n; i++)
		if (descs[i].name != NULL && strcmp(descs[i].name, text) == 0)
		{
			*err = descs[i].code;
			return 1;
		}
	return 0;
}

/* Apply set_down or set_up to one broker or all of them */
static rd_kafka_resp_err_t
set_brokers(rd_kafka_mock_cluster_t *mc, int nbrokers, const char *which, int up)
{
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	int			first = 1,
				last = nbrokers,
				id;

	if (strcmp(which, "all") != 0)
		first = last = atoi(which);
	if (first < 1 || last > nbrokers)
		return RD_KAFKA_RESP_ERR__INVALID_ARG;
	for (id = first; id <= last && !err; id++)
		err = up ? rd_kafka_mock_broker_set_up(mc, id) :
			rd_kafka_mock_broker_set_down(mc, id);
	return err;
}

/* Run one command line; writes the answer line */
static int
run_command(rd_kafka_mock_cluster_t *mc, int nbrokers, char *line)
{
	char		verb[32] = "",
				arg1[256] = "",
				arg2[256] = "";
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
	int			nargs = sscanf(line, "%31s %255s %255s", verb, arg1, arg2);

	if (nargs <= 0)
		return 1;
	if (strcmp(verb, "quit") == 0)
		return 0;
	if ((strcmp(verb, "down") == 0 || strcmp(verb, "up") == 0) && nargs == 2)
		err = set_brokers(mc, nbrokers, arg1, verb[0] == 'u');
	else if (strcmp(verb, "produce_error") == 0 && nargs == 3)
	{
		rd_kafka_resp_err_t inject;
		int			count = atoi(arg1),
					i;

		if (count < 1 || !parse_error(arg2, &inject))
			err = RD_KAFKA_RESP_ERR__INVALID_ARG;
		for (i = 0; !err && i < count; i++)
			rd_kafka_mock_push_request_errors(mc, PRODUCE_API_KEY, 1, inject);
	}
	else if (strcmp(verb, "create_topic") == 0 && nargs == 3)
		err = rd_kafka_mock_topic_create(mc, arg1, atoi(arg2), 1);
	else
	{
		printf("error: unknown command: %s", line);
		fflush(stdout);
		return 1;
	}
	if (err)
		printf("error: %s\n", rd_kafka_err2str(err));
	else
		printf("ok\n");
	fflush(stdout);
	return 1;
}

int
main(int argc, char **argv)
{
	int			nbrokers = 3;
	int			timeout_s = 600;
	char		errstr[512];
	char		line[1024];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mc;
	time_t		deadline;
	int			i;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
			nbrokers = atoi(argv[++i]);
		else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
			timeout_s = atoi(argv[++i]);
		else
		{
			fprintf(stderr, "usage: %s [--brokers N] [--timeout SECONDS]\n", argv[0]);
			return 2;
		}
	}
	setvbuf(stdin, NULL, _IONBF, 0);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);

	/* The mock cluster needs a client handle for its bookkeeping */
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr));
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "mock_kafka: %s\n", errstr);
		return 1;
	}
	mc = rd_kafka_mock_cluster_new(rk, nbrokers);
	if (mc == NULL)
	{
		fprintf(stderr, "mock_kafka: could not create the mock cluster\n");
		return 1;
	}
	printf("bootstrap=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
	fflush(stdout);

	deadline = time(NULL) + timeout_s;
	while (!stop_requested && time(NULL) < deadline)
	{
		fd_set		fds;
		struct timeval tv = {1, 0};

		FD_ZERO(&fds);
		FD_SET(0, &fds);
		if (select(1, &fds, NULL, NULL, &tv) <= 0)
			continue;
		if (fgets(line, sizeof(line), stdin) == NULL ||
			!run_command(mc, nbrokers, line))
			break;
	}

	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	return 0;
}
