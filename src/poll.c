/*
 * poll.c
 *		Consuming a subscription: eventstore.poll(), ack() and nack().
 *
 * poll() returns a partition's next events after its checkpoint and below
 * read_all's horizon, so it never skips an event that commits late with a
 * smaller position (see horizon.c).  The horizon is computed before the
 * query takes its snapshot, which is why poll, like read_all, needs READ
 * COMMITTED.  Each partition is consumed under a lease (subscription.c) that
 * lasts until the caller's transaction ends; ack() moves the checkpoint in
 * that transaction, so a consumer that writes its results in the same
 * transaction has them exactly once.
 *
 * A poll that finds nothing can wait: it sleeps on a condition variable that
 * every transaction which took the events horizon broadcasts once its locks
 * are released (outbox.c), and looks again.  Without shared memory it looks
 * again every few milliseconds.
 *
 * A failed event (nack) is offered again after a backoff, the partition
 * holding meanwhile to keep its order; after eventstore.max_attempts it
 * becomes a dead letter and the partition moves on ('skip') or holds at it
 * until an operator requeues or discards it ('park').
 *
 * On a hot standby poll writes nothing: it returns the events after the
 * partition's checkpoint (as replicated) and below the horizon the
 * primary published (horizon.c), stops before an event the filter fails on
 * (as in 'park' mode), and leaves requeued dead letters and the
 * checkpoint's moves to polls on the primary.  Acknowledge there.  It
 * waits only with hot_standby_feedback on: a waiting poll keeps its
 * statement's snapshot, which the primary's cleanup would conflict with.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "replication/walreceiver.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "eventstore.h"

/* The columns of eventstore.events, which poll returns */
#define ES_EVENT_COLUMNS 9

/*
 * A partition whose checkpoint is this far behind the head and which has no
 * event to deliver gets its checkpoint moved up by poll, so that the next
 * poll does not scan the same events again
 */
#define ES_ADVANCE_GAP 1000

/*
 * Events the candidate query of a poll without a partition looks at, per
 * partition: enough to find each busy partition, few enough that a backlog
 * costs little
 */
#define ES_CANDIDATE_SCAN 8

/* Events the filter fails on that one poll handles at most, if max_count is smaller */
#define ES_FAILURES_PER_POLL 100

/* The partition this transaction's last poll without a partition claimed */
static struct
{
	LocalTransactionId lxid;
	int32		sub_id;
	int32		partition;
}			es_claim;

/* What one poll of one partition found */
typedef struct EsPollResult
{
	int64		count;			/* events returned */
	bool		wrote;			/* it wrote (dead letters, checkpoint) */
	TimestampTz retry_at;		/* 0, or when its retry falls due */
} EsPollResult;

/* A partition's row as poll, ack and nack need it */
typedef struct EsPartitionState
{
	int64		checkpoint;
	int64		failed_position;	/* 0: none */
	int32		attempts;
	TimestampTz next_attempt_at;	/* 0: none */
	TimestampTz first_failed_at;	/* 0: none */
	int64		parked_at;		/* 0: not parked, else the dead letter's position */
	bool		requeued;		/* it has requeued dead letters */
} EsPartitionState;

