/*
 * eventstore.h
 *		Declarations shared by the eventstore extension's source files.
 */
#ifndef EVENTSTORE_H
#define EVENTSTORE_H

#include "postgres.h"

#include "access/xact.h"
#include "access/xlogdefs.h"
#include "executor/spi.h"
#include "tcop/dest.h"
#include "storage/latch.h"
#include "fmgr.h"
#include "utils/jsonb.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

/* SQLSTATEs of our own (class SE: event store) */
#define ERRCODE_ES_WRONG_EXPECTED_VERSION	MAKE_SQLSTATE('S','E','0','0','1')
#define ERRCODE_ES_DUPLICATE_EVENT_ID		MAKE_SQLSTATE('S','E','0','0','2')

/* The user and settings a call ran with before EsBecomeOwner() */
typedef struct EsSavedUser
{
	Oid			userid;
	int			sec_context;
	int			guc_nestlevel;
} EsSavedUser;

/* common.c */
extern Oid	EsSchemaOid(void);
extern Oid	EsSchemaOwner(void);
extern void EsBecomeOwner(EsSavedUser *saved);
extern void EsBecomeUser(Oid userid, EsSavedUser *saved);
extern void EsRestoreUser(const EsSavedUser *saved);
extern SPIPlanPtr EsPlan(SPIPlanPtr *cache, const char *sql, int nargs,
						 const Oid *argtypes);
extern SPIPlanPtr EsPlanWithOptions(SPIPlanPtr *cache, const char *sql, int nargs,
									const Oid *argtypes, int cursor_options);
extern void EsSpiExec(SPIPlanPtr plan, Datum *values, const char *nulls,
					  bool read_only, int expected);
/*
 * Longest stream id, category and message key, in bytes.  Each is a btree
 * key (streams, events, aggregates, routes, outbox and dead_letters
 * indexes), and a btree entry holds at most about 2700 bytes; the limit
 * keeps a key well below that whatever follows it in the index, so that an
 * accepted key can never fail later, in the relay, when its outbox row is
 * marked for a retry or moved to the dead letters.
 */
#define ES_MAX_KEY_BYTES 1024

extern text *EsCheckStreamId(FunctionCallInfo fcinfo, int argno);
extern void EsCheckKeyLength(const char *what, size_t len);
extern int64 EsStreamVersion(text *stream_id, bool read_only);
extern void EsCheckCategory(const char *category, bool wildcard);
extern char *EsCategoryOf(const char *stream_id);
extern bool EsJsonbEqual(Jsonb *a, Jsonb *b);

/* The sequences whose positions a horizon guards (see horizon.c) */
typedef enum EsSequence
{
	ES_SEQ_EVENTS,				/* eventstore.events.global_position */
	ES_SEQ_OUTBOX				/* eventstore.outbox.id */
} EsSequence;

/* horizon.c */
extern void EsHoldHorizon(EsSequence seq);
extern int64 EsHorizon(EsSequence seq);
extern int64 EsLastValue(EsSequence seq);
extern Oid	EsLastSequenceRead(EsSequence seq);
extern int64 EsSequenceLastValue(Oid seqoid, Oid reader);
extern bool EsPublishHorizon(XLogRecPtr *lsn);
extern void EsFlushPublishedHorizon(XLogRecPtr lsn);
extern int	EsPublishIntervalMs(void);

/* eventstore.c: settings */
extern char *es_kafka_brokers;
extern char *es_kafka_config;
extern char *es_rabbitmq_url;
extern char *es_nats_url;
extern char *es_nats_credentials;
extern int	es_rabbitmq_unroutable;
extern char *es_database;
extern int	es_max_relays;
extern char *es_cloudevents_source;
extern char *es_dead_letter_topic;
extern int	es_relay_batch_size;
extern int	es_max_attempts;
extern int	es_retry_backoff_initial;
extern int	es_retry_backoff_max;
extern int	es_delivery_timeout;
extern int	es_on_dead_letter;
extern int	es_relay_idle_interval;
extern int	es_relay_window_messages;
extern int	es_relay_window_memory;

