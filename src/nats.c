/*
 * nats.c
 *		The relay's NATS JetStream sink (nats.c, the NATS C client): one
 *		connection, messages published asynchronously to the subject
 *		"<topic>.<key>", each answered by the stream's acknowledgement.
 *
 * Threads: nats.c reads the socket, flushes and runs our callbacks on
 * threads of its own, which must never call PostgreSQL (no palloc, no
 * elog).  The callbacks never see an EsMessage: every message sent is an
 * entry of a ring (es_ring, plain malloc'd memory guarded by es_mutex) that
 * holds the natsMsg pointer the library hands back to the acknowledgement
 * handler.  The handler finds its entry by that pointer among the entries
 * still pending, marks it answered with the outcome, queues its ring
 * position and writes a byte to a pipe (what socket() returns); serve(), on
 * the worker's thread, applies queued outcomes to the EsMessages.  Every
 * callback carries the generation of the connection it was registered for
 * (its closure): a callback of an older connection, or an acknowledgement
 * for an entry that was purged or stopped, finds nothing and is ignored, so
 * no answer can reach an EsMessage after purge() failed it or stop()
 * returned.  A natsMsg stays allocated until its handler destroyed it, so
 * its address cannot be reused by a newer message while it can still be
 * answered.
 *
 * Order: messages are published in the order send() is called, on one
 * connection, so a stream stores a key's messages in that order.  The
 * connection never reconnects by itself: nats.c would buffer new publishes
 * while reconnecting and send them after the reconnect, behind messages lost
 * with the old socket, so that a key's later message could be stored before
 * an earlier one that is sent again.  Instead a lost connection makes
 * failed() true: the relay fails what was not answered and starts the sink
 * again, which reconnects at most once a second, each attempt bounded by a
 * 1 s connect timeout.
 *
 * Deduplication: Nats-Msg-Id is the message's ce_id when it has one, so a
 * message sent again within the stream's duplicate window is dropped by the
 * server (acknowledged as a duplicate).  Messages without ce_id (publish()
 * without that header) carry no Nats-Msg-Id: outbox ids restart when the
 * extension is created again, so they would not identify a message.
 *
 * Secrets: eventstore.nats_url may carry a user and password or a token;
 * only scrubbed URLs (EsScrubUrl, sink.c) are ever logged.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/pmsignal.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "sink.h"

#include <nats/nats.h>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

/* Error codes of this sink (EsMessage.err); 0 is delivered */
#define ES_NATS_LOST			1	/* the connection was lost before the answer */
#define ES_NATS_TIMEOUT			2	/* no answer within delivery_timeout */
#define ES_NATS_NO_STREAM		3	/* no stream takes the subject */
#define ES_NATS_MAX_PAYLOAD		4	/* larger than the server's max_payload */
#define ES_NATS_BAD_SUBJECT		5	/* the topic makes no valid subject */
#define ES_NATS_BAD_HEADER		6	/* a header NATS cannot carry */
#define ES_NATS_NOT_CONNECTED	7	/* publish refused: connection closed */
#define ES_NATS_STATUS_BASE		1000	/* + another natsStatus */
#define ES_NATS_JS_BASE			100000	/* + a JetStream API error code */

/* How many messages may be in flight (entries of the ring) */
#define ES_NATS_RING_SIZE		65536

/* How long a connection attempt may take, and how often one is made */
#define ES_NATS_CONNECT_TIMEOUT_MS	1000
#define ES_NATS_RETRY_INTERVAL_MS	1000
/* The longest a write to the server may block (the server stopped reading) */
#define ES_NATS_WRITE_DEADLINE_MS	1000
#define ES_NATS_PROBE_TIMEOUT_MS	200

/* The longest a shutdown waits for acknowledgements */
#define ES_NATS_SHUTDOWN_FLUSH_MS	5000

/* What became of a message in the ring */
typedef enum EsNatsEntryState
{
	ES_NATS_FREE = 0,			/* settled, purged or stopped: ignored */
	ES_NATS_PENDING,			/* published, not answered */
	ES_NATS_ANSWERED			/* answered, outcome queued for serve() */
} EsNatsEntryState;

/* One message in flight */
typedef struct EsNatsEntry
{
	natsMsg    *nm;				/* identity only: never dereferenced here */
	EsMessage  *msg;			/* touched only on the worker's thread */
	EsNatsEntryState state;
	int			err;
} EsNatsEntry;

/*
 * Shared with nats.c's threads, under es_mutex: the ring, the queue of
 * answered positions, the generation and what the connection callbacks
 * noted
 */