/* Read a partition's row (SPI connected, as the owner, lease held) */
static void
EsReadPartition(const EsSubscription *sub, int32 partition, EsPartitionState *st)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		values[2];
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(partition);
	EsSpiExec(EsPlan(&plan,
					 "SELECT p.checkpoint, p.failed_position, p.attempts, p.next_attempt_at,"
					 " p.first_failed_at,"
					 " (SELECT pg_catalog.min(d.event_position)"
					 " FROM eventstore.subscription_dead_letters d"
					 " WHERE d.subscription OPERATOR(pg_catalog.=) p.subscription"
					 " AND d.partition OPERATOR(pg_catalog.=) p.partition"
					 " AND d.requeued_at IS NULL"
					 " AND d.event_position OPERATOR(pg_catalog.>) p.checkpoint),"
					 " EXISTS (SELECT FROM eventstore.subscription_dead_letters d"
					 " WHERE d.subscription OPERATOR(pg_catalog.=) p.subscription"
					 " AND d.partition OPERATOR(pg_catalog.=) p.partition"
					 " AND d.requeued_at IS NOT NULL)"
					 " FROM eventstore.subscription_partitions p"
					 " WHERE p.subscription OPERATOR(pg_catalog.=) $1"
					 " AND p.partition OPERATOR(pg_catalog.=) $2",
					 2, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	if (SPI_processed == 0)
		EsNoSubscription(sub->name, "It was dropped while this transaction used it.");
	tuple = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	st->checkpoint = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
	d = SPI_getbinval(tuple, desc, 2, &isnull);
	st->failed_position = isnull ? 0 : DatumGetInt64(d);
	st->attempts = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
	d = SPI_getbinval(tuple, desc, 4, &isnull);
	st->next_attempt_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(tuple, desc, 5, &isnull);
	st->first_failed_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(tuple, desc, 6, &isnull);
	/* Only park mode holds a partition at a dead letter */
	st->parked_at = isnull || !sub->park ? 0 : DatumGetInt64(d);
	st->requeued = DatumGetBool(SPI_getbinval(tuple, desc, 7, &isnull));
}

/*
 * Append the event of an SPI row (its first ES_EVENT_COLUMNS columns) to
 * the result.  The row is deformed once: fetching column by column would
 * walk the variable-width columns again for each.
 */
static void
EsReturnEvent(ReturnSetInfo *rsinfo, HeapTuple tuple, TupleDesc desc)
{
	Datum		values[ES_EVENT_COLUMNS + 1];
	bool		nulls[ES_EVENT_COLUMNS + 1];

	if (desc->natts > ES_EVENT_COLUMNS + 1)
		elog(ERROR, "unexpected row of %d columns", desc->natts);
	heap_deform_tuple(tuple, desc, values, nulls);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * The receiver of a poll's scan: it appends each event to the result, and
 * stops the scan at the first event the filter failed on, keeping a copy.
 */
typedef struct EsEventReceiver
{
	DestReceiver pub;
	Tuplestorestate *store;
	TupleDesc	desc;			/* the result's: eventstore.events */
	MemoryContext cxt;			/* where the copy of a failed event lives */
	int64		stored;
	HeapTuple	failed;			/* the event the filter failed on, or NULL */
	TupleDesc	failed_desc;
	int64		failed_position;
	text	   *failed_stream;
} EsEventReceiver;

/* EsEventReceiver: one row of the scan */
static bool
EsReceiveEvent(TupleTableSlot *slot, DestReceiver *self)
{
	EsEventReceiver *r = (EsEventReceiver *) self;

	if (slot->tts_tupleDescriptor->natts > ES_EVENT_COLUMNS)
	{
		/* With a filter: the verdict follows the event's columns */
		slot_getallattrs(slot);
		if (slot->tts_isnull[ES_EVENT_COLUMNS])
		{
			MemoryContext old = MemoryContextSwitchTo(r->cxt);

			r->failed = ExecCopySlotHeapTuple(slot);
			r->failed_desc = CreateTupleDescCopy(slot->tts_tupleDescriptor);
			r->failed_position = DatumGetInt64(slot->tts_values[0]);
			r->failed_stream = DatumGetTextPCopy(slot->tts_values[1]);
			MemoryContextSwitchTo(old);
			return false;		/* stop the scan here */
		}
		tuplestore_putvalues(r->store, r->desc, slot->tts_values, slot->tts_isnull);
	}
	else
		tuplestore_puttupleslot(r->store, slot);
	r->stored++;
	return true;
}

/* EsEventReceiver: nothing to do at the start and end of the scan */
static void
EsReceiverStartup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

/* EsEventReceiver: see EsReceiverStartup */
static void
EsReceiverNoop(DestReceiver *self)
{
}

/* Set up a receiver that appends to the poll's result */
static void
EsInitReceiver(EsEventReceiver *r, ReturnSetInfo *rsinfo)
{
	memset(r, 0, sizeof(EsEventReceiver));
	r->pub.receiveSlot = EsReceiveEvent;
	r->pub.rStartup = EsReceiverStartup;
	r->pub.rShutdown = EsReceiverNoop;
	r->pub.rDestroy = EsReceiverNoop;
	r->pub.mydest = DestNone;
	r->store = rsinfo->setResult;
	r->desc = rsinfo->setDesc;
	r->cxt = CurrentMemoryContext;
}

/*
 * Return the requeued dead letters of a partition at or before its
 * checkpoint, oldest first, at most 'limit', marking them delivered (ack
 * removes delivered ones).  Those after the checkpoint come in order with
 * the partition's events (EsFilterFailure).
 */
static int64
EsPollRequeued(const EsSubscription *sub, int32 partition, int64 checkpoint,
			   int64 limit, ReturnSetInfo *rsinfo)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[4] = {TEXTOID, INT4OID, INT8OID, INT8OID};
	Datum		values[4];
	uint64		i;

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(partition);
	values[2] = Int64GetDatum(limit);
	values[3] = Int64GetDatum(checkpoint);
	EsSpiExec(EsPlan(&plan,
					 "WITH r AS (UPDATE eventstore.subscription_dead_letters d"
					 " SET delivered_at = pg_catalog.now()"
					 " WHERE d.id OPERATOR(pg_catalog.=) ANY (ARRAY("
					 " SELECT d2.id FROM eventstore.subscription_dead_letters d2"
					 " WHERE d2.subscription OPERATOR(pg_catalog.=) $1"
					 " AND d2.partition OPERATOR(pg_catalog.=) $2 AND d2.requeued_at IS NOT NULL"
					 " AND d2.event_position OPERATOR(pg_catalog.<=) $4"
					 " ORDER BY d2.event_position LIMIT $3))"
					 " RETURNING d.event_position)"
					 " SELECT e.* FROM eventstore.events e JOIN r"
					 " ON e.global_position OPERATOR(pg_catalog.=) r.event_position"
					 " ORDER BY e.global_position",
					 4, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	for (i = 0; i < SPI_processed; i++)
		EsReturnEvent(rsinfo, SPI_tuptable->vals[i], SPI_tuptable->tupdesc);
	return (int64) SPI_processed;
}

/*
 * Record an event as a dead letter of the subscription ('error', 'attempts');
 * again for the same event only updates it
 */
static void
EsDeadLetter(const EsSubscription *sub, int32 partition, int64 position,
			 text *stream_id, int32 attempts, const char *error,
			 TimestampTz first_failed_at)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[7] = {TEXTOID, INT4OID, INT8OID, TEXTOID, INT4OID, TEXTOID,
	TIMESTAMPTZOID};
	Datum		values[7];
	char		nulls[7] = "       ";

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(partition);
	values[2] = Int64GetDatum(position);
	values[3] = PointerGetDatum(stream_id);
	values[4] = Int32GetDatum(attempts);
	values[5] = CStringGetTextDatum(error);
	values[6] = TimestampTzGetDatum(first_failed_at);
	nulls[6] = first_failed_at == 0 ? 'n' : ' ';
	EsSpiExec(EsPlan(&plan,
					 "INSERT INTO eventstore.subscription_dead_letters (subscription, partition,"
					 " event_position, stream_id, attempts, last_error, first_failed_at,"
					 " last_failed_at)"
					 " VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, pg_catalog.now()), pg_catalog.now())"
					 " ON CONFLICT (subscription, event_position) DO UPDATE"
					 " SET attempts = excluded.attempts, last_error = excluded.last_error,"
					 " last_failed_at = excluded.last_failed_at, requeued_at = NULL,"
					 " delivered_at = NULL",
					 7, argtypes),
			  values, nulls, false, SPI_OK_INSERT);
}

/*
 * The filter failed on the event at 'position': true when it is a requeued
 * dead letter, to be delivered without the filter (marked delivered); else
 * it becomes a dead letter, if it is not one already
 */
static bool
EsFilterFailure(const EsSubscription *sub, int32 partition, int64 position,
				text *stream_id)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[4] = {TEXTOID, INT4OID, INT8OID, TEXTOID};
	Datum		values[4];

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(partition);
	values[2] = Int64GetDatum(position);
	values[3] = PointerGetDatum(stream_id);
	EsSpiExec(EsPlan(&plan,
					 "WITH dead AS (INSERT INTO eventstore.subscription_dead_letters"
					 " (subscription, partition, event_position, stream_id, attempts, last_error,"
					 " first_failed_at, last_failed_at)"
					 " VALUES ($1, $2, $3, $4, 1,"
					 " 'the subscription''s filter is neither true nor false on this event',"
					 " pg_catalog.now(), pg_catalog.now())"
					 " ON CONFLICT (subscription, event_position) DO NOTHING)"
					 " UPDATE eventstore.subscription_dead_letters SET delivered_at = pg_catalog.now()"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1"
					 " AND event_position OPERATOR(pg_catalog.=) $3 AND requeued_at IS NOT NULL",
					 4, argtypes),
			  values, NULL, false, SPI_OK_UPDATE);
	return SPI_processed > 0;
}

/*
 * Move a partition's checkpoint up to 'position' ('acked': by ack or nack)
 * and clear a failure at or below 'settled'
 */
static void
EsSetCheckpoint(const EsSubscription *sub, int32 partition, int64 position,
				int64 settled, bool acked)
{
	static SPIPlanPtr plan = NULL;
	static SPIPlanPtr clear_plan = NULL;
	Oid			argtypes[4] = {TEXTOID, INT4OID, INT8OID, BOOLOID};
	Datum		values[4];

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(partition);
	values[2] = Int64GetDatum(position);
	values[3] = BoolGetDatum(acked);
	EsSpiExec(EsPlan(&plan,
					 "UPDATE eventstore.subscription_partitions"
					 " SET checkpoint = pg_catalog.int8larger(checkpoint, $3),"
					 " acked_at = CASE WHEN $4 THEN pg_catalog.now() ELSE acked_at END"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1"
					 " AND partition OPERATOR(pg_catalog.=) $2",
					 4, argtypes),
			  values, NULL, false, SPI_OK_UPDATE);
	/* A failure at or below the new checkpoint is settled */
	values[2] = Int64GetDatum(settled);
	EsSpiExec(EsPlan(&clear_plan,
					 "UPDATE eventstore.subscription_partitions"
					 " SET failed_position = NULL, attempts = 0, next_attempt_at = NULL,"
					 " first_failed_at = NULL, last_error = NULL"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1"
					 " AND partition OPERATOR(pg_catalog.=) $2"
					 " AND failed_position OPERATOR(pg_catalog.<=) $3",
					 4, argtypes),
			  values, NULL, false, SPI_OK_UPDATE);
}

/*
 * Poll one partition whose lease this transaction holds (SPI connected, as
 * the owner): its requeued dead letters, then its events after the
 * checkpoint and below 'horizon', at most 'max_count' in all.
 */
static EsPollResult
EsPollPartition(const EsSubscription *sub, int32 partition, int64 horizon,
				int64 max_count, ReturnSetInfo *rsinfo)
{
	EsPollResult res = {0, false, 0};
	EsPartitionState st;
	int64		before;
	int64		after;
	int64		failures;
	MemoryContext scan_cxt;
	bool		scanned_any = false;
	bool		standby = RecoveryInProgress();	/* read-only: see the file header */

	EsReadPartition(sub, partition, &st);
	if (st.next_attempt_at != 0 && st.next_attempt_at > GetCurrentTimestamp())
	{
		/* A failed event waits for its retry, and the partition with it */
		res.retry_at = st.next_attempt_at;
		return res;
	}
	if (st.requeued && !standby)
	{
		res.count = EsPollRequeued(sub, partition, st.checkpoint, max_count, rsinfo);
		res.wrote = res.count > 0;
		if (res.count >= max_count)
			return res;
	}

	/*
	 * The events after the checkpoint, never past the horizon nor past a dead
	 * letter the partition is parked at.  The scan stops at an event the
	 * filter fails on, which is handled and the scan goes on after it.
	 */
	before = horizon;
	if (st.parked_at != 0 && st.parked_at < before)
		before = st.parked_at;
	after = st.checkpoint;
	failures = Max(max_count, ES_FAILURES_PER_POLL);
	scan_cxt = AllocSetContextCreate(CurrentMemoryContext, "eventstore poll scan",
									 ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		EsEventReceiver r;
		MemoryContext old = MemoryContextSwitchTo(scan_cxt);

		EsInitReceiver(&r, rsinfo);
		EsPrepareEvents(sub, partition, after, before, max_count - res.count, &r.pub);
		res.count += r.stored;
		scanned_any = scanned_any || r.stored > 0 || r.failed != NULL;
		if (r.failed == NULL || standby)
		{
			MemoryContextSwitchTo(old);
			break;
		}

		/* A failure of the subscription, unless an operator requeued it */
		res.wrote = true;
		if (EsFilterFailure(sub, partition, r.failed_position, r.failed_stream))
		{
			EsReturnEvent(rsinfo, r.failed, r.failed_desc);
			res.count++;
		}
		else if (sub->park)
		{
			MemoryContextSwitchTo(old);
			break;
		}
		else if (res.count == 0)
		{
			/*
			 * Skip mode, and nothing before it to deliver: the partition moves
			 * past it now, so that failures cost each poll only once
			 */
			EsSetCheckpoint(sub, partition, r.failed_position, r.failed_position, false);
		}
		after = r.failed_position;
		MemoryContextSwitchTo(old);
		MemoryContextReset(scan_cxt);
		/* Failures count too: a poll's work is bounded whatever the events */
		if (res.count >= max_count || --failures <= 0)
			break;
	}
	MemoryContextDelete(scan_cxt);

	/*
	 * Nothing matched up to the horizon: remember that, so that the next
	 * poll does not read the same events again
	 */
	if (!scanned_any && res.count == 0 && before == horizon && !standby &&
		horizon - 1 - st.checkpoint >= ES_ADVANCE_GAP)
	{
		EsSetCheckpoint(sub, partition, horizon - 1, horizon - 1, false);
		res.wrote = true;
	}
	return res;
}

/*
 * The partitions that may have something to deliver below 'horizon': those
 * with events after the smallest checkpoint or with requeued dead letters,
 * as an array of flags; NULL when there are too many events to look at
 * (then every partition may).  A poll that lets the partition be chosen
 * looks only at these, so that a wait on a subscription of many partitions
 * costs a query or two per wake-up, not several per partition.
 */
static bool *
EsCandidatePartitions(const EsSubscription *sub, int64 horizon)
{
	static SPIPlanPtr plans[4];
	static SPIPlanPtr min_plan = NULL;
	static SPIPlanPtr requeued_plan = NULL;
	Oid			argtypes[7] = {TEXTOID, INT8OID, INT4OID, TEXTOID, TEXTARRAYOID, INT8OID,
	INT8OID};
	Datum		values[7];
	char		nulls[7] = "       ";
	int64		limit = (int64) Max(64, ES_CANDIDATE_SCAN * sub->partitions);
	int			shape = (sub->category ? 1 : 0) | (sub->event_types ? 2 : 0);
	bool	   *flags;
	bool		isnull;
	uint64		i;

	if (plans[shape] == NULL)
	{
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT eventstore.stream_partition(e.stream_id, $3)"
						 " FROM eventstore.events e WHERE %s%s"
						 " ORDER BY %se.global_position LIMIT $6",
						 sub->category ? ES_CATEGORY_RANGE("$4", "$7", "$2") :
						 "e.global_position OPERATOR(pg_catalog.>) $7"
						 " AND e.global_position OPERATOR(pg_catalog.<) $2",
						 sub->event_types ? " AND e.event_type OPERATOR(pg_catalog.=) ANY ($5)" : "",
						 sub->category ? "e.category, " : "");
		/* Planned for each call's positions, as in EsPrepareEvents */
		EsPlanWithOptions(&plans[shape], sql.data, 7, argtypes, CURSOR_OPT_CUSTOM_PLAN);
	}
	values[0] = CStringGetTextDatum(sub->name);

	/* The smallest checkpoint, as a value the planner sees */
	EsSpiExec(EsPlan(&min_plan,
					 "SELECT pg_catalog.min(checkpoint) FROM eventstore.subscription_partitions"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1",
					 1, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	values[6] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return NULL;

	values[1] = Int64GetDatum(horizon);
	values[2] = Int32GetDatum(sub->partitions);
	values[3] = PointerGetDatum(sub->category);
	nulls[3] = sub->category ? ' ' : 'n';
	values[4] = sub->event_types;
	nulls[4] = sub->event_types ? ' ' : 'n';
	values[5] = Int64GetDatum(limit);
	EsSpiExec(plans[shape], values, nulls, false, SPI_OK_SELECT);
	if (SPI_processed >= (uint64) limit)
		return NULL;
	flags = palloc0(sizeof(bool) * sub->partitions);
	for (i = 0; i < SPI_processed; i++)
		flags[DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
										  1, &isnull))] = true;

	EsSpiExec(EsPlan(&requeued_plan,
					 "SELECT DISTINCT partition FROM eventstore.subscription_dead_letters"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1 AND requeued_at IS NOT NULL",
					 1, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	for (i = 0; i < SPI_processed; i++)
	{
		int32		p = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 1, &isnull));

		if (p >= 0 && p < sub->partitions)
			flags[p] = true;
	}
	return flags;
}