/* eventstore.rabbitmq_unroutable */
#define ES_UNROUTABLE_DEAD_LETTER 0
#define ES_UNROUTABLE_RETRY 1

/* eventstore.on_dead_letter */
#define ES_DEAD_LETTER_CONTINUE 0
#define ES_DEAD_LETTER_PARK 1

/* outbox.c */
extern void EsCheckTopic(const char *topic);
extern void EsRouteEvents(text *stream_id, const char *category,
						  Datum *positions, int npositions);
extern void EsWakeRelayAtCommit(bool revisit);
extern void EsWakeRelayForSink(int sink);
extern void EsOutboxEnqueuing(void);
extern void EsOutboxXactCallback(XactEvent event, void *arg);
extern void EsOutboxResourceRelease(ResourceReleasePhase phase, bool isCommit,
									bool isTopLevel, void *arg);
extern void EsInstallUtilityHook(void);
extern bool EsDatabaseIsServed(void);
extern void EsWarnIfNotServed(void);

/* One Kafka header */
typedef struct EsHeader
{
	const char *name;
	char	   *value;
} EsHeader;

/* The columns of an eventstore.events row that its CloudEvents headers use */
typedef struct EsEventRow
{
	Datum		event_id;		/* uuid */
	text	   *event_type;
	text	   *stream_id;
	TimestampTz recorded_at;
	int64		stream_version;
	int64		global_position;
	Jsonb	   *metadata;
} EsEventRow;

/*
 * cloudevents.c.  Headers of an event: ce_specversion, ce_id, ce_type,
 * ce_source, ce_subject, ce_time, content-type, ce_sequence,
 * ce_streamversion, three copied from metadata, eventstore-metadata.
 */
#define ES_CE_MAX_HEADERS 13
extern int	EsCloudEventHeaders(const EsEventRow *ev, const char *source,
								EsHeader *out);
extern char *EsCloudEventsSource(void);
extern bool EsCloudEventsSourceIsValid(const char *source);

/* routes.c */
extern const char *EsRouteTopic(const char *category, const char **sink);

/* What the relay is doing, as relay_status() shows it */
typedef enum EsRelayState
{
	ES_RELAY_STOPPED = 0,
	ES_RELAY_DISABLED,
	ES_RELAY_CONNECTING,
	ES_RELAY_IDLE,
	ES_RELAY_SENDING,
	ES_RELAY_BACKING_OFF,
	ES_RELAY_BROKER_DOWN,
	ES_RELAY_ERROR,				/* a round failed with a database error */
	ES_RELAY_NOT_SERVED,		/* shown in a database no relay serves */
	ES_RELAY_STANDBY			/* shown on a hot standby: relays run after promotion */
} EsRelayState;

/* The relay's sinks (Kafka, RabbitMQ, NATS: see sink.h) */
#define ES_RELAY_SINKS 3

/* Delivery latencies kept for relay_status()'s percentiles */
#define ES_LATENCY_WINDOW 1024

/* The relay's statistics for a sink in shared memory, since the worker started */
typedef struct EsRelayStats
{
	int			pid;			/* 0: no relay runs */
	EsRelayState state;
	uint64		sent_total;
	uint64		retries_total;
	uint64		dead_letters_total;
	char		last_error[256];
	TimestampTz last_error_at;	/* 0: never */
	TimestampTz last_delivery_at;	/* 0: never */
	int			in_flight;		/* produced, not yet reported by the broker */
	int			latency_count;
	int			latency_next;
	double		latency_ms[ES_LATENCY_WINDOW];
} EsRelayStats;

/* shmem.c */
extern void EsShmemInit(void);
extern int	EsClaimRelaySlot(Oid database, uint32 *generation);
extern bool EsFreeRelaySlot(int i);
extern Oid	EsRelaySlotDatabase(int i, bool *attached, bool *ended);
extern bool EsAttachRelaySlot(int i, uint32 generation);

