/*
 * rabbitmq.c
 *		The relay's RabbitMQ sink (AMQP 0-9-1 through rabbitmq-c): one
 *		connection, one channel in confirm mode; a message's topic names an
 *		exchange, its key is the routing key.
 *
 * rabbitmq-c runs no threads of its own: every call below is made on the
 * worker's thread, and the broker's answers (basic.ack, basic.nack,
 * basic.return, channel.close, connection.close) are read without waiting
 * in serve().  The library may hold frames it already read from the socket
 * (amqp_frames_enqueued, amqp_data_in_buffer): the socket is not readable
 * for those, so while any are held socket() hands the relay a pipe that is
 * always readable, and the relay's next turn serves them at once.
 *
 * Every message is published persistent (delivery_mode 2) and mandatory,
 * on channel 1 in confirm mode.  The broker numbers the publishes of a
 * channel 1, 2, 3...: the messages in flight are kept in a ring by that
 * number, so an answer carries only a number, and an answer for a number
 * no longer in the ring (purged, or from before a reconnect) is ignored.
 * An unroutable message comes back as basic.return before its basic.ack;
 * a return names no number, so it is matched to the oldest message in
 * flight not yet returned with the same exchange, routing key, message_id
 * and body (returns come in publish order), and its ack then fails it with
 * NO_ROUTE.
 *
 * A channel or connection closed by the broker fails what is in flight
 * (the relay sends it again) and the connection is made anew; so does the
 * delivery timeout (purge()).  While the broker cannot be reached, send()
 * takes nothing (the messages stay in the outbox without using up
 * attempts), and the connection is tried again about once a second, each
 * try bounded (1 s to connect, 2 s for the handshake).
 *
 * Secrets: eventstore.rabbitmq_url holds the password; it is logged only
 * through EsScrubUrl().
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/pmsignal.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "eventstore.h"
#include "sink.h"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <unistd.h>

/* Error codes: AMQP reply codes where the broker gave one, else our own */
#define ES_RMQ_NO_ROUTE			312 /* basic.return: unroutable (permanent) */
#define ES_RMQ_ACCESS_REFUSED	403 /* channel closed: no permission */
#define ES_RMQ_NOT_FOUND		404 /* channel closed: no such exchange */
#define ES_RMQ_PRECONDITION		406 /* channel closed: e.g. too large */
#define ES_RMQ_NACKED			1001	/* basic.nack: the broker could not take it */
#define ES_RMQ_CONNECTION_LOST	1002	/* the connection ended before an answer */
#define ES_RMQ_TIMED_OUT		1003	/* no answer within delivery_timeout */
#define ES_RMQ_CHANNEL_CLOSED	1004	/* the channel closed for another message */
#define ES_RMQ_NAME_TOO_LONG	1005	/* exchange, key or header name > 255 bytes */
#define ES_RMQ_TOO_LARGE		1006	/* body over RabbitMQ's largest message */
#define ES_RMQ_HEADERS_TOO_LARGE 1007	/* properties over one frame */

/* Most messages in flight (the span of delivery tags not yet answered) */
#define ES_RMQ_MAX_IN_FLIGHT	16384

/* RabbitMQ's largest message (max_message_size's default and ceiling, 128 MiB) */
#define ES_RMQ_MAX_BODY			((Size) 134217728)

/*
 * The most bytes of headers: the properties go in one frame (131,072 bytes
 * by default, rabbitmq-c's and RabbitMQ's), with room for the short strings
 */
#define ES_RMQ_MAX_HEADERS		((Size) (AMQP_DEFAULT_FRAME_SIZE - 8192))

/* The longest a shutdown waits for confirms */
#define ES_RMQ_SHUTDOWN_WAIT_MS 5000

/* How often to try connecting while the broker seems down, and how long */
#define ES_RMQ_RETRY_INTERVAL_MS 1000
#define ES_RMQ_CONNECT_TIMEOUT_S 1
#define ES_RMQ_HANDSHAKE_TIMEOUT_S 2

/* The CA certificates amqps:// URLs are verified with (Debian's bundle) */
#define ES_RMQ_CA_BUNDLE		"/etc/ssl/certs/ca-certificates.crt"

/* The one channel we publish on */
#define ES_RMQ_CHANNEL			1

/* One message in flight: its delivery tag is its place in the ring */
typedef struct EsRmqSlot
{
	EsMessage  *msg;			/* NULL: answered (or never used) */
	bool		returned;		/* basic.return seen: unroutable */
} EsRmqSlot;