/*
 * Poll once (SPI connected, as the owner): the given partition, or the one
 * this transaction claimed, or else the first free partition with something
 * to deliver.  *retry_at: the earliest retry of a partition looked at.
 */
static int64
EsPollOnce(const EsSubscription *sub, int32 partition, int64 max_count,
		   ReturnSetInfo *rsinfo, TimestampTz *retry_at)
{
	int64		horizon;
	EsPollResult res;
	bool		newly;
	bool	   *candidates;
	int32		start;
	int32		i;

	*retry_at = 0;
	if (partition < 0 && es_claim.lxid == EsMyLocalXid() && es_claim.sub_id == sub->id)
		partition = es_claim.partition;
	if (partition >= 0)
	{
		(void) EsTakeLease(sub, partition, true, &newly);
		horizon = EsHorizon(ES_SEQ_EVENTS);
		res = EsPollPartition(sub, partition, horizon, max_count, rsinfo);
		*retry_at = res.retry_at;
		return res.count;
	}

	/* Claim a free partition, starting at a random one to spread consumers */
	horizon = EsHorizon(ES_SEQ_EVENTS);
	candidates = sub->partitions > 1 ? EsCandidatePartitions(sub, horizon) : NULL;
	start = (int32) (EsRandomDouble() * sub->partitions) % sub->partitions;
	for (i = 0; i < sub->partitions; i++)
	{
		int32		p = (start + i) % sub->partitions;

		if (candidates != NULL && !candidates[p])
			continue;
		if (!EsTakeLease(sub, p, false, &newly))
			continue;
		res = EsPollPartition(sub, p, horizon, max_count, rsinfo);
		if (res.count > 0)
		{
			es_claim.lxid = EsMyLocalXid();
			es_claim.sub_id = sub->id;
			es_claim.partition = p;
			return res.count;
		}
		if (res.retry_at != 0 && (*retry_at == 0 || res.retry_at < *retry_at))
			*retry_at = res.retry_at;
		/* Keep a partition this transaction wrote to; give back the others */
		if (newly && !res.wrote)
			EsReleaseLease(sub, p);
	}
	return 0;
}

