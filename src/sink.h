/*
 * sink.h
 *		The relay's brokers behind one interface: Kafka (kafka.c), RabbitMQ
 *		(rabbitmq.c) and NATS JetStream (nats.c).
 *
 * The relay loop (relay.c) reads the outbox, keeps per-key order, settles,
 * retries and dead-letters, and knows no broker.  A sink connects, takes
 * messages one by one without waiting for the broker, and later reports
 * what became of each: it sets the message's 'done' and 'err' (0:
 * delivered, else an error code of its own, classified by is_permanent and
 * is_unreachable, and named by error_text).  Every call is made on the
 * worker's own thread; a sink whose client library answers on threads of
 * its own hands the answers over to serve() (a mutex and a pipe), and never
 * calls PostgreSQL from those threads.
 *
 * An EsMessage handed to send() stays valid, at the same address, until the
 * sink set it done or was stopped; after stop() returns no answer may reach
 * it any more.
 *
 * serve(), failed(), in_flight(), down(), probe() and socket() are called
 * also while the sink is not running (never started, or stopped): they then
 * do nothing and answer false, 0 or PGINVALID_SOCKET.  No callback raises
 * an ERROR once a message left for the broker (send() would then resume at
 * that message and send it twice): failures are outcomes, logged at LOG.
 * Calls block the worker, and with it every other sink, for a bounded time
 * only (a connection attempt, a probe: about a second); the one known
 * exception is a RabbitMQ broker that blocks publishers (docs/relay.md).
 */
#ifndef EVENTSTORE_SINK_H
#define EVENTSTORE_SINK_H

#include "postgres.h"

#include "fmgr.h"
#include "utils/timestamp.h"

#include "eventstore.h"

/* One outbox row as a message, and what became of it */
typedef struct EsMessage
{
	int64		id;				/* eventstore.outbox.id */
	char	   *topic;			/* Kafka topic, RabbitMQ exchange, NATS subject prefix */
	char	   *key;			/* NULL: no key */
	char	   *value;			/* NULL: a tombstone (no body) */
	EsHeader   *headers;		/* CloudEvents Kafka binding names (ce_...) */
	int			nheaders;
	char	   *ce_id;			/* the ce_id header's value, NULL: none */
	int32		attempts;		/* failed attempts so far */
	TimestampTz committed_at;	/* its transaction's commit (or created_at) */
	Size		bytes;			/* key, value and headers */
	bool		forwarded;		/* a dead letter on its way to the DLT */
	bool		produced;		/* handed to the sink */
	bool		held;			/* not sent: stays in the outbox (see relay.c) */
	bool		done;			/* the broker answered (or we gave up) */
	TimestampTz produced_at;
	char	   *refused;		/* why the relay refused it before sending
								 * (done, permanent) */
	int			err;			/* 0: delivered; else the sink's error code */
} EsMessage;

/* The err of a message the relay refused before sending (see 'refused') */
#define ES_SINK_REFUSED PG_INT32_MIN

/* The sinks, in the order relay_status() shows them */
typedef enum EsSinkId
{
	ES_SINK_KAFKA,
	ES_SINK_RABBITMQ,
	ES_SINK_NATS,
	ES_NUM_SINKS
} EsSinkId;

/* What a sink does for the relay (see the file header) */
typedef struct EsSinkRoutine
{
	const char *name;			/* outbox.sink, relay_status().sink */

	/* Whether its connection setting is set (empty: the sink is off) */
	bool		(*configured) (void);
	/* Whether the settings it was started with changed since */
	bool		(*settings_changed) (void);
	/* Connect (or begin to); false, logged with secrets scrubbed, if the settings are wrong */
	bool		(*start) (void);
	/* Disconnect at once; what was not answered is left not done */
	void		(*stop) (void);
	/* Whether it was started and not stopped */
	bool		(*running) (void);
	/* Whether it can no longer be used: the relay stops it and sends again what it did not answer */
	bool		(*failed) (void);

	/*
	 * Send one message; a local refusal is its outcome (done, err set).
	 * False, with nothing done, when there is no room now: called again
	 * after serve().  Must not block for long (bounded by the socket).
	 */
	bool		(*send) (EsMessage *msg);
	/* Collect answers: set done and err of each answered message; true if one failed */
	bool		(*serve) (void);
	/*
	 * The oldest message in flight passed eventstore.delivery_timeout: fail
	 * (done, a retriable err) every message in flight that was not answered,
	 * so that none is sent after an earlier one of its key failed
	 */
	void		(*purge) (void);
	/* While the broker seems down and nothing is in flight: check, bounded, whether it is back */
	void		(*probe) (void);
	/* What to sleep on for answers, PGINVALID_SOCKET if none */
	pgsocket	(*socket) (void);
	/* Messages sent and not yet answered */
	int			(*in_flight) (void);

	/* Whether an error will never go away by retrying */
	bool		(*is_permanent) (int err);
	/* Whether an error says the broker cannot be reached */
	bool		(*is_unreachable) (int err);
	/* An error as last_error shows it, palloc'd: "NAME: text" */
	char	   *(*error_text) (int err);
	/* The error a message gets when the sink was stopped before it answered */
	int			lost_err;

	/* Whether the broker is known to be down (set by set_down, cleared by a delivery or probe) */
	bool		(*down) (void);
	void		(*set_down) (void);

	/* Process exit: a bounded wait for what is in flight, then stop */
	void		(*at_exit) (void);
} EsSinkRoutine;

/* The sinks by id; kafka.c, rabbitmq.c, nats.c */
extern const EsSinkRoutine EsKafkaSink;
extern const EsSinkRoutine EsRabbitMQSink;
extern const EsSinkRoutine EsNatsSink;
extern const EsSinkRoutine *const es_sinks[ES_NUM_SINKS];

/* A sink's name (sink.c) */
extern const char *EsSinkName(EsSinkId id);
/* A sink's name in messages: Kafka, RabbitMQ, NATS (sink.c) */
extern const char *EsSinkTitle(EsSinkId id);
/* The id of a sink's name; -1 if none (sink.c) */
extern int	EsSinkByName(const char *name);
/* Check a sink name given by a user; ERROR 22023 if unknown (sink.c) */
extern EsSinkId EsCheckSinkName(const char *name);

/* The sink argument of publish() and replay() (sink.c) */
extern EsSinkId EsSinkArgument(FunctionCallInfo fcinfo, int argno);

/* A secret-free copy of a URL or a list of them, for the log (sink.c) */
extern char *EsScrubUrl(const char *url);
/* A non-blocking pipe for a sink's client to signal the relay (sink.c) */
extern bool EsOpenSignalPipe(int fds[2], const char *what);
/* A setting, or the content of the "@/path/file" it names (sink.c) */
extern char *EsReadSettingFile(const char *setting, const char *what);

#endif							/* EVENTSTORE_SINK_H */
