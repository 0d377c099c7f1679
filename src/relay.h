/*
 * relay.h
 *		What the relay worker (relay.c) and its Kafka producer (kafka.c)
 *		share: one outbox message on its way to the broker.
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
	TimestampTz enqueued_at;	/* eventstore.outbox.created_at */
	bool		forwarded;		/* a dead letter on its way to the DLT */
	bool		done;			/* the broker answered (or we gave up) */
	bool		skipped;		/* not sent this round: see EsKafkaSend() */
	char	   *refused;		/* why the relay refused it before sending
								 * (done, with RD_KAFKA_RESP_ERR__BAD_MSG) */
	rd_kafka_resp_err_t err;	/* RD_KAFKA_RESP_ERR_NO_ERROR: delivered */
} EsMessage;

/* kafka.c */
extern bool EsKafkaStart(void);
extern void EsKafkaStop(void);
extern bool EsKafkaRunning(void);
extern bool EsKafkaSettingsChanged(void);
extern bool EsKafkaFailed(void);
extern void EsKafkaSend(EsMessage *msgs, int nmsgs);
extern void EsKafkaServe(void);
extern bool EsKafkaIsBrokerDown(rd_kafka_resp_err_t err);
extern bool EsKafkaIsPermanent(rd_kafka_resp_err_t err);
extern void EsKafkaAtExit(int code, Datum arg);
extern bool EsKafkaBrokersDown(void);
extern void EsKafkaSetBrokersDown(void);
extern bool EsKafkaHasPending(void);

/* relay.c */
extern void EsRelayShowState(EsRelayState state);

#endif							/* EVENTSTORE_RELAY_H */
