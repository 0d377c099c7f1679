/*
 * nats_tool.c
 *		What the tests, the demo and the benchmark need of a NATS JetStream
 *		server, with nats.c (there is no `nats` CLI in Debian).  The server
 *		is nats://127.0.0.1:PORT (test/tools/brokers.sh starts it).
 *
 *	nats_tool --port P wait [--timeout SECONDS]
 *		ask for JetStream account info until it answers (default 30 s);
 *		exit 0 when it did, 1 on timeout
 *	nats_tool --port P stream-add NAME SUBJECT... [--duplicates SECONDS]
 *			[--max-msg-size BYTES]
 *		create stream NAME (file storage) taking SUBJECTs, or update it
 *		if it exists; --duplicates: its duplicate window (server default
 *		2 minutes); --max-msg-size: its largest message
 *	nats_tool --port P consume NAME [--count N] [--timeout SECONDS]
 *		read the stream from its start, in stream order, and print one JSON
 *		object a message: {"subject": ..., "stream_seq": N, "headers":
 *		{name: value, ...}, "data": "..."} (a header with several values:
 *		the first).  Without --count: what the stream holds, exit 0.  With
 *		--count: until N messages were printed (exit 0) or the timeout
 *		(default 30 s) passed (exit 1, having printed what was there)
 *	nats_tool --port P stream-info NAME
 *		print {"messages": N, "bytes": N, "first_seq": N, "last_seq": N}
 *	nats_tool --port P pub SUBJECT DATA [--msg-id ID]
 *		publish one message and wait for its acknowledgement; print
 *		{"stream_seq": N, "duplicate": true|false}
 *
 * The stream is read with direct gets by sequence (js_GetMsg), which is
 * exactly what the stream stores, duplicates and order included.  Errors
 * go to stderr, with exit code 1 (2: bad arguments).
 */
#include <nats/nats.h>
#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char url[128];
static double timeout_s = 30;
static long long count = -1;
static long long duplicates_s = -1;
static long long max_msg_size = -1;
static const char *msg_id = NULL;

/* Print an error and exit 1 */
static void
die(const char *what, natsStatus s, jsErrCode jerr)
{
	const char *detail = nats_GetLastError(NULL);

	fprintf(stderr, "nats_tool: %s: %s (JetStream error %d)%s%s\n", what,
			natsStatus_GetText(s), (int) jerr, detail ? ": " : "", detail ? detail : "");
	exit(1);
}

/* Bad arguments: usage, exit 2 */
static void
usage(void)
{
	fprintf(stderr, "usage: nats_tool --port P wait|stream-add|consume|stream-info|pub ... (see nats_tool.c)\n");
	exit(2);
}

/* Print a JSON value as one line and free it */
static void
print_json(json_t *j)
{
	char	   *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);

	puts(s);
	free(s);
	json_decref(j);
}

/* Seconds on a monotonic clock */
static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Connect (1 s timeout, no reconnect) and make a JetStream context */
static natsStatus
connect_js(natsConnection **nc, jsCtx **js)
{
	natsOptions *opts = NULL;
	natsStatus	s;

	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(opts, url);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, 1000);
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(opts, false);
	if (s == NATS_OK)
		s = natsConnection_Connect(nc, opts);
	if (s == NATS_OK)
		s = natsConnection_JetStream(js, *nc, NULL);
	natsOptions_Destroy(opts);
	return s;
}

/* wait */
static int
cmd_wait(void)
{
	double		end = now_s() + timeout_s;

	for (;;)
	{
		natsConnection *nc = NULL;
		jsCtx	   *js = NULL;
		jsAccountInfo *ai = NULL;
		jsErrCode	jerr = 0;
		natsStatus	s = connect_js(&nc, &js);

		if (s == NATS_OK)
			s = js_GetAccountInfo(&ai, js, NULL, &jerr);
		if (ai)
			jsAccountInfo_Destroy(ai);
		jsCtx_Destroy(js);
		natsConnection_Destroy(nc);
		if (s == NATS_OK)
			return 0;
		if (now_s() > end)
			die("wait", s, jerr);
		usleep(100000);
	}
}

/* stream-add NAME SUBJECT... */
static int
cmd_stream_add(jsCtx *js, const char *name, char **subjects, int nsubjects)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;

	if (nsubjects < 1)
		usage();
	jsStreamConfig_Init(&cfg);
	cfg.Name = name;
	cfg.Subjects = (const char **) subjects;
	cfg.SubjectsLen = nsubjects;
	cfg.Storage = js_FileStorage;
	if (duplicates_s >= 0)
		cfg.Duplicates = duplicates_s * 1000000000LL;
	if (max_msg_size > 0)
		cfg.MaxMsgSize = (int32_t) max_msg_size;
	s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	if (s != NATS_OK && jerr == JSStreamNameExistErr)
	{
		jerr = 0;
		s = js_UpdateStream(&si, js, &cfg, NULL, &jerr);
	}
	if (s != NATS_OK)
		die("stream-add", s, jerr);
	jsStreamInfo_Destroy(si);
	return 0;
}

/* The state of a stream; exits on error */
static jsStreamState
stream_state(jsCtx *js, const char *name)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	jsStreamState st;
	natsStatus	s;

	s = js_GetStreamInfo(&si, js, name, NULL, &jerr);
	if (s != NATS_OK)
		die("stream info", s, jerr);
	st = si->State;
	st.Subjects = NULL;
	st.Deleted = NULL;
	st.Lost = NULL;
	jsStreamInfo_Destroy(si);
	return st;
}