static pthread_mutex_t es_mutex = PTHREAD_MUTEX_INITIALIZER;
static EsNatsEntry *es_ring = NULL;
static uint64 es_head = 0;		/* oldest entry that may be in use */
static uint64 es_tail = 0;		/* next entry to use */
static uint64 es_first_pending = 0;	/* no pending entry before it */
static uint64 *es_answered = NULL;	/* positions answered, for serve() */
static int	es_nanswered = 0;
static uintptr_t es_generation = 0;
static bool es_conn_lost = false;
static natsStatus es_async_error = NATS_OK;

/* The pipe the callbacks write to when they queue something: {read, write} */
static int	es_pipe[2] = {-1, -1};

/* Worker-side state */
static bool es_running = false;
static natsConnection *es_nc = NULL;
static jsCtx *es_js = NULL;
static bool es_first_publish = true;	/* nats.c starts a thread at the first */
static int	es_pending = 0;		/* sent, outcome not applied */
static bool es_down = false;
static bool es_restart = false;	/* purge() asks for a new connection */
static TimestampTz es_last_attempt = 0;
static natsStatus es_last_connect_error = NATS_OK;
static natsStatus es_last_async_logged = NATS_OK;
static bool es_lost_logged = false;

/* The settings the sink was started with, and the URL they gave */
static char *es_started_url = NULL;
static char *es_started_credentials = NULL;
static char *es_url = NULL;

/* Whether eventstore.nats_url is set */
static bool
EsNatsConfigured(void)
{
	return es_nats_url != NULL && es_nats_url[0] != '\0';
}

/* Whether the settings changed since start() */
static bool
EsNatsSettingsChanged(void)
{
	return es_running &&
		(strcmp(es_started_url, es_nats_url) != 0 ||
		 strcmp(es_started_credentials, es_nats_credentials) != 0);
}

/* Wake serve(): a byte in the pipe (callback threads; never blocks) */
static void
EsNatsWake(void)
{
	char		c = 0;
	ssize_t		rc;

	/* A full pipe already wakes serve(): nothing to do then */
	if (es_pipe[1] >= 0)
	{
		rc = write(es_pipe[1], &c, 1);
		(void) rc;
	}
}

/*
 * Acknowledgement handler (a nats.c thread): find the entry of 'nm' among
 * those pending, note its outcome for serve(), destroy the message.  Never
 * calls PostgreSQL.
 */
static void
EsNatsAckHandler(jsCtx *js, natsMsg *nm, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	int			err = 0;
	uint64		i;

	if (pae != NULL)
	{
		if (pae->Err == NATS_NO_RESPONDERS)
			err = ES_NATS_NO_STREAM;
		else if (pae->ErrCode != 0)
			err = ES_NATS_JS_BASE + (int) pae->ErrCode;
		else if (pae->Err == NATS_TIMEOUT)
			err = ES_NATS_TIMEOUT;
		else if (pae->Err == NATS_CONNECTION_CLOSED)
			err = ES_NATS_LOST;
		else
			err = ES_NATS_STATUS_BASE + (int) pae->Err;
	}
	pthread_mutex_lock(&es_mutex);
	if ((uintptr_t) closure == es_generation && es_ring != NULL)
	{
		/*
		 * Answers come mostly in order: the entry is near the oldest
		 * pending one, which is kept track of so that entries answered and
		 * not yet served are not looked at again and again
		 */
		while (es_first_pending < es_tail &&
			   es_ring[es_first_pending % ES_NATS_RING_SIZE].state != ES_NATS_PENDING)
			es_first_pending++;
		for (i = Max(es_head, es_first_pending); i < es_tail; i++)
		{
			EsNatsEntry *e = &es_ring[i % ES_NATS_RING_SIZE];

			if (e->state == ES_NATS_PENDING && e->nm == nm)
			{
				e->state = ES_NATS_ANSWERED;
				e->err = err;
				es_answered[es_nanswered++] = i;
				EsNatsWake();
				break;
			}
		}
	}
	pthread_mutex_unlock(&es_mutex);
	natsMsg_Destroy(nm);
}

/* The connection was lost or closed (a nats.c thread) */
static void
EsNatsClosed(natsConnection *nc, void *closure)
{
	pthread_mutex_lock(&es_mutex);
	if ((uintptr_t) closure == es_generation)
	{
		es_conn_lost = true;
		EsNatsWake();
	}
	pthread_mutex_unlock(&es_mutex);
}