static EsRmqSlot es_slots[ES_RMQ_MAX_IN_FLIGHT];
static uint64 es_oldest_tag = 1;	/* the oldest tag not yet answered */
static uint64 es_next_tag = 1;	/* the tag of the next publish */
static int	es_pending = 0;		/* messages in flight */

static amqp_connection_state_t es_conn = NULL;
static bool es_started = false;	/* start() succeeded and no stop() since */
static bool es_connected = false;	/* es_conn is logged in, channel open */
static bool es_failed = false;	/* the connection must be made anew */
static bool es_down = false;	/* the broker seems unreachable */
static bool es_answer_failed = false;	/* a failure was answered since serve() */
static TimestampTz es_last_attempt = 0;

/* The setting as started, the URL (maybe read from a file), and it parsed */
static char *es_started_setting = NULL;
static char *es_url = NULL;		/* for EsScrubUrl */
static char *es_url_parsed = NULL;	/* amqp_parse_url's buffer */
static struct amqp_connection_info es_info;

/* The last connection error logged, so that each is logged once */
static char es_last_logged[256] = "";

/* Scratch memory of one publish (its header table), reset after each */
static MemoryContext es_publish_cxt = NULL;

/* A pipe with a byte in it: readable whenever the relay must not sleep */
static int	es_wake_pipe[2] = {-1, -1};

/* Reset the ring: nothing in flight, tags start again at 1 */
static void
EsRmqResetRing(void)
{
	memset(es_slots, 0, sizeof(es_slots));
	es_oldest_tag = es_next_tag = 1;
	es_pending = 0;
}

/* The slot of a delivery tag */
static inline EsRmqSlot *
EsRmqSlotOf(uint64 tag)
{
	return &es_slots[tag % ES_RMQ_MAX_IN_FLIGHT];
}

/* Log a connection problem, once per distinct text */
static void
EsRmqLogOnce(const char *what, const char *detail)
{
	char		text[256];

	snprintf(text, sizeof(text), "%s: %s", what, detail);
	if (strcmp(text, es_last_logged) == 0)
		return;
	strlcpy(es_last_logged, text, sizeof(es_last_logged));
	ereport(LOG,
			(errmsg("eventstore relay: RabbitMQ at %s: %s", EsScrubUrl(es_url), text)));
}

/* The text of an RPC reply that failed */
static char *
EsRmqReplyText(amqp_rpc_reply_t reply)
{
	switch (reply.reply_type)
	{
		case AMQP_RESPONSE_NORMAL:
			return pstrdup("ok");
		case AMQP_RESPONSE_NONE:
			return pstrdup("no reply");
		case AMQP_RESPONSE_LIBRARY_EXCEPTION:
			return pstrdup(amqp_error_string2(reply.library_error));
		case AMQP_RESPONSE_SERVER_EXCEPTION:
			if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
			{
				amqp_connection_close_t *c = reply.reply.decoded;

				return psprintf("connection closed by the broker: %d %.*s", c->reply_code,
								(int) c->reply_text.len, (char *) c->reply_text.bytes);
			}
			if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
			{
				amqp_channel_close_t *c = reply.reply.decoded;

				return psprintf("channel closed by the broker: %d %.*s", c->reply_code,
								(int) c->reply_text.len, (char *) c->reply_text.bytes);
			}
			return psprintf("unexpected method 0x%08X", reply.reply.id);
	}
	return pstrdup("unknown reply");
}

/* Drop the connection at once (no closing handshake) */
static void
EsRmqDisconnect(void)
{
	if (es_conn != NULL)
		amqp_destroy_connection(es_conn);
	es_conn = NULL;
	es_connected = false;
}

/*
 * Connect, log in, open the channel and turn confirms on, each step bounded;
 * false (logged once) if the broker cannot be reached or refused us
 */