/* The wait argument in milliseconds; 22023 when negative */
static int64
EsWaitMs(Interval *wait)
{
	double		ms;

	ms = (double) wait->time / 1000.0 +
		((double) wait->day + (double) wait->month * DAYS_PER_MONTH) * SECS_PER_DAY * 1000.0;
	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("wait must not be negative")));
	return ms > (double) PG_INT32_MAX ? PG_INT32_MAX : (int64) ms;
}

PG_FUNCTION_INFO_V1(eventstore_poll);

/*
 * SQL: eventstore.poll(subscription text, max_count integer, wait interval,
 * partition integer) -> SETOF eventstore.events
 */
Datum
eventstore_poll(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *name;
	int64		max_count;
	int64		wait_ms;
	int32		partition = PG_ARGISNULL(3) ? -1 : PG_GETARG_INT32(3);
	TimestampTz deadline;
	bool		waiting = false;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("subscription must not be null")));
	name = PG_GETARG_TEXT_PP(0);
	EsCheckKeyLength("subscription", VARSIZE_ANY_EXHDR(name));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", PG_ARGISNULL(1) ? "max_count" : "wait")));
	max_count = PG_GETARG_INT32(1);
	if (max_count < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must not be negative: %lld", (long long) max_count)));
	wait_ms = EsWaitMs(PG_GETARG_INTERVAL_P(2));
	if (wait_ms > 0 && RecoveryInProgress() && !hot_standby_feedback)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("poll cannot wait on a hot standby without hot_standby_feedback"),
				 errdetail("A waiting poll keeps its snapshot: the primary's cleanup of rows it may see would stop replay behind it and cancel it after max_standby_streaming_delay."),
				 errhint("Set hot_standby_feedback = on on this standby, or poll with wait => '0' and sleep between polls.")));
	if (!PG_ARGISNULL(3) && partition < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition must not be negative: %d", partition)));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("poll requires the READ COMMITTED isolation level"),
				 errdetail("Under a transaction snapshot poll could skip events that commit later with a smaller position.")));
	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != ES_EVENT_COLUMNS)
		elog(ERROR, "eventstore.events has %d columns, expected %d",
			 rsinfo->setDesc->natts, ES_EVENT_COLUMNS);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	for (;;)
	{
		EsSubscription *sub;
		EsSavedUser saved;
		TimestampTz retry_at;
		TimestampTz wake_at;
		TimestampTz now;
		int64		n;

		/* From here on, an append that ends wakes the wait below */
		if (wait_ms > 0)
			waiting = EsPrepareToWaitForEvents() || waiting;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		EsBecomeOwner(&saved);
		sub = EsLoadSubscription(name);
		if (partition >= 0)
			EsCheckPartition(sub, partition);
		n = max_count == 0 ? 0 : EsPollOnce(sub, partition, max_count, rsinfo, &retry_at);
		EsRestoreUser(&saved);
		SPI_finish();

		now = GetCurrentTimestamp();
		if (n > 0 || max_count == 0 || now >= deadline)
			break;
		wake_at = deadline;
		if (retry_at != 0 && retry_at < wake_at)
			wake_at = retry_at;
		EsWaitForEvents(Max(1, (long) ((wake_at - now + 999) / 1000)));
	}
	if (waiting)
		EsStopWaitingForEvents();
	return (Datum) 0;
}