/* An asynchronous error of the connection (a nats.c thread): noted for serve() to log */
static void
EsNatsAsyncError(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
	pthread_mutex_lock(&es_mutex);
	if ((uintptr_t) closure == es_generation)
	{
		es_async_error = err;
		EsNatsWake();
	}
	pthread_mutex_unlock(&es_mutex);
}

/*
 * Block every signal in this thread while nats.c may start threads, so
 * that they inherit a full mask and PostgreSQL's signal handlers only run
 * on the worker's thread
 */
static void
EsNatsBlockSignals(sigset_t *saved)
{
	sigset_t	all;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, saved);
}

/* Undo EsNatsBlockSignals */
static void
EsNatsRestoreSignals(const sigset_t *saved)
{
	pthread_sigmask(SIG_SETMASK, saved, NULL);
}

/* The ring, the answer queue and the pipe, made once per process */
static bool
EsNatsInitShared(void)
{
	if (es_ring == NULL)
	{
		es_ring = calloc(ES_NATS_RING_SIZE, sizeof(EsNatsEntry));
		es_answered = calloc(ES_NATS_RING_SIZE, sizeof(uint64));
		if (es_ring == NULL || es_answered == NULL)
		{
			free(es_ring);
			free(es_answered);
			es_ring = NULL;
			es_answered = NULL;
			ereport(LOG,
					(errmsg("eventstore relay: out of memory for the NATS sink")));
			return false;
		}
	}
	/* Never closed: a late callback may still write to it */
	if (es_pipe[0] < 0)
	{
		if (!EsOpenSignalPipe(es_pipe, "NATS acknowledgements"))
			return false;
	}
	return true;
}

/*
 * Connect, bounded by ES_NATS_CONNECT_TIMEOUT_MS; on failure log the
 * error once (until it changes) and note the server down
 */
static bool
EsNatsConnect(void)
{
	natsOptions *opts = NULL;
	natsConnection *nc = NULL;
	jsCtx	   *js = NULL;
	jsOptions	jsopts;
	natsStatus	s;
	sigset_t	saved;
	void	   *gen;

	Assert(es_nc == NULL);
	es_last_attempt = GetCurrentTimestamp();
	pthread_mutex_lock(&es_mutex);
	es_generation++;
	gen = (void *) es_generation;
	es_conn_lost = false;
	es_async_error = NATS_OK;
	pthread_mutex_unlock(&es_mutex);

	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	EsNatsBlockSignals(&saved);
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetURL(opts, es_url);
	if (s == NATS_OK)
		s = natsOptions_SetName(opts, "eventstore-relay");
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, ES_NATS_CONNECT_TIMEOUT_MS);
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(opts, false);
	/* A server that stops reading must not block the worker (and every sink) */
	if (s == NATS_OK)
		s = natsOptions_SetWriteDeadline(opts, ES_NATS_WRITE_DEADLINE_MS);
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(opts, 5000);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(opts, 2);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(opts, EsNatsClosed, gen);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(opts, EsNatsClosed, gen);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(opts, EsNatsAsyncError, gen);
	if (s == NATS_OK && es_started_credentials[0] != '\0')
		s = natsOptions_SetUserCredentialsFromFiles(opts, es_started_credentials, NULL);
	if (s == NATS_OK)
		s = natsConnection_Connect(&nc, opts);
	if (s == NATS_OK)
	{
		jsOptions_Init(&jsopts);
		jsopts.PublishAsync.AckHandler = EsNatsAckHandler;
		jsopts.PublishAsync.AckHandlerClosure = gen;
		/* Never stall: the ring is smaller */
		jsopts.PublishAsync.MaxPending = ES_NATS_RING_SIZE + 1;
		s = natsConnection_JetStream(&js, nc, &jsopts);
	}
	EsNatsRestoreSignals(&saved);
	pgstat_report_wait_end();
	natsOptions_Destroy(opts);

	if (s != NATS_OK)
	{
		if (nc != NULL)
			natsConnection_Destroy(nc);
		es_down = true;
		if (s != es_last_connect_error)
		{
			char	   *scrubbed = EsScrubUrl(es_url);

			ereport(LOG,
					(errmsg("eventstore relay: could not connect to NATS at %s: %s",
							scrubbed, natsStatus_GetText(s))));
			pfree(scrubbed);
		}
		es_last_connect_error = s;
		return false;
	}
	if (es_last_connect_error != NATS_OK || es_down)
	{
		char	   *scrubbed = EsScrubUrl(es_url);

		ereport(LOG,
				(errmsg("eventstore relay: connected to NATS at %s", scrubbed)));
		pfree(scrubbed);
	}
	es_last_connect_error = NATS_OK;
	es_lost_logged = false;
	es_nc = nc;
	es_js = js;
	es_first_publish = true;
	es_restart = false;
	return true;
}