static bool
EsRmqConnect(void)
{
	amqp_socket_t *sock;
	struct timeval connect_tv = {ES_RMQ_CONNECT_TIMEOUT_S, 0};
	struct timeval rpc_tv = {ES_RMQ_HANDSHAKE_TIMEOUT_S, 0};
	amqp_rpc_reply_t reply;
	int			status;
	const char *step;

	Assert(es_conn == NULL);
	es_last_attempt = GetCurrentTimestamp();
	es_conn = amqp_new_connection();
	if (es_conn == NULL)
	{
		EsRmqLogOnce("could not connect", "out of memory");
		return false;
	}
	sock = es_info.ssl ? amqp_ssl_socket_new(es_conn) : amqp_tcp_socket_new(es_conn);
	if (sock == NULL)
	{
		EsRmqLogOnce("could not connect", "could not create a socket");
		EsRmqDisconnect();
		return false;
	}
	/* TLS: the system's CA bundle; peer and host name are verified */
	if (es_info.ssl && access(ES_RMQ_CA_BUNDLE, R_OK) == 0 &&
		amqp_ssl_socket_set_cacert(sock, ES_RMQ_CA_BUNDLE) != AMQP_STATUS_OK)
	{
		EsRmqLogOnce("could not connect", "could not load " ES_RMQ_CA_BUNDLE);
		EsRmqDisconnect();
		return false;
	}
	amqp_set_handshake_timeout(es_conn, &rpc_tv);
	amqp_set_rpc_timeout(es_conn, &rpc_tv);

	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	status = amqp_socket_open_noblock(sock, es_info.host, es_info.port, &connect_tv);
	pgstat_report_wait_end();
	if (status != AMQP_STATUS_OK)
	{
		EsRmqLogOnce("could not connect", amqp_error_string2(status));
		EsRmqDisconnect();
		return false;
	}

	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	step = "could not log in";
	reply = amqp_login(es_conn, es_info.vhost, AMQP_DEFAULT_MAX_CHANNELS,
					   AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN,
					   es_info.user, es_info.password);
	if (reply.reply_type == AMQP_RESPONSE_NORMAL)
	{
		step = "could not open a channel";
		amqp_channel_open(es_conn, ES_RMQ_CHANNEL);
		reply = amqp_get_rpc_reply(es_conn);
	}
	if (reply.reply_type == AMQP_RESPONSE_NORMAL)
	{
		step = "could not turn on publisher confirms";
		amqp_confirm_select(es_conn, ES_RMQ_CHANNEL);
		reply = amqp_get_rpc_reply(es_conn);
	}
	pgstat_report_wait_end();
	if (reply.reply_type != AMQP_RESPONSE_NORMAL)
	{
		EsRmqLogOnce(step, EsRmqReplyText(reply));
		EsRmqDisconnect();
		return false;
	}

	EsRmqResetRing();
	es_connected = true;
	es_failed = false;
	if (es_last_logged[0] != '\0')
		ereport(LOG,
				(errmsg("eventstore relay: connected to RabbitMQ at %s", EsScrubUrl(es_url))));
	es_last_logged[0] = '\0';
	return true;
}

/* Try to connect if not connected and the last try is a second old */
static void
EsRmqMaybeReconnect(void)
{
	if (!es_started || es_connected || es_failed ||
		!TimestampDifferenceExceeds(es_last_attempt, GetCurrentTimestamp(),
									ES_RMQ_RETRY_INTERVAL_MS))
		return;
	if (EsRmqConnect())
		es_down = false;
	else
		es_down = true;
}

/* Whether eventstore.rabbitmq_url is set */
static bool
EsRmqConfigured(void)
{
	return es_rabbitmq_url != NULL && es_rabbitmq_url[0] != '\0';
}

/* Whether the setting changed since start() */
static bool
EsRmqSettingsChanged(void)
{
	return es_started && strcmp(es_started_setting, es_rabbitmq_url) != 0;
}

/* Open the always-readable wake pipe (once) */
static void
EsRmqWakePipeOpen(void)
{
	if (es_wake_pipe[0] >= 0)
		return;
	if (pipe(es_wake_pipe) != 0)
	{
		es_wake_pipe[0] = es_wake_pipe[1] = -1;
		return;
	}
	if (write(es_wake_pipe[1], "x", 1) != 1)
	{
		close(es_wake_pipe[0]);
		close(es_wake_pipe[1]);
		es_wake_pipe[0] = es_wake_pipe[1] = -1;
	}
}

/*
 * Read and check the setting, then connect (or begin to: a broker that is
 * down is tried again about once a second); false only for a setting that
 * can never work (logged, password scrubbed)
 */