/*
 * The partition of an ack or nack: the argument, or the partition of the
 * event at 'position' (0 for a subscription of one partition, whatever is
 * there).  Sets *stream_id to the event's stream, NULL when there is none.
 */
static int32
EsAckPartition(FunctionCallInfo fcinfo, int argno, const EsSubscription *sub,
			   int64 position, text **stream_id)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	bool		isnull;

	values[0] = Int64GetDatum(position);
	EsSpiExec(EsPlan(&plan,
					 "SELECT stream_id FROM eventstore.events"
					 " WHERE global_position OPERATOR(pg_catalog.=) $1",
					 1, argtypes),
			  values, NULL, false, SPI_OK_SELECT);
	*stream_id = SPI_processed == 0 ? NULL :
		DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (!PG_ARGISNULL(argno))
	{
		int32		partition = PG_GETARG_INT32(argno);

		EsCheckPartition(sub, partition);
		return partition;
	}
	if (*stream_id != NULL)
		return EsStreamPartition(*stream_id, sub->partitions);
	if (sub->partitions == 1)
		return 0;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("there is no event at position %lld", (long long) position),
			 errhint("Name the partition to move its checkpoint to a position that is not an event.")));
	return -1;					/* keep the compiler quiet */
}

/*
 * Raise 22023 when 'position' is past the head, the last position taken: no
 * event can be there yet.  (Not the horizon, which another transaction can
 * lower for a moment while it announces its bound.)
 */