/*
 * Close the connection.  The generation moves on first, so callbacks still
 * running or coming find nothing to answer; pending entries are left as
 * they are (the caller frees them).
 */
static void
EsNatsDisconnect(void)
{
	sigset_t	saved;

	pthread_mutex_lock(&es_mutex);
	es_generation++;
	es_conn_lost = false;
	pthread_mutex_unlock(&es_mutex);
	if (es_nc == NULL)
		return;
	EsNatsBlockSignals(&saved);
	if (es_js != NULL)
		jsCtx_Destroy(es_js);
	natsConnection_Destroy(es_nc);
	EsNatsRestoreSignals(&saved);
	es_js = NULL;
	es_nc = NULL;
}

/*
 * Start: check the settings, then connect (or begin to: a server that
 * cannot be reached is tried again by send() and probe())
 */
static bool
EsNatsStart(void)
{
	char	   *url;

	Assert(!es_running);
	if (!EsNatsInitShared())
		return false;
	url = EsReadSettingFile(es_nats_url, "eventstore.nats_url");
	if (url == NULL)
		return false;
	if (url[0] == '\0')
	{
		ereport(LOG,
				(errmsg("eventstore relay: the file of eventstore.nats_url holds no URL")));
		return false;
	}
	if (es_nats_credentials[0] != '\0' && access(es_nats_credentials, R_OK) != 0)
	{
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("eventstore relay: could not read NATS credentials file \"%s\": %m",
						es_nats_credentials)));
		pfree(url);
		return false;
	}
	es_url = MemoryContextStrdup(TopMemoryContext, url);
	pfree(url);
	es_started_url = MemoryContextStrdup(TopMemoryContext, es_nats_url);
	es_started_credentials = MemoryContextStrdup(TopMemoryContext, es_nats_credentials);
	es_running = true;
	es_pending = 0;
	es_down = false;
	es_restart = false;
	es_last_connect_error = NATS_OK;
	es_last_async_logged = NATS_OK;
	pthread_mutex_lock(&es_mutex);
	es_head = es_tail = es_first_pending = 0;
	es_nanswered = 0;
	pthread_mutex_unlock(&es_mutex);
	(void) EsNatsConnect();
	return true;
}

/* Apply the queued answers to their messages; true if one failed */
static bool
EsNatsApplyAnswers(void)
{
	bool		failed = false;
	int			i;

	pthread_mutex_lock(&es_mutex);
	for (i = 0; i < es_nanswered; i++)
	{
		EsNatsEntry *e = &es_ring[es_answered[i] % ES_NATS_RING_SIZE];

		if (e->state != ES_NATS_ANSWERED)
			continue;
		e->msg->err = e->err;
		e->msg->done = true;
		e->state = ES_NATS_FREE;
		e->nm = NULL;
		e->msg = NULL;
		es_pending--;
		if (e->err == 0)
			es_down = false;
		else
			failed = true;
	}
	es_nanswered = 0;
	while (es_head < es_tail && es_ring[es_head % ES_NATS_RING_SIZE].state == ES_NATS_FREE)
		es_head++;
	pthread_mutex_unlock(&es_mutex);
	return failed;
}

/*
 * Forget every message in flight: answered ones get their outcome; the
 * others get 'err' (done) if 'fail', else are left not done
 */
static void
EsNatsForgetAll(bool fail, int err)
{
	uint64		i;

	(void) EsNatsApplyAnswers();
	pthread_mutex_lock(&es_mutex);
	for (i = es_head; i < es_tail; i++)
	{
		EsNatsEntry *e = &es_ring[i % ES_NATS_RING_SIZE];

		if (e->state == ES_NATS_PENDING && fail)
		{
			e->msg->err = err;
			e->msg->done = true;
		}
		e->state = ES_NATS_FREE;
		e->nm = NULL;
		e->msg = NULL;
	}
	es_head = es_tail = es_first_pending = 0;
	es_nanswered = 0;
	pthread_mutex_unlock(&es_mutex);
	es_pending = 0;
}