/* stream-info NAME */
static int
cmd_stream_info(jsCtx *js, const char *name)
{
	jsStreamState st = stream_state(js, name);

	print_json(json_pack("{s:I,s:I,s:I,s:I}",
						 "messages", (json_int_t) st.Msgs,
						 "bytes", (json_int_t) st.Bytes,
						 "first_seq", (json_int_t) st.FirstSeq,
						 "last_seq", (json_int_t) st.LastSeq));
	return 0;
}

/* Print one stored message */
static void
print_msg(natsMsg *m, uint64_t seq)
{
	json_t	   *headers = json_object();
	const char **keys = NULL;
	int			nkeys = 0;
	int			i;
	const char *data = natsMsg_GetData(m);

	if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK)
	{
		for (i = 0; i < nkeys; i++)
		{
			const char *value = NULL;

			natsMsgHeader_Get(m, keys[i], &value);
			json_object_set_new(headers, keys[i], json_string(value ? value : ""));
		}
		free((void *) keys);
	}
	print_json(json_pack("{s:s,s:I,s:o,s:s%}",
						 "subject", natsMsg_GetSubject(m),
						 "stream_seq", (json_int_t) seq,
						 "headers", headers,
						 "data", data ? data : "", (size_t) natsMsg_GetDataLength(m)));
}

/* consume NAME */
static int
cmd_consume(jsCtx *js, const char *name)
{
	double		end = now_s() + timeout_s;
	uint64_t	next = 0;
	long long	printed = 0;

	for (;;)
	{
		jsStreamState st = stream_state(js, name);

		if (next < st.FirstSeq)
			next = st.FirstSeq;
		for (; next >= 1 && next <= st.LastSeq && (count < 0 || printed < count); next++)
		{
			natsMsg    *m = NULL;
			jsErrCode	jerr = 0;
			natsStatus	s = js_GetMsg(&m, js, name, next, NULL, &jerr);

			if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
				continue;		/* deleted */
			if (s != NATS_OK)
				die("get message", s, jerr);
			print_msg(m, next);
			natsMsg_Destroy(m);
			printed++;
		}
		fflush(stdout);
		if (count < 0 || printed >= count)
			return 0;
		if (now_s() > end)
		{
			fprintf(stderr, "nats_tool: consume: %lld of %lld messages within %g s\n",
					printed, count, timeout_s);
			return 1;
		}
		usleep(100000);
	}
}

/* pub SUBJECT DATA */
static int
cmd_pub(jsCtx *js, const char *subject, const char *data)
{
	jsPubOptions po;
	jsPubAck   *pa = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;

	jsPubOptions_Init(&po);
	po.MsgId = msg_id;
	s = js_Publish(&pa, js, subject, data, (int) strlen(data), &po, &jerr);
	if (s != NATS_OK)
		die("pub", s, jerr);
	print_json(json_pack("{s:I,s:b}", "stream_seq", (json_int_t) pa->Sequence,
						 "duplicate", pa->Duplicate));
	jsPubAck_Destroy(pa);
	return 0;
}

int
main(int argc, char **argv)
{
	char	  **pos = calloc(argc + 1, sizeof(char *));
	int			npos = 0;
	int			i;
	natsConnection *nc = NULL;
	jsCtx	   *js = NULL;
	natsStatus	s;
	int			rc;

	strcpy(url, "nats://127.0.0.1:4222");
	for (i = 1; i < argc; i++)
	{
		const char *a = argv[i];

		if (i + 1 < argc && strcmp(a, "--port") == 0)
			snprintf(url, sizeof(url), "nats://127.0.0.1:%d", atoi(argv[++i]));
		else if (i + 1 < argc && strcmp(a, "--url") == 0)
			snprintf(url, sizeof(url), "%s", argv[++i]);
		else if (i + 1 < argc && strcmp(a, "--timeout") == 0)
			timeout_s = atof(argv[++i]);
		else if (i + 1 < argc && strcmp(a, "--count") == 0)
			count = atoll(argv[++i]);
		else if (i + 1 < argc && strcmp(a, "--duplicates") == 0)
			duplicates_s = atoll(argv[++i]);
		else if (i + 1 < argc && strcmp(a, "--max-msg-size") == 0)
			max_msg_size = atoll(argv[++i]);
		else if (i + 1 < argc && strcmp(a, "--msg-id") == 0)
			msg_id = argv[++i];
		else if (strncmp(a, "--", 2) == 0)
			usage();
		else
			pos[npos++] = argv[i];
	}
	if (npos < 1)
		usage();
	if (strcmp(pos[0], "wait") == 0 && npos == 1)
		return cmd_wait();
	s = connect_js(&nc, &js);
	if (s != NATS_OK)
		die("connect", s, 0);
	if (strcmp(pos[0], "stream-add") == 0 && npos >= 3)
		rc = cmd_stream_add(js, pos[1], pos + 2, npos - 2);
	else if (strcmp(pos[0], "consume") == 0 && npos == 2)
		rc = cmd_consume(js, pos[1]);
	else if (strcmp(pos[0], "stream-info") == 0 && npos == 2)
		rc = cmd_stream_info(js, pos[1]);
	else if (strcmp(pos[0], "pub") == 0 && npos == 3)
		rc = cmd_pub(js, pos[1], pos[2]);
	else
		usage();
	fflush(stdout);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	free(pos);
	return rc;
}