static void
EsCheckNotAhead(const EsSubscription *sub, int32 partition, int64 position)
{
	int64		head = EsLastValue(ES_SEQ_EVENTS);

	if (position > head)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("position %lld is ahead of the head %lld of the event store",
						(long long) position, (long long) head),
				 errdetail("Partition %d of subscription \"%s\" cannot be acknowledged past the last event.",
						   partition, sub->name)));
}

/* Raise 22023: 'position' is behind the partition's checkpoint, or at it */
static void
EsBehindCheckpoint(const EsSubscription *sub, int32 partition, int64 position,
				   int64 checkpoint)
{
	if (position == checkpoint)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("position %lld is the checkpoint of partition %d of subscription \"%s\": it is acknowledged already",
						(long long) position, partition, sub->name)));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("position %lld is behind the checkpoint %lld of partition %d of subscription \"%s\"",
					(long long) position, (long long) checkpoint, partition, sub->name)));
}

/*
 * Requeued dead letters of a partition that an ack of 'position' settles
 * leave the table: those at or below 'position' that poll delivered (behind
 * the checkpoint, poll returns them first, in order) or that come after the
 * checkpoint (poll returns them in their place).  How many.
 */
static uint64
EsAckRequeued(const EsSubscription *sub, int32 partition, int64 position,
			  int64 checkpoint)
{
	static SPIPlanPtr plan = NULL;
	Oid			argtypes[4] = {TEXTOID, INT4OID, INT8OID, INT8OID};
	Datum		values[4];

	values[0] = CStringGetTextDatum(sub->name);
	values[1] = Int32GetDatum(partition);
	values[2] = Int64GetDatum(position);
	values[3] = Int64GetDatum(checkpoint);
	EsSpiExec(EsPlan(&plan,
					 "DELETE FROM eventstore.subscription_dead_letters"
					 " WHERE subscription OPERATOR(pg_catalog.=) $1"
					 " AND partition OPERATOR(pg_catalog.=) $2 AND requeued_at IS NOT NULL"
					 " AND event_position OPERATOR(pg_catalog.<=) $3"
					 " AND (delivered_at IS NOT NULL OR event_position OPERATOR(pg_catalog.>) $4)",
					 4, argtypes),
			  values, NULL, false, SPI_OK_DELETE);
	return SPI_processed;
}