/* Disconnect at once; unanswered messages are left not done */
static void
EsNatsStop(void)
{
	if (!es_running)
		return;
	EsNatsDisconnect();
	EsNatsForgetAll(false, 0);
	es_running = false;
	es_restart = false;
	pfree(es_url);
	pfree(es_started_url);
	pfree(es_started_credentials);
	es_url = es_started_url = es_started_credentials = NULL;
}

/* Whether the sink was started and not stopped */
static bool
EsNatsRunning(void)
{
	return es_running;
}

/* Whether the connection was lost (or purge() asked for a new one) */
static bool
EsNatsFailed(void)
{
	bool		lost;

	if (!es_running)
		return false;
	pthread_mutex_lock(&es_mutex);
	lost = es_conn_lost;
	pthread_mutex_unlock(&es_mutex);
	if (lost && !es_lost_logged)
	{
		char	   *scrubbed = EsScrubUrl(es_url);

		ereport(LOG,
				(errmsg("eventstore relay: lost the connection to NATS at %s", scrubbed)));
		pfree(scrubbed);
		es_lost_logged = true;
		es_down = true;
	}
	return lost || es_restart;
}

/* Whether a header name can go into a NATS header block (printable, no colon) */
static bool
EsNatsHeaderNameOk(const char *name)
{
	const unsigned char *c;

	if (name[0] == '\0')
		return false;
	for (c = (const unsigned char *) name; *c != '\0'; c++)
		if (*c <= ' ' || *c >= 127 || *c == ':')
			return false;
	return true;
}

/*
 * Whether the key goes into the subject unchanged: one or more letters,
 * digits, '-' and '_'
 */