static bool
EsRmqStart(void)
{
	MemoryContext old;
	char	   *url;
	int			status;

	Assert(!es_started);
	url = EsReadSettingFile(es_rabbitmq_url, "eventstore.rabbitmq_url");
	if (url == NULL)
		return false;
	old = MemoryContextSwitchTo(TopMemoryContext);
	if (es_url != NULL)
		pfree(es_url);
	if (es_url_parsed != NULL)
		pfree(es_url_parsed);
	es_url = pstrdup(url);
	es_url_parsed = pstrdup(url);
	MemoryContextSwitchTo(old);
	amqp_default_connection_info(&es_info);
	status = amqp_parse_url(es_url_parsed, &es_info);
	if (status != AMQP_STATUS_OK)
	{
		ereport(LOG,
				(errmsg("eventstore relay: invalid eventstore.rabbitmq_url \"%s\": %s",
						EsScrubUrl(es_url), amqp_error_string2(status)),
				 errhint("The URL is amqp://user:password@host:port/vhost or amqps://...")));
		return false;
	}
	/*
	 * "amqp://host/" names the vhost "" by the AMQP URI spec, which no
	 * broker has: take it, like a URL without a path, as the default "/"
	 */
	if (es_info.vhost[0] == '\0')
		es_info.vhost = "/";
	EsRmqWakePipeOpen();
	es_started_setting = MemoryContextStrdup(TopMemoryContext, es_rabbitmq_url);
	es_started = true;
	es_failed = false;
	es_answer_failed = false;
	EsRmqResetRing();
	ereport(LOG,
			(errmsg("eventstore relay: publishing to RabbitMQ at %s", EsScrubUrl(es_url))));
	es_last_attempt = 0;
	es_down = !EsRmqConnect();
	return true;
}

/* Disconnect at once; what is in flight is left as it is, and forgotten */
static void
EsRmqStop(void)
{
	EsRmqDisconnect();
	EsRmqResetRing();
	es_started = false;
	es_failed = false;
	es_answer_failed = false;
	if (es_started_setting != NULL)
		pfree(es_started_setting);
	es_started_setting = NULL;
}

/* Whether it was started and not stopped */
static bool
EsRmqRunning(void)
{
	return es_started;
}

/* Whether the connection must be made anew */
static bool
EsRmqFailed(void)
{
	return es_started && es_failed;
}

/* Settle the message of one delivery tag with 'err' (0: delivered) */
static void
EsRmqSettle(uint64 tag, int err)
{
	EsRmqSlot  *slot;

	if (tag < es_oldest_tag || tag >= es_next_tag)
		return;					/* not ours any more */
	slot = EsRmqSlotOf(tag);
	if (slot->msg == NULL)
		return;
	if (err == 0 && slot->returned)
		err = ES_RMQ_NO_ROUTE;
	slot->msg->err = err;
	slot->msg->done = true;
	slot->msg = NULL;
	slot->returned = false;
	es_pending--;
	if (err == 0)
		es_down = false;
	else
		es_answer_failed = true;
	while (es_oldest_tag < es_next_tag && EsRmqSlotOf(es_oldest_tag)->msg == NULL)
		es_oldest_tag++;
}

/* Settle a basic.ack or basic.nack: one tag, or all up to it */
static void
EsRmqSettleUpTo(uint64 tag, bool multiple, int err)
{
	uint64		t;

	if (!multiple)
	{
		EsRmqSettle(tag, err);
		return;
	}
	for (t = es_oldest_tag; t <= tag && t < es_next_tag; t++)
		EsRmqSettle(t, err);
}

/* Fail everything in flight with 'err' (else not done), forgetting it */
static void
EsRmqFailAll(int err, const char *exchange)
{
	uint64		t;

	for (t = es_oldest_tag; t < es_next_tag; t++)
	{
		EsRmqSlot  *slot = EsRmqSlotOf(t);

		if (slot->msg == NULL)
			continue;
		slot->msg->err = (exchange != NULL && strcmp(slot->msg->topic, exchange) == 0) ?
			ES_RMQ_NOT_FOUND : err;
		slot->msg->done = true;
		es_answer_failed = true;
	}
	EsRmqResetRing();
}

/*
 * Read the next frame of a returned message's content (waiting at most
 * 2 s: the broker sends it right after the method); false if the
 * connection failed
 */
static bool
EsRmqReadContentFrame(amqp_frame_t *frame, uint8_t type)
{
	struct timeval tv = {ES_RMQ_HANDSHAKE_TIMEOUT_S, 0};

	for (;;)
	{
		if (amqp_simple_wait_frame_noblock(es_conn, frame, &tv) != AMQP_STATUS_OK)
			return false;
		if (frame->channel == ES_RMQ_CHANNEL && frame->frame_type == type)
			return true;
		if (frame->frame_type == AMQP_FRAME_METHOD)
			return false;		/* a method inside a content: give up */
	}
}

