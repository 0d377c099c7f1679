/*
 * nats_tool.c
 *		What the NATS TAP tests need of a JetStream server, with nats.c
 *		(there is no `nats` CLI in Debian):
 *
 *	nats_tool URL wait MS
 *		connect and ask for JetStream account info until it answers, at most
 *		MS milliseconds; exit 0 when it did
 *	nats_tool URL stream NAME DUPLICATE_WINDOW_MS MAX_MSG_SIZE SUBJECT...
 *		create stream NAME (file storage) taking SUBJECTs, with that
 *		duplicate window (0: the server's default) and largest message
 *		(-1: no limit)
 *	nats_tool URL dump NAME
 *		print every message of stream NAME, in stream order, one JSON object
 *		a line: {"seq":N,"subject":"...","headers":{"name":"value",...},
 *		"data":"..."} (a header with several values: the first)
 *	nats_tool URL pub SUBJECT DATA [MSGID]
 *		publish one message to JetStream and wait for its acknowledgement;
 *		prints "seq=N duplicate=0|1"
 *
 * Errors go to stderr, with exit code 1.
 */
#include <nats/nats.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Print an error and exit */
static void
die(const char *what, natsStatus s, jsErrCode jerr)
{
	fprintf(stderr, "nats_tool: %s: %s (jetstream error %d): %s\n", what,
			natsStatus_GetText(s), (int) jerr, nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
	exit(1);
}

/* Print a JSON string of len bytes */
static void
json_string(const char *s, int len)
{
	int			i;

	putchar('"');
	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/* Connect with a 1 s timeout and make a JetStream context */
static natsStatus
connect_js(const char *url, natsConnection **nc, jsCtx **js)
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

/* Milliseconds on a monotonic clock */
static long long
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* wait MS */
static int
cmd_wait(const char *url, long long ms)
{
	long long	end = now_ms() + ms;

	for (;;)
	{
		natsConnection *nc = NULL;
		jsCtx	   *js = NULL;
		jsAccountInfo *ai = NULL;
		jsErrCode	jerr = 0;
		natsStatus	s = connect_js(url, &nc, &js);

		if (s == NATS_OK)
			s = js_GetAccountInfo(&ai, js, NULL, &jerr);
		if (ai)
			jsAccountInfo_Destroy(ai);
		jsCtx_Destroy(js);
		natsConnection_Destroy(nc);
		if (s == NATS_OK)
			return 0;
		if (now_ms() > end)
			die("wait", s, jerr);
		usleep(50000);
	}
}

/* stream NAME DUPLICATE_WINDOW_MS MAX_MSG_SIZE SUBJECT... */
static int
cmd_stream(jsCtx *js, const char *name, long long dupe_ms, int max_msg, char **subjects, int nsubjects)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;

	jsStreamConfig_Init(&cfg);
	cfg.Name = name;
	cfg.Subjects = (const char **) subjects;
	cfg.SubjectsLen = nsubjects;
	cfg.Storage = js_FileStorage;
	if (dupe_ms > 0)
		cfg.Duplicates = dupe_ms * 1000000LL;
	if (max_msg > 0)
		cfg.MaxMsgSize = max_msg;
	s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	if (s != NATS_OK)
		die("add stream", s, jerr);
	jsStreamInfo_Destroy(si);
	return 0;
}

/* dump NAME */
static int
cmd_dump(jsCtx *js, const char *name)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;
	uint64_t	seq;
	uint64_t	first;
	uint64_t	last;

	s = js_GetStreamInfo(&si, js, name, NULL, &jerr);
	if (s != NATS_OK)
		die("stream info", s, jerr);
	first = si->State.FirstSeq;
	last = si->State.LastSeq;
	jsStreamInfo_Destroy(si);
	for (seq = first; seq >= 1 && seq <= last; seq++)
	{
		natsMsg    *m = NULL;
		const char **keys = NULL;
		int			nkeys = 0;
		int			i;

		s = js_GetMsg(&m, js, name, seq, NULL, &jerr);
		if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
			continue;			/* deleted */
		if (s != NATS_OK)
			die("get message", s, jerr);
		printf("{\"seq\":%llu,\"subject\":", (unsigned long long) seq);
		json_string(natsMsg_GetSubject(m), (int) strlen(natsMsg_GetSubject(m)));
		printf(",\"headers\":{");
		if (natsMsgHeader_Keys(m, &keys, &nkeys) == NATS_OK)
		{
			for (i = 0; i < nkeys; i++)
			{
				const char *value = NULL;

				natsMsgHeader_Get(m, keys[i], &value);
				if (i > 0)
					putchar(',');
				json_string(keys[i], (int) strlen(keys[i]));
				putchar(':');
				json_string(value ? value : "", value ? (int) strlen(value) : 0);
			}
			free((void *) keys);
		}
		printf("},\"data\":");
		json_string(natsMsg_GetData(m) ? natsMsg_GetData(m) : "", natsMsg_GetDataLength(m));
		printf("}\n");
		natsMsg_Destroy(m);
	}
	return 0;
}

/* pub SUBJECT DATA [MSGID] */
static int
cmd_pub(jsCtx *js, const char *subject, const char *data, const char *msgid)
{
	jsPubOptions po;
	jsPubAck   *pa = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;

	jsPubOptions_Init(&po);
	po.MsgId = msgid;
	s = js_Publish(&pa, js, subject, data, (int) strlen(data), &po, &jerr);
	if (s != NATS_OK)
		die("publish", s, jerr);
	printf("seq=%llu duplicate=%d\n", (unsigned long long) pa->Sequence, pa->Duplicate ? 1 : 0);
	jsPubAck_Destroy(pa);
	return 0;
}

int
main(int argc, char **argv)
{
	natsConnection *nc = NULL;
	jsCtx	   *js = NULL;
	natsStatus	s;
	int			rc = 1;

	if (argc < 3)
	{
		fprintf(stderr, "usage: nats_tool URL wait|stream|dump|pub ...\n");
		return 1;
	}
	if (strcmp(argv[2], "wait") == 0 && argc == 4)
		return cmd_wait(argv[1], atoll(argv[3]));
	s = connect_js(argv[1], &nc, &js);
	if (s != NATS_OK)
		die("connect", s, 0);
	if (strcmp(argv[2], "stream") == 0 && argc >= 7)
		rc = cmd_stream(js, argv[3], atoll(argv[4]), atoi(argv[5]), argv + 6, argc - 6);
	else if (strcmp(argv[2], "dump") == 0 && argc == 4)
		rc = cmd_dump(js, argv[3]);
	else if (strcmp(argv[2], "pub") == 0 && (argc == 5 || argc == 6))
		rc = cmd_pub(js, argv[3], argv[4], argc == 6 ? argv[5] : NULL);
	else
		fprintf(stderr, "nats_tool: bad arguments\n");
	fflush(stdout);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	return rc;
}