static bool
EsNatsPlainKey(const char *key)
{
	const char *c;

	if (key[0] == '\0')
		return false;
	for (c = key; *c != '\0'; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
			  (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
			return false;
	return true;
}

/*
 * The subject of a message: "<topic>.<key>", the key as it is if plain,
 * else "~" followed by its bytes in unpadded base64url (RFC 4648 §5); no
 * key: "<topic>" alone.  NULL if the topic makes no valid subject (an
 * empty token: a dot at either end or two in a row).
 */
static char *
EsNatsSubject(const EsMessage *msg)
{
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	StringInfoData out;
	const char *t = msg->topic;
	const unsigned char *k;
	size_t		len;
	size_t		i;

	if (t == NULL || t[0] == '\0' || t[0] == '.' || t[strlen(t) - 1] == '.' ||
		strstr(t, "..") != NULL || strpbrk(t, "*> \t\r\n") != NULL)
		return NULL;
	initStringInfo(&out);
	appendStringInfoString(&out, t);
	if (msg->key == NULL)
		return out.data;
	appendStringInfoChar(&out, '.');
	if (EsNatsPlainKey(msg->key))
	{
		appendStringInfoString(&out, msg->key);
		return out.data;
	}
	appendStringInfoChar(&out, '~');
	k = (const unsigned char *) msg->key;
	len = strlen(msg->key);
	for (i = 0; i + 2 < len; i += 3)
	{
		appendStringInfoChar(&out, b64[k[i] >> 2]);
		appendStringInfoChar(&out, b64[((k[i] & 3) << 4) | (k[i + 1] >> 4)]);
		appendStringInfoChar(&out, b64[((k[i + 1] & 15) << 2) | (k[i + 2] >> 6)]);
		appendStringInfoChar(&out, b64[k[i + 2] & 63]);
	}
	if (len - i == 1)
	{
		appendStringInfoChar(&out, b64[k[i] >> 2]);
		appendStringInfoChar(&out, b64[(k[i] & 3) << 4]);
	}
	else if (len - i == 2)
	{
		appendStringInfoChar(&out, b64[k[i] >> 2]);
		appendStringInfoChar(&out, b64[((k[i] & 3) << 4) | (k[i + 1] >> 4)]);
		appendStringInfoChar(&out, b64[(k[i + 1] & 15) << 2]);
	}
	return out.data;
}

/*
 * The natsMsg of a message: subject, body, headers per the CloudEvents
 * NATS binding (ce_X as ce-X, others unchanged), Nats-Msg-Id = ce_id.
 * 0, and *out set, or the error code of a local refusal.
 */
static int
EsNatsBuild(const EsMessage *msg, natsMsg **out)
{
	char	   *subject = EsNatsSubject(msg);
	natsMsg    *nm = NULL;
	int			i;
	int			err = 0;

	*out = NULL;
	if (subject == NULL)
		return ES_NATS_BAD_SUBJECT;
	if (natsMsg_Create(&nm, subject, NULL, msg->value,
					   msg->value ? (int) strlen(msg->value) : 0) != NATS_OK)
	{
		pfree(subject);
		return ES_NATS_STATUS_BASE + NATS_NO_MEMORY;
	}
	pfree(subject);
	for (i = 0; i < msg->nheaders && err == 0; i++)
	{
		const char *name = msg->headers[i].name;
		const char *value = msg->headers[i].value ? msg->headers[i].value : "";
		char	   *mapped = NULL;

		if (!EsNatsHeaderNameOk(name) || strpbrk(value, "\r\n") != NULL)
			err = ES_NATS_BAD_HEADER;
		else
		{
			if (strncmp(name, "ce_", 3) == 0)
			{
				mapped = psprintf("ce-%s", name + 3);
				name = mapped;
			}
			if (natsMsgHeader_Add(nm, name, value) != NATS_OK)
				err = ES_NATS_STATUS_BASE + NATS_NO_MEMORY;
		}
		if (mapped)
			pfree(mapped);
	}
	if (err == 0 && msg->ce_id != NULL &&
		natsMsgHeader_Set(nm, "Nats-Msg-Id", msg->ce_id) != NATS_OK)
		err = ES_NATS_STATUS_BASE + NATS_NO_MEMORY;
	if (err != 0)
	{
		natsMsg_Destroy(nm);
		return err;
	}
	*out = nm;
	return 0;
}

/* A local refusal: the message's outcome, at once */
static bool
EsNatsRefuse(EsMessage *msg, int err)
{
	msg->produced = true;
	msg->done = true;
	msg->err = err;
	return true;
}

/*
 * Reconnect lazily while not connected: at most once per
 * ES_NATS_RETRY_INTERVAL_MS
 */
static void
EsNatsMaybeReconnect(void)
{
	if (es_running && es_nc == NULL &&
		TimestampDifferenceExceeds(es_last_attempt, GetCurrentTimestamp(),
								   ES_NATS_RETRY_INTERVAL_MS))
		(void) EsNatsConnect();
}

/*
 * Publish one message asynchronously.  False, nothing done, while not
 * connected or when the ring is full; a local refusal (invalid subject or
 * header, larger than max_payload) is its outcome.
 */
static bool
EsNatsSend(EsMessage *msg)
{
	natsMsg    *nm;
	uint64		pos;
	natsStatus	s;
	int			err;
	sigset_t	saved;

	if (!es_running)
		return false;
	EsNatsMaybeReconnect();
	if (es_nc == NULL || EsNatsFailed())
		return false;
	pthread_mutex_lock(&es_mutex);
	if (es_tail - es_head >= ES_NATS_RING_SIZE)
	{
		pthread_mutex_unlock(&es_mutex);
		return false;
	}
	pthread_mutex_unlock(&es_mutex);

	err = EsNatsBuild(msg, &nm);
	if (err != 0)
		return EsNatsRefuse(msg, err);

	/* The entry exists before the message can be answered */
	pthread_mutex_lock(&es_mutex);
	pos = es_tail++;
	es_ring[pos % ES_NATS_RING_SIZE].nm = nm;
	es_ring[pos % ES_NATS_RING_SIZE].msg = msg;
	es_ring[pos % ES_NATS_RING_SIZE].err = 0;
	es_ring[pos % ES_NATS_RING_SIZE].state = ES_NATS_PENDING;
	pthread_mutex_unlock(&es_mutex);

	/* The first publish of a connection starts nats.c's reply thread */
	if (es_first_publish)
		EsNatsBlockSignals(&saved);
	s = js_PublishMsgAsync(es_js, &nm, NULL);
	if (es_first_publish)
	{
		EsNatsRestoreSignals(&saved);
		es_first_publish = false;
	}
	if (s == NATS_OK)
	{
		msg->produced = true;
		es_pending++;
		return true;
	}

	/* Not published: the message is still ours, and its entry unanswered */
	pthread_mutex_lock(&es_mutex);
	es_ring[pos % ES_NATS_RING_SIZE].state = ES_NATS_FREE;
	es_ring[pos % ES_NATS_RING_SIZE].nm = NULL;
	es_ring[pos % ES_NATS_RING_SIZE].msg = NULL;
	if (pos + 1 == es_tail)
		es_tail--;
	pthread_mutex_unlock(&es_mutex);
	natsMsg_Destroy(nm);
	if (s == NATS_MAX_PAYLOAD)
		return EsNatsRefuse(msg, ES_NATS_MAX_PAYLOAD);
	if (s == NATS_INVALID_SUBJECT)
		return EsNatsRefuse(msg, ES_NATS_BAD_SUBJECT);
	if (s == NATS_CONNECTION_CLOSED || s == NATS_CONNECTION_DISCONNECTED ||
		s == NATS_IO_ERROR || s == NATS_STALE_CONNECTION || s == NATS_TIMEOUT)
	{
		/* The connection is gone: failed() tells the relay */
		pthread_mutex_lock(&es_mutex);
		es_conn_lost = true;
		pthread_mutex_unlock(&es_mutex);
		return false;
	}
	return EsNatsRefuse(msg, ES_NATS_STATUS_BASE + (int) s);
}

/*
 * Serve what the callbacks queued: answers, a lost connection, an
 * asynchronous error (logged once until it changes); true if one failed
 */
static bool
EsNatsServe(void)
{
	char		buf[256];
	natsStatus	async;
	bool		lost;

	if (!es_running)
		return false;
	if (es_pipe[0] >= 0)
		while (read(es_pipe[0], buf, sizeof(buf)) > 0)
			;
	pthread_mutex_lock(&es_mutex);
	async = es_async_error;
	es_async_error = NATS_OK;
	lost = es_conn_lost;
	pthread_mutex_unlock(&es_mutex);
	if (async != NATS_OK && async != es_last_async_logged)
		ereport(LOG,
				(errmsg("eventstore relay: NATS error: %s", natsStatus_GetText(async))));
	if (async != NATS_OK)
		es_last_async_logged = async;
	if (lost)
		(void) EsNatsFailed();	/* logs it once */
	return EsNatsApplyAnswers();
}

/*
 * The oldest message passed delivery_timeout: fail every unanswered one
 * (late answers are ignored) and ask for a new connection
 */
static void
EsNatsPurge(void)
{
	if (!es_running)
		return;
	EsNatsForgetAll(true, ES_NATS_TIMEOUT);
	if (es_nc != NULL)
		es_restart = true;
}

/*
 * While the server seems down and nothing is in flight: reconnect if not
 * connected, else a round trip (PING) of at most ES_NATS_PROBE_TIMEOUT_MS;
 * at most once a second
 */
static void
EsNatsProbe(void)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!es_running || !es_down || es_pending > 0 ||
		!TimestampDifferenceExceeds(es_last_attempt, now, ES_NATS_RETRY_INTERVAL_MS))
		return;
	if (es_nc == NULL)
	{
		if (EsNatsConnect())
			es_down = false;
		return;
	}
	es_last_attempt = now;
	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	if (natsConnection_FlushTimeout(es_nc, ES_NATS_PROBE_TIMEOUT_MS) == NATS_OK)
		es_down = false;
	pgstat_report_wait_end();
}

