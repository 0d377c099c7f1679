/*
 * relay.h
 *		What the relay worker (relay.c), its outbox statements
 *		(relay_outbox.c) and its Kafka producer (kafka.c) share: one outbox
 *		message on its way to the broker.
 */
#ifndef EVENTSTORE_RELAY_H
#define EVENTSTORE_RELAY_H

#include "postgres.h"

#include "utils/timestamp.h"

#include "eventstore.h"

#include <librdkafka/rdkafka.h>

/* One outbox row as a Kafka message, and what became of it */
typedef struct EsMessage
{
	int64		id;				/* eventstore.outbox.id */
	char	   *topic;
	char	   *key;			/* NULL: no key */
	char	   *value;			/* NULL: a tombstone */
	EsHeader   *headers;
	int			nheaders;
	int32		attempts;		/* failed attempts so far */
	TimestampTz committed_at;	/* its transaction's commit (or created_at) */
	Size		bytes;			/* key, value and headers */
	bool		forwarded;		/* a dead letter on its way to the DLT */
	bool		produced;		/* handed to librdkafka */
	bool		held;			/* not sent: stays in the outbox (see relay.c) */
	bool		done;			/* the broker answered (or we gave up) */
	TimestampTz produced_at;
	char	   *refused;		/* why the relay refused it before sending
								 * (done, with RD_KAFKA_RESP_ERR__BAD_MSG) */
	rd_kafka_resp_err_t err;	/* RD_KAFKA_RESP_ERR_NO_ERROR: delivered */
} EsMessage;

/*
 * What settled messages did, to be recorded in the outbox in one
 * transaction (arrays grow as messages settle)
 */
typedef struct EsOutcome
{
	int			capacity;
	Datum	   *sent;			/* acknowledged ids */
	double	   *latencies;		/* their commit-to-acknowledgement times, ms */
	int			nsent;
	Datum	   *retry_ids;
	Datum	   *retry_delays;
	Datum	   *retry_errors;
	int			nretry;
	Datum	   *dead_ids[2];	/* [0]: to the table, [1]: to the topic */
	Datum	   *dead_errors[2];
	int			ndead[2];
	int			nsettled;		/* messages settled into it, recorded or not */
	char	   *last_error;		/* NULL: none */
	bool		all_down;		/* every failure was "brokers unreachable" */
	double		first_retry_ms; /* the shortest retry delay scheduled */
	TimestampTz first_at;		/* when its first message settled */
	char	   *dead_letter_topic;	/* eventstore.dead_letter_topic as it was */
} EsOutcome;

/* kafka.c */
extern bool EsKafkaStart(void);
extern void EsKafkaStop(void);
extern bool EsKafkaRunning(void);
extern bool EsKafkaSettingsChanged(void);
extern bool EsKafkaFailed(void);
extern bool EsKafkaProduce(EsMessage *msg);
extern void EsKafkaServe(void);
extern void EsKafkaPurgeQueue(void);
extern void EsKafkaProbe(void);
extern pgsocket EsKafkaReportSocket(void);
extern bool EsKafkaTakeFailure(void);
extern bool EsKafkaIsBrokerDown(rd_kafka_resp_err_t err);
extern bool EsKafkaIsPermanent(rd_kafka_resp_err_t err);
extern void EsKafkaAtExit(int code, Datum arg);
extern bool EsKafkaBrokersDown(void);
extern void EsKafkaSetBrokersDown(void);
extern int	EsKafkaInFlight(void);

/* relay_outbox.c */
extern int	EsRelayFetch(Oid *outbox, int64 after, int limit, EsMessage **msgs,
						 long *wait_ms, TimestampTz *retry_due, bool *retries);
extern bool EsRelayRecord(EsOutcome *o, Oid outbox);
extern void EsRelayInstallPlannerHook(void);

/* relay.c */
extern void EsRelayShowState(EsRelayState state);

#endif							/* EVENTSTORE_RELAY_H */