/* Whether a message in flight is the one the broker returned */
static bool
EsRmqSameMessage(EsMessage *m, amqp_basic_return_t *r, amqp_basic_properties_t *p,
				 StringInfo body)
{
	size_t		keylen = m->key ? strlen(m->key) : 0;
	size_t		vallen = m->value ? strlen(m->value) : 0;
	bool		has_id = (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) != 0;

	if (strlen(m->topic) != r->exchange.len ||
		memcmp(m->topic, r->exchange.bytes, r->exchange.len) != 0)
		return false;
	if (keylen != r->routing_key.len ||
		(keylen > 0 && memcmp(m->key, r->routing_key.bytes, keylen) != 0))
		return false;
	if ((m->ce_id != NULL) != has_id)
		return false;
	if (has_id && (strlen(m->ce_id) != p->message_id.len ||
				   memcmp(m->ce_id, p->message_id.bytes, p->message_id.len) != 0))
		return false;
	return vallen == (size_t) body->len &&
		(vallen == 0 || memcmp(m->value, body->data, vallen) == 0);
}

/*
 * A basic.return: read its content, and mark the oldest message in flight
 * that it is (not yet returned) as returned; its ack fails it
 */
static bool
EsRmqHandleReturn(amqp_basic_return_t *r)
{
	amqp_frame_t frame;
	amqp_basic_properties_t *props;
	uint64_t	size;
	StringInfoData body;
	uint64		t;

	if (!EsRmqReadContentFrame(&frame, AMQP_FRAME_HEADER))
		return false;
	props = frame.payload.properties.decoded;
	size = frame.payload.properties.body_size;
	if (size > ES_RMQ_MAX_BODY)
		return false;
	initStringInfo(&body);
	while ((uint64_t) body.len < size)
	{
		if (!EsRmqReadContentFrame(&frame, AMQP_FRAME_BODY))
			return false;
		appendBinaryStringInfo(&body, frame.payload.body_fragment.bytes,
							   frame.payload.body_fragment.len);
	}
	for (t = es_oldest_tag; t < es_next_tag; t++)
	{
		EsRmqSlot  *slot = EsRmqSlotOf(t);

		if (slot->msg != NULL && !slot->returned &&
			EsRmqSameMessage(slot->msg, r, props, &body))
		{
			slot->returned = true;
			break;
		}
	}
	pfree(body.data);
	return true;
}

/*
 * The channel was closed by the broker: what is in flight fails (to the
 * missing exchange: NOT_FOUND, else CHANNEL_CLOSED, or the reply code for
 * everything when it names no exchange), and the connection is made anew
 */