/* The pipe to sleep on for answers, PGINVALID_SOCKET if not running */
static pgsocket
EsNatsSocket(void)
{
	return es_running && es_pipe[0] >= 0 ? es_pipe[0] : PGINVALID_SOCKET;
}

/* Messages sent and not yet answered */
static int
EsNatsInFlight(void)
{
	return es_running ? es_pending : 0;
}

/* Whether an error will never go away by retrying */
static bool
EsNatsIsPermanent(int err)
{
	return err == ES_NATS_MAX_PAYLOAD || err == ES_NATS_BAD_SUBJECT ||
		err == ES_NATS_BAD_HEADER ||
		err == ES_NATS_JS_BASE + JSStreamMessageExceedsMaximumErr ||
		err == ES_NATS_STATUS_BASE + NATS_INVALID_SUBJECT;
}

/* Whether an error says the server cannot be reached */
static bool
EsNatsIsUnreachable(int err)
{
	return err == ES_NATS_LOST || err == ES_NATS_TIMEOUT ||
		err == ES_NATS_NOT_CONNECTED ||
		err == ES_NATS_STATUS_BASE + NATS_CONNECTION_CLOSED ||
		err == ES_NATS_STATUS_BASE + NATS_NO_SERVER ||
		err == ES_NATS_STATUS_BASE + NATS_IO_ERROR ||
		err == ES_NATS_STATUS_BASE + NATS_STALE_CONNECTION ||
		err == ES_NATS_STATUS_BASE + NATS_TIMEOUT;
}