/* What the launcher gives a relay in bgw_extra */
typedef struct EsRelayArgs
{
	Oid			database;
	uint32		generation;		/* of its slot's claim (EsClaimRelaySlot) */
} EsRelayArgs;
extern void EsDetachRelaySlot(bool no_extension);
extern void EsSetLauncherLatch(Latch *latch);
extern void EsWakeLauncher(void);
extern bool EsLauncherTakeRescan(void);
extern bool EsRelaySlotsFull(void);
extern bool EsRelayTakeHorizonWanted(void);
extern bool EsRelayTakeCheckExtension(void);
extern bool EsRelayTakeLeave(void);
extern bool EsAskRelayToLeave(Oid database);
extern void EsWakeRelayToCheckExtension(void);
extern void EsWakeRelay(bool revisit, uint32 sinks);
extern uint32 EsRelayTakeSinks(void);
extern bool EsRelayTakeRevisit(void);
extern void EsRelaySetInFlight(int sink, int in_flight);
extern void EsNoteOutboxCommit(int64 bound);
extern void EsOutboxCommitTimes(const int64 *ids, int n, TimestampTz *out);
extern void EsRelaySetState(int sink, EsRelayState state);
extern void EsRelayAccount(int sink, int sent, int retries, int dead, const char *error,
						   const double *latencies, int nlatencies);
extern bool EsRelayStatsCopy(int sink, EsRelayStats *copy);

/* relay.c */
extern PGDLLEXPORT void eventstore_relay_main(Datum arg);

/* launcher.c */
extern void EsRegisterLauncher(void);
extern bool EsDatabaseNameIsServed(const char *name);
extern void EsMakeWayForDatabaseCommand(Node *parsetree);
extern PGDLLEXPORT void eventstore_launcher_main(Datum arg);

/* aggregate.c */
extern int32 EsSnapshotRevision(const char *category);

/* A subscription's definition (subscription.c), loaded while SPI is connected */
typedef struct EsSubscription
{
	int32		id;				/* its lease locks' key */
	char	   *name;
	text	   *category;		/* NULL: every category */
	Datum		event_types;	/* text[], 0: every type */
	Datum		filter;			/* jsonpath, 0: none */
	int32		partitions;
	bool		park;			/* on_failure = 'park' */
} EsSubscription;

/* The most partitions a subscription has */
#define ES_MAX_PARTITIONS 1024

/*
 * The events of one category between two positions, as a range of the
 * (category, global_position) index: with the category in the ORDER BY too
 * (ES_CATEGORY_RANGE(...) ... ORDER BY e.category, e.global_position), no
 * plan can walk the primary key instead.  With LIMIT, the planner takes a
 * category's events for spread evenly over the positions, and a walk of the
 * primary key for cheap, where a category appended late makes it read the
 * whole table first.
 */
#define ES_CATEGORY_RANGE(category, after, before) \
	"(e.category, e.global_position) OPERATOR(pg_catalog.>) (" category ", " after ")" \
	" AND (e.category, e.global_position) OPERATOR(pg_catalog.<) (" category ", " before ")"

/* subscription.c */
extern EsSubscription *EsLoadSubscription(text *name);
extern void EsNoSubscription(const char *name, const char *detail);
extern void EsCheckPartition(const EsSubscription *sub, int32 partition);
extern bool EsTakeLease(const EsSubscription *sub, int32 partition, bool wait,
						bool *newly);
extern void EsReleaseLease(const EsSubscription *sub, int32 partition);
extern void EsSubscriptionXactCallback(XactEvent event, void *arg);
extern int32 EsStreamPartition(text *stream_id, int32 partitions);
extern void EsPrepareEvents(const EsSubscription *sub, int32 partition,
							int64 after, int64 before, int64 limit,
							DestReceiver *dest);

/* shmem.c: the wait for new events */
extern void EsWakePollers(void);
extern bool EsPrepareToWaitForEvents(void);
extern void EsWaitForEvents(long timeout_ms);
extern void EsStopWaitingForEvents(void);

/* outbox.c */
extern void EsWakePollersAtEnd(void);

/* relay.c, common.c */
extern double EsBackoffMs(int attempts);

#endif							/* EVENTSTORE_H */
