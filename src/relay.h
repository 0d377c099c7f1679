/*
 * relay.h
 *		What the relay worker (relay.c) and its outbox statements
 *		(relay_outbox.c) share: the outcome of settled messages (a message
 *		and the sinks are in sink.h).
 */
#ifndef EVENTSTORE_RELAY_H
#define EVENTSTORE_RELAY_H

#include "postgres.h"

#include "utils/timestamp.h"

#include "eventstore.h"
#include "sink.h"

/* How soon to look again when committed rows wait behind an open transaction */
#define ES_HELD_BACK_RECHECK_MS 50

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

/* relay.c: set when the relay found its database without the extension */
extern bool es_relay_no_extension;

/* relay_outbox.c */
extern int	EsRelayFetch(EsSinkId sink, Oid *outbox, int64 after, int limit, EsMessage **msgs,
						 long *wait_ms, TimestampTz *retry_due, bool *retries);
extern bool EsRelayRecord(EsOutcome *o, Oid outbox);
extern int64 EsRelayQuarantine(EsSinkId sink, int64 after, int64 expect, const char *error);
extern void EsRelayInstallPlannerHook(void);


#endif							/* EVENTSTORE_RELAY_H */