static void
EsRmqHandleChannelClose(amqp_channel_close_t *c)
{
	amqp_channel_close_ok_t ok;
	char	   *text = pnstrdup(c->reply_text.bytes, c->reply_text.len);
	char	   *exchange = NULL;
	char	   *start;

	ereport(LOG,
			(errmsg("eventstore relay: RabbitMQ closed the channel: %d %s",
					c->reply_code, text)));
	if (c->reply_code == ES_RMQ_NOT_FOUND &&
		(start = strstr(text, "no exchange '")) != NULL)
	{
		char	   *end;

		exchange = start + strlen("no exchange '");
		end = strchr(exchange, '\'');
		if (end != NULL)
			*end = '\0';
		else
			exchange = NULL;
	}
	(void) amqp_send_method(es_conn, ES_RMQ_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
	EsRmqFailAll(exchange != NULL ? ES_RMQ_CHANNEL_CLOSED :
				 c->reply_code == ES_RMQ_ACCESS_REFUSED ? ES_RMQ_ACCESS_REFUSED :
				 c->reply_code == ES_RMQ_PRECONDITION ? ES_RMQ_PRECONDITION :
				 ES_RMQ_CHANNEL_CLOSED, exchange);
	es_failed = true;
	pfree(text);
}

/* One frame from the broker; false if the connection must be made anew */
static bool
EsRmqHandleFrame(amqp_frame_t *frame)
{
	if (frame->frame_type != AMQP_FRAME_METHOD)
		return true;			/* stray content, heartbeats */
	switch (frame->payload.method.id)
	{
		case AMQP_BASIC_ACK_METHOD:
			{
				amqp_basic_ack_t *a = frame->payload.method.decoded;

				EsRmqSettleUpTo(a->delivery_tag, a->multiple, 0);
				return true;
			}
		case AMQP_BASIC_NACK_METHOD:
			{
				amqp_basic_nack_t *n = frame->payload.method.decoded;

				EsRmqSettleUpTo(n->delivery_tag, n->multiple, ES_RMQ_NACKED);
				return true;
			}
		case AMQP_BASIC_RETURN_METHOD:
			return EsRmqHandleReturn(frame->payload.method.decoded);
		case AMQP_CHANNEL_CLOSE_METHOD:
			EsRmqHandleChannelClose(frame->payload.method.decoded);
			return false;
		case AMQP_CONNECTION_CLOSE_METHOD:
			{
				amqp_connection_close_t *c = frame->payload.method.decoded;
				amqp_connection_close_ok_t ok;

				ereport(LOG,
						(errmsg("eventstore relay: RabbitMQ closed the connection: %d %.*s",
								c->reply_code, (int) c->reply_text.len,
								(char *) c->reply_text.bytes)));
				(void) amqp_send_method(es_conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
				es_down = true;
				return false;
			}
		default:
			return true;		/* connection.blocked and the like */
	}
}

/*
 * Read what the broker sent, waiting at most 'timeout' for the first
 * frame (NULL: not at all); false if the connection failed (es_failed set)
 */
static bool
EsRmqRead(struct timeval *timeout)
{
	struct timeval zero = {0, 0};
	int			i;

	for (i = 0; i < 2 * ES_RMQ_MAX_IN_FLIGHT; i++)
	{
		amqp_frame_t frame;
		int			status;

		status = amqp_simple_wait_frame_noblock(es_conn, &frame,
												i == 0 && timeout ? timeout : &zero);
		if (status == AMQP_STATUS_TIMEOUT)
			break;
		if (status != AMQP_STATUS_OK)
		{
			EsRmqLogOnce("connection lost", amqp_error_string2(status));
			es_failed = true;
			es_down = true;
			return false;
		}
		if (!EsRmqHandleFrame(&frame))
		{
			es_failed = true;
			return false;
		}
		amqp_maybe_release_buffers(es_conn);
	}
	return true;
}

/* Collect the broker's answers; true if one failed */
static bool
EsRmqServe(void)
{
	bool		failed;

	if (!es_started)
		return false;
	if (!es_connected)
		EsRmqMaybeReconnect();
	else if (!es_failed)
		(void) EsRmqRead(NULL);
	failed = es_answer_failed;
	es_answer_failed = false;
	return failed;
}

/*
 * The delivery timeout passed: fail what is in flight (late answers find no
 * message any more: the ring is reset) and make the connection anew
 */
static void
EsRmqPurge(void)
{
	EsRmqFailAll(ES_RMQ_TIMED_OUT, NULL);
	if (es_connected)
		es_failed = true;
}

/* While down with nothing in flight: try the broker again, at most once a second */
static void
EsRmqProbe(void)
{
	if (!es_started || !es_down || es_pending > 0)
		return;
	if (es_connected && !es_failed)
		es_down = false;		/* connected again since */
	else
		EsRmqMaybeReconnect();
}

/* What the relay sleeps on: the socket, or the wake pipe when frames wait */
static pgsocket
EsRmqSocket(void)
{
	if (!es_started || !es_connected)
		return PGINVALID_SOCKET;
	if ((es_failed || es_answer_failed || amqp_frames_enqueued(es_conn) ||
		 amqp_data_in_buffer(es_conn)) && es_wake_pipe[0] >= 0)
		return es_wake_pipe[0];
	return amqp_get_sockfd(es_conn);
}

/* Messages published and not yet answered */
static int
EsRmqInFlight(void)
{
	return es_pending;
}

/* An AMQP short string holds at most 255 bytes */
static inline bool
EsRmqShortOk(const char *s, size_t extra)
{
	return s == NULL || strlen(s) + extra <= 255;
}

/* A message's AMQP header table, content type and message id (properties) */
static bool
EsRmqProperties(EsMessage *msg, amqp_basic_properties_t *props, amqp_table_entry_t *entries)
{
	int			i;
	int			n = 0;

	memset(props, 0, sizeof(*props));
	props->_flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
	props->delivery_mode = AMQP_DELIVERY_PERSISTENT;
	if (msg->ce_id != NULL)
	{
		if (!EsRmqShortOk(msg->ce_id, 0))
			return false;
		props->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
		props->message_id = amqp_cstring_bytes(msg->ce_id);
	}
	for (i = 0; i < msg->nheaders; i++)
	{
		const char *name = msg->headers[i].name;
		const char *value = msg->headers[i].value ? msg->headers[i].value : "";

		if (strcmp(name, "content-type") == 0)
		{
			if (!EsRmqShortOk(value, 0))
				return false;
			props->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
			props->content_type = amqp_cstring_bytes((char *) value);
			continue;
		}
		if (strncmp(name, "ce_", 3) == 0)
		{
			if (!EsRmqShortOk(name + 3, strlen("cloudEvents_")))
				return false;
			entries[n].key = amqp_cstring_bytes(psprintf("cloudEvents_%s", name + 3));
		}
		else
		{
			if (!EsRmqShortOk(name, 0))
				return false;
			entries[n].key = amqp_cstring_bytes((char *) name);
		}
		entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
		entries[n].value.value.bytes = amqp_cstring_bytes((char *) value);
		n++;
	}
	if (n > 0)
	{
		props->_flags |= AMQP_BASIC_HEADERS_FLAG;
		props->headers.num_entries = n;
		props->headers.entries = entries;
	}
	return true;
}

/*
 * An upper bound of the encoded size of the message's header table (name,
 * type, length and value of each): rabbitmq-c fails a publish whose
 * properties do not fit in a frame after it sent its first frame, which
 * would cost the connection
 */
static Size
EsRmqHeadersSize(const EsMessage *msg)
{
	Size		size = 0;
	int			i;

	for (i = 0; i < msg->nheaders; i++)
		size += 1 + strlen("cloudEvents_") + strlen(msg->headers[i].name) + 1 + 4 +
			(msg->headers[i].value ? strlen(msg->headers[i].value) : 0);
	return size;
}

/* A local refusal: the message's outcome, at once */
static bool
EsRmqRefuse(EsMessage *msg, int err)
{
	msg->produced = true;
	msg->done = true;
	msg->err = err;
	es_answer_failed = true;
	return true;
}

/*
 * Publish one message (persistent, mandatory) on the channel.  False, with
 * nothing done, when it cannot be taken now: not connected (tried again at
 * most once a second), or the ring full.
 */
static bool
EsRmqSend(EsMessage *msg)
{
	amqp_basic_properties_t props;
	amqp_table_entry_t *entries;
	MemoryContext cxt;
	MemoryContext old;
	size_t		vallen = msg->value ? strlen(msg->value) : 0;
	int			status;
	bool		ok;

	if (!es_connected)
		EsRmqMaybeReconnect();
	if (!es_connected || es_failed ||
		es_next_tag - es_oldest_tag >= ES_RMQ_MAX_IN_FLIGHT - 1)
		return false;
	if (!EsRmqShortOk(msg->topic, 0) || !EsRmqShortOk(msg->key, 0))
		return EsRmqRefuse(msg, ES_RMQ_NAME_TOO_LONG);
	if (vallen > ES_RMQ_MAX_BODY)
		return EsRmqRefuse(msg, ES_RMQ_TOO_LARGE);
	if (EsRmqHeadersSize(msg) > ES_RMQ_MAX_HEADERS)
		return EsRmqRefuse(msg, ES_RMQ_HEADERS_TOO_LARGE);

	if (es_publish_cxt == NULL)
		es_publish_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore rabbitmq publish",
											   ALLOCSET_SMALL_SIZES);
	cxt = es_publish_cxt;
	old = MemoryContextSwitchTo(cxt);
	entries = palloc0(sizeof(amqp_table_entry_t) * Max(msg->nheaders, 1));
	ok = EsRmqProperties(msg, &props, entries);
	if (ok)
	{
		amqp_bytes_t body = {vallen, msg->value};

		status = amqp_basic_publish(es_conn, ES_RMQ_CHANNEL,
									amqp_cstring_bytes(msg->topic),
									msg->key ? amqp_cstring_bytes(msg->key) : amqp_empty_bytes,
									1, 0, &props, body);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(cxt);
	if (!ok)
		return EsRmqRefuse(msg, ES_RMQ_NAME_TOO_LONG);
	if (status != AMQP_STATUS_OK)
	{
		/* Whether it reached the broker is unknown: a retriable failure */
		EsRmqLogOnce("connection lost", amqp_error_string2(status));
		es_failed = true;
		es_down = true;
		return EsRmqRefuse(msg, ES_RMQ_CONNECTION_LOST);
	}
	EsRmqSlotOf(es_next_tag)->msg = msg;
	EsRmqSlotOf(es_next_tag)->returned = false;
	es_next_tag++;
	es_pending++;
	msg->produced = true;
	return true;
}

/* Whether an error will never go away by retrying */
static bool
EsRmqIsPermanent(int err)
{
	if (err == ES_RMQ_NO_ROUTE)
		return es_rabbitmq_unroutable == ES_UNROUTABLE_DEAD_LETTER;
	return err == ES_RMQ_NAME_TOO_LONG || err == ES_RMQ_TOO_LARGE ||
		err == ES_RMQ_HEADERS_TOO_LARGE;
}

/* Whether an error says the broker cannot be reached */
static bool
EsRmqIsUnreachable(int err)
{
	return err == ES_RMQ_CONNECTION_LOST || err == ES_RMQ_TIMED_OUT;
}

/* An error as last_error shows it: its name, then its text */
static char *
EsRmqErrorText(int err)
{
	switch (err)
	{
		case ES_RMQ_NO_ROUTE:
			return pstrdup("NO_ROUTE: the exchange routed the message to no queue (mandatory)");
		case ES_RMQ_ACCESS_REFUSED:
			return pstrdup("ACCESS_REFUSED: the broker refused the publish (permissions)");
		case ES_RMQ_NOT_FOUND:
			return pstrdup("NOT_FOUND: the exchange does not exist");
		case ES_RMQ_PRECONDITION:
			return pstrdup("PRECONDITION_FAILED: the broker closed the channel (message too large?)");
		case ES_RMQ_NACKED:
			return pstrdup("NACKED: the broker could not take the message (basic.nack)");
		case ES_RMQ_CONNECTION_LOST:
			return pstrdup("CONNECTION_LOST: the connection to the broker ended before it answered");
		case ES_RMQ_TIMED_OUT:
			return pstrdup("TIMED_OUT: no confirm within eventstore.delivery_timeout");
		case ES_RMQ_CHANNEL_CLOSED:
			return pstrdup("CHANNEL_CLOSED: the broker closed the channel for another message");
		case ES_RMQ_NAME_TOO_LONG:
			return pstrdup("NAME_TOO_LONG: an exchange, routing key, header name, content type or message id over 255 bytes");
		case ES_RMQ_TOO_LARGE:
			return pstrdup("MESSAGE_TOO_LARGE: the body is over 128 MiB, RabbitMQ's largest message");
		case ES_RMQ_HEADERS_TOO_LARGE:
			return pstrdup("HEADERS_TOO_LARGE: the headers do not fit in one AMQP frame (about 120 kB)");
	}
	return psprintf("AMQP_%d: unknown error", err);
}

/* Whether the broker is known to be unreachable */
static bool
EsRmqDown(void)
{
	return es_down;
}

/* Messages settled together failed only because the broker was unreachable */
static void
EsRmqSetDown(void)
{
	es_down = true;
}

/*
 * Process exit: wait at most min(delivery_timeout, 5 s) for the confirms of
 * what is in flight, log how many did not come, then disconnect
 */
static void
EsRmqAtExit(void)
{
	TimestampTz deadline;

	if (!es_started)
		return;
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   Min(es_delivery_timeout, ES_RMQ_SHUTDOWN_WAIT_MS));
	while (es_connected && !es_failed && es_pending > 0 && PostmasterIsAlive() &&
		   GetCurrentTimestamp() < deadline)
	{
		struct timeval tv = {0, 100 * 1000};

		if (!EsRmqRead(&tv))
			break;
	}
	if (es_pending > 0)
		ereport(LOG,
				(errmsg_plural("eventstore relay: %d RabbitMQ message was left unacknowledged at shutdown",
							   "eventstore relay: %d RabbitMQ messages were left unacknowledged at shutdown",
							   es_pending, es_pending),
				 errdetail("They stay in eventstore.outbox and are sent when the relay runs again.")));
	EsRmqStop();
}

/* The RabbitMQ sink */
const EsSinkRoutine EsRabbitMQSink = {
	.name = "rabbitmq",
	.configured = EsRmqConfigured,
	.settings_changed = EsRmqSettingsChanged,
	.start = EsRmqStart,
	.stop = EsRmqStop,
	.running = EsRmqRunning,
	.failed = EsRmqFailed,
	.send = EsRmqSend,
	.serve = EsRmqServe,
	.purge = EsRmqPurge,
	.probe = EsRmqProbe,
	.socket = EsRmqSocket,
	.in_flight = EsRmqInFlight,
	.is_permanent = EsRmqIsPermanent,
	.is_unreachable = EsRmqIsUnreachable,
	.error_text = EsRmqErrorText,
	.lost_err = ES_RMQ_CONNECTION_LOST,
	.down = EsRmqDown,
	.set_down = EsRmqSetDown,
	.at_exit = EsRmqAtExit,
};