/* An error as last_error shows it: "NAME: text" */
static char *
EsNatsErrorText(int err)
{
	switch (err)
	{
		case 0:
			return pstrdup("NATS_OK: delivered");
		case ES_NATS_LOST:
			return pstrdup("NATS_CONNECTION_LOST: the connection to the NATS server was lost before the acknowledgement");
		case ES_NATS_TIMEOUT:
			return pstrdup("NATS_TIMEOUT: no acknowledgement within eventstore.delivery_timeout");
		case ES_NATS_NO_STREAM:
			return pstrdup("NATS_NO_STREAM: no JetStream stream takes the message's subject (no responders)");
		case ES_NATS_MAX_PAYLOAD:
			return pstrdup("NATS_MAX_PAYLOAD: the message with its headers is larger than the server's max_payload");
		case ES_NATS_BAD_SUBJECT:
			return pstrdup("NATS_INVALID_SUBJECT: the topic is no valid NATS subject (empty token, \"*\", \">\" or white space)");
		case ES_NATS_BAD_HEADER:
			return pstrdup("NATS_INVALID_HEADER: a header name is empty or has a space, colon or control character, or a value has a line break");
		case ES_NATS_NOT_CONNECTED:
			return pstrdup("NATS_NOT_CONNECTED: not connected to the NATS server");
	}
	if (err >= ES_NATS_JS_BASE)
	{
		const char *text;

		switch (err - ES_NATS_JS_BASE)
		{
			case JSStreamMessageExceedsMaximumErr:
				text = "message size exceeds the stream's maximum";
				break;
			case JSStreamStoreFailedErr:
				text = "the stream could not store the message (a limit with discard new?)";
				break;
			case JSInsufficientResourcesErr:
				text = "insufficient resources";
				break;
			case JSStreamNotFoundErr:
				text = "stream not found";
				break;
			default:
				text = "JetStream refused the message";
				break;
		}
		return psprintf("NATS_JETSTREAM_%d: %s", err - ES_NATS_JS_BASE, text);
	}
	if (err >= ES_NATS_STATUS_BASE)
		return psprintf("NATS_STATUS_%d: %s", err - ES_NATS_STATUS_BASE,
						natsStatus_GetText((natsStatus) (err - ES_NATS_STATUS_BASE)));
	return psprintf("NATS_ERROR_%d: unknown error", err);
}

/* Whether the server is known to be down */
static bool
EsNatsDown(void)
{
	return es_running && es_down;
}

/* The relay saw messages fail only because the server could not be reached */
static void
EsNatsSetDown(void)
{
	es_down = true;
}

/*
 * Process exit: wait at most min(delivery_timeout, 5 s) for what is in
 * flight, then disconnect; what was not acknowledged stays in the outbox
 */
static void
EsNatsAtExit(void)
{
	TimestampTz start = GetCurrentTimestamp();
	int			wait_ms = Min(es_delivery_timeout, ES_NATS_SHUTDOWN_FLUSH_MS);
	int			left;

	if (!es_running)
		return;
	(void) EsNatsServe();
	while (es_pending > 0 && es_nc != NULL && !EsNatsFailed() && PostmasterIsAlive() &&
		   !TimestampDifferenceExceeds(start, GetCurrentTimestamp(), wait_ms))
	{
		struct pollfd pfd;

		pfd.fd = es_pipe[0];
		pfd.events = POLLIN;
		pfd.revents = 0;
		(void) poll(&pfd, 1, 10);
		(void) EsNatsServe();
	}
	left = es_pending;
	if (left > 0)
		ereport(LOG,
				(errmsg_plural("eventstore relay: %d NATS message was left unacknowledged at shutdown",
							   "eventstore relay: %d NATS messages were left unacknowledged at shutdown",
							   left, left),
				 errdetail("They stay in eventstore.outbox and are sent when the relay runs again.")));
	EsNatsStop();
}

/* The NATS JetStream sink (see sink.h) */
const EsSinkRoutine EsNatsSink = {
	.name = "nats",
	.configured = EsNatsConfigured,
	.settings_changed = EsNatsSettingsChanged,
	.start = EsNatsStart,
	.stop = EsNatsStop,
	.running = EsNatsRunning,
	.failed = EsNatsFailed,
	.send = EsNatsSend,
	.serve = EsNatsServe,
	.purge = EsNatsPurge,
	.probe = EsNatsProbe,
	.socket = EsNatsSocket,
	.in_flight = EsNatsInFlight,
	.is_permanent = EsNatsIsPermanent,
	.is_unreachable = EsNatsIsUnreachable,
	.error_text = EsNatsErrorText,
	.lost_err = ES_NATS_LOST,
	.down = EsNatsDown,
	.set_down = EsNatsSetDown,
	.at_exit = EsNatsAtExit,
};