/* The subscription and position arguments of ack and nack */
static void
EsCheckAckArgs(FunctionCallInfo fcinfo, text **name, int64 *position)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("subscription must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("position must not be null")));
	*name = PG_GETARG_TEXT_PP(0);
	EsCheckKeyLength("subscription", VARSIZE_ANY_EXHDR(*name));
	*position = PG_GETARG_INT64(1);
}

PG_FUNCTION_INFO_V1(eventstore_ack);

/*
 * SQL: eventstore.ack(subscription text, position bigint, partition integer)
 * -> void.  Every event of the partition at or below 'position' is done.
 */
Datum
eventstore_ack(PG_FUNCTION_ARGS)
{
	text	   *name;
	int64		position;
	EsSubscription *sub;
	EsSavedUser saved;
	EsPartitionState st;
	text	   *stream_id;
	int32		partition;
	bool		newly;

	EsCheckAckArgs(fcinfo, &name, &position);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	sub = EsLoadSubscription(name);
	partition = EsAckPartition(fcinfo, 2, sub, position, &stream_id);
	(void) EsTakeLease(sub, partition, true, &newly);
	EsReadPartition(sub, partition, &st);
	if (position < st.checkpoint)
	{
		/* Only requeued dead letters poll returned can be behind it */
		if (!st.requeued ||
			EsAckRequeued(sub, partition, position, st.checkpoint) == 0)
			EsBehindCheckpoint(sub, partition, position, st.checkpoint);
	}
	else
	{
		EsCheckNotAhead(sub, partition, position);
		if (st.requeued)
			(void) EsAckRequeued(sub, partition, position, st.checkpoint);
		if (position > st.checkpoint)
			EsSetCheckpoint(sub, partition, position, position, true);
	}
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(eventstore_nack);

/*
 * SQL: eventstore.nack(subscription text, position bigint, error text,
 * partition integer) -> void.  The event at 'position' failed; the ones
 * before it in the partition are done.
 */
Datum
eventstore_nack(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr retry_plan = NULL;
	static SPIPlanPtr requeued_plan = NULL;
	text	   *name;
	int64		position;
	char	   *error;
	EsSubscription *sub;
	EsSavedUser saved;
	EsPartitionState st;
	text	   *stream_id;
	int32		partition;
	int32		attempts;
	bool		newly;

	EsCheckAckArgs(fcinfo, &name, &position);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("error must not be null")));
	error = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	sub = EsLoadSubscription(name);
	partition = EsAckPartition(fcinfo, 3, sub, position, &stream_id);
	if (stream_id == NULL || EsStreamPartition(stream_id, sub->partitions) != partition)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("there is no event at position %lld in partition %d of subscription \"%s\"",
						(long long) position, partition, sub->name)));
	(void) EsTakeLease(sub, partition, true, &newly);
	EsReadPartition(sub, partition, &st);

	/* The requeued dead letters poll returned before it are done */
	if (st.requeued && position > 0)
		(void) EsAckRequeued(sub, partition, position - 1, st.checkpoint);

	{
		/* A requeued dead letter that failed again goes straight back */
		Oid			argtypes[4] = {TEXTOID, INT4OID, INT8OID, TEXTOID};
		Datum		values[4];

		values[0] = CStringGetTextDatum(sub->name);
		values[1] = Int32GetDatum(partition);
		values[2] = Int64GetDatum(position);
		values[3] = CStringGetTextDatum(error);
		EsSpiExec(EsPlan(&requeued_plan,
						 "UPDATE eventstore.subscription_dead_letters"
						 " SET requeued_at = NULL, delivered_at = NULL,"
						 " attempts = attempts OPERATOR(pg_catalog.+) 1, last_error = $4,"
						 " last_failed_at = pg_catalog.now()"
						 " WHERE subscription OPERATOR(pg_catalog.=) $1"
						 " AND partition OPERATOR(pg_catalog.=) $2"
						 " AND event_position OPERATOR(pg_catalog.=) $3"
						 " AND requeued_at IS NOT NULL",
						 4, argtypes),
				  values, NULL, false, SPI_OK_UPDATE);
		if (SPI_processed > 0)
		{
			/* After the checkpoint: the partition moves on, or parks at it */
			if (position > st.checkpoint)
				EsSetCheckpoint(sub, partition, sub->park ? position - 1 : position,
								position, true);
			EsRestoreUser(&saved);
			SPI_finish();
			PG_RETURN_VOID();
		}
	}
	if (position <= st.checkpoint)
		EsBehindCheckpoint(sub, partition, position, st.checkpoint);
	EsCheckNotAhead(sub, partition, position);

	attempts = st.failed_position == position ? st.attempts + 1 : 1;
	if (attempts >= es_max_attempts)
	{
		/* Given up: a dead letter; the partition moves on or holds at it */
		EsDeadLetter(sub, partition, position, stream_id, attempts, error,
					 st.failed_position == position ? st.first_failed_at : 0);
		EsSetCheckpoint(sub, partition, sub->park ? position - 1 : position,
						position, true);
	}
	else
	{
		Oid			argtypes[6] = {TEXTOID, INT4OID, INT8OID, INT4OID, TEXTOID, FLOAT8OID};
		Datum		values[6];

		values[0] = CStringGetTextDatum(sub->name);
		values[1] = Int32GetDatum(partition);
		values[2] = Int64GetDatum(position);
		values[3] = Int32GetDatum(attempts);
		values[4] = CStringGetTextDatum(error);
		values[5] = Float8GetDatum(EsBackoffMs(attempts - 1));
		EsSpiExec(EsPlan(&retry_plan,
						 "UPDATE eventstore.subscription_partitions"
						 " SET checkpoint = pg_catalog.int8larger(checkpoint,"
						 " $3 OPERATOR(pg_catalog.-) 1),"
						 " acked_at = pg_catalog.now(), failed_position = $3, attempts = $4,"
						 " next_attempt_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
						 " pg_catalog.make_interval(secs => $6 OPERATOR(pg_catalog./) 1000),"
						 " first_failed_at = CASE WHEN $4 OPERATOR(pg_catalog.=) 1"
						 " THEN pg_catalog.now() ELSE first_failed_at END,"
						 " last_error = $5"
						 " WHERE subscription OPERATOR(pg_catalog.=) $1"
						 " AND partition OPERATOR(pg_catalog.=) $2",
						 6, argtypes),
				  values, NULL, false, SPI_OK_UPDATE);
	}
	EsRestoreUser(&saved);
	SPI_finish();
	PG_RETURN_VOID();
}
