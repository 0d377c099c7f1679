/*
 * shmem.c
 *		The extension's shared memory: where backends find the relay worker's
 *		latch to wake it when they commit messages, the times of those
 *		commits (the relay's latencies start there), and the condition
 *		variable that subscriptions' poll() waits on for new events.
 *
 * It exists only when the library is in shared_preload_libraries; without
 * it there is no relay to wake, EsWakeRelay() does nothing and a waiting
 * poll() looks again every ES_POLL_RECHECK_MS instead.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "eventstore.h"

/*
 * A transaction that enqueued outbox messages, as it committed: every id
 * it took is at most 'bound' (the outbox sequence's last value just before
 * its commit)
 */
typedef struct EsCommitMark
{
	Oid			database;
	int64		bound;
	TimestampTz at;
} EsCommitMark;

/* The latest commits of outbox messages the relay looks up */
#define ES_COMMIT_MARKS 1024

/* What backends share with the relay worker */
typedef struct EsShared
{
	slock_t		mutex;
	Latch	   *relay_latch;	/* the relay's latch, NULL while none runs */
	bool		relay_revisit;	/* rows it passed may be ready: look again */
	uint32		relay_sinks;	/* bits (1 << sink) of the sinks committed rows are for */
	EsRelayStats stats[ES_RELAY_SINKS]; /* what relay_status() shows, per sink */
	ConditionVariable events_cv;	/* broadcast when appends end */
	uint64		commits_written;	/* marks written since startup */
	EsCommitMark commits[ES_COMMIT_MARKS];	/* a ring of the latest */
} EsShared;

/* How often a waiting poll() looks again without shared memory */
#define ES_POLL_RECHECK_MS 20

static EsShared *es_shared = NULL;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#if PG_VERSION_NUM >= 150000
/* Ask for our shared memory (PostgreSQL 15 and later) */
static void
EsShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(EsShared)));
}
#endif

/* Create or attach to our shared memory */
static void
EsShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	es_shared = ShmemInitStruct("eventstore", sizeof(EsShared), &found);
	if (!found)
	{
		SpinLockInit(&es_shared->mutex);
		es_shared->relay_latch = NULL;
		es_shared->relay_revisit = false;
		es_shared->relay_sinks = 0;
		es_shared->commits_written = 0;
		memset(es_shared->stats, 0, sizeof(es_shared->stats));
		ConditionVariableInit(&es_shared->events_cv);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Install the hooks; called from _PG_init in the postmaster */
void
EsShmemInit(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = EsShmemRequest;
#else
	RequestAddinShmemSpace(MAXALIGN(sizeof(EsShared)));
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = EsShmemStartup;
}

/*
 * Publish the relay worker's latch and reset its statistics (latch set), or
 * withdraw them as it exits (NULL).
 */
void
EsSetRelayLatch(Latch *latch)
{
	int			i;

	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->relay_latch = latch;
	if (latch != NULL)
		memset(es_shared->stats, 0, sizeof(es_shared->stats));
	for (i = 0; i < ES_RELAY_SINKS; i++)
	{
		es_shared->stats[i].pid = latch != NULL ? MyProcPid : 0;
		if (latch == NULL)
			es_shared->stats[i].state = ES_RELAY_STOPPED;
	}
	SpinLockRelease(&es_shared->mutex);
}

/* Whether the relay was asked to read passed rows again (and clear it) */
bool
EsRelayTakeRevisit(void)
{
	bool		revisit;

	if (es_shared == NULL)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	revisit = es_shared->relay_revisit;
	es_shared->relay_revisit = false;
	SpinLockRelease(&es_shared->mutex);
	return revisit;
}

/* The sinks the relay was woken for since the last call (and clear them) */
uint32
EsRelayTakeSinks(void)
{
	uint32		sinks;

	if (es_shared == NULL)
		return 0;
	SpinLockAcquire(&es_shared->mutex);
	sinks = es_shared->relay_sinks;
	es_shared->relay_sinks = 0;
	SpinLockRelease(&es_shared->mutex);
	return sinks;
}

/* How many messages the relay has in flight to a sink, for relay_status() */
void
EsRelaySetInFlight(int sink, int in_flight)
{
	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->stats[sink].in_flight = in_flight;
	SpinLockRelease(&es_shared->mutex);
}

/*
 * Note the commit of a transaction that enqueued outbox ids up to 'bound'.
 * Called at commit, once the transaction is visible and before its locks
 * are released (so before the relay can read its rows); must not raise an
 * error.
 */
void
EsNoteOutboxCommit(int64 bound)
{
	EsCommitMark *mark;
	TimestampTz now = GetCurrentTimestamp();

	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	mark = &es_shared->commits[es_shared->commits_written % ES_COMMIT_MARKS];
	mark->database = MyDatabaseId;
	mark->bound = bound;
	mark->at = now;
	es_shared->commits_written++;
	SpinLockRelease(&es_shared->mutex);
}

/*
 * The commit times of outbox rows 'ids' (ascending), for the relay's
 * latencies: for each, the time of the first commit noted after the relay's
 * last look whose bound covers it, 0 if none.  That is the row's own
 * transaction's commit, or an earlier one that took later ids while it was
 * open: never later than its own.  Marks of bounds below an id are passed
 * for good, since later reads only take larger ids (an id read again, for
 * a retry, gets 0).
 */
void
EsOutboxCommitTimes(const int64 *ids, int n, TimestampTz *out)
{
	static uint64 next = 0;		/* the first mark not passed yet */
	uint64		written;
	int			i;

	memset(out, 0, sizeof(TimestampTz) * n);
	if (es_shared == NULL || n == 0)
		return;
	SpinLockAcquire(&es_shared->mutex);
	written = es_shared->commits_written;
	if (written - next > ES_COMMIT_MARKS)
		next = written - ES_COMMIT_MARKS;	/* the oldest were overwritten */
	for (i = 0; i < n && next < written; i++)
	{
		EsCommitMark *mark;

		/* Pass marks of other databases, and those below the id */
		while (next < written &&
			   ((mark = &es_shared->commits[next % ES_COMMIT_MARKS])->database != MyDatabaseId ||
				mark->bound < ids[i]))
			next++;
		if (next < written)
			out[i] = mark->at;
	}
	SpinLockRelease(&es_shared->mutex);
}

/* The relay's state for a sink, as relay_status() shows it */
void
EsRelaySetState(int sink, EsRelayState state)
{
	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->stats[sink].state = state;
	SpinLockRelease(&es_shared->mutex);
}

/*
 * Account for a recorded batch of a sink: counters, the last error (NULL:
 * none new) and the delivery latencies (ms) of its acknowledged messages.
 */
void
EsRelayAccount(int sink, int sent, int retries, int dead, const char *error,
			   const double *latencies, int nlatencies)
{
	EsRelayStats *st;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (es_shared == NULL)
		return;
	st = &es_shared->stats[sink];
	SpinLockAcquire(&es_shared->mutex);
	st->sent_total += sent;
	st->retries_total += retries;
	st->dead_letters_total += dead;
	if (sent > 0)
		st->last_delivery_at = now;
	if (error != NULL)
	{
		strlcpy(st->last_error, error, sizeof(st->last_error));
		st->last_error_at = now;
	}
	for (i = 0; i < nlatencies; i++)
	{
		st->latency_ms[st->latency_next] = latencies[i];
		st->latency_next = (st->latency_next + 1) % ES_LATENCY_WINDOW;
		st->latency_count = Min(st->latency_count + 1, ES_LATENCY_WINDOW);
	}
	SpinLockRelease(&es_shared->mutex);
}

/* A copy of the relay's statistics for a sink; false without shared memory */
bool
EsRelayStatsCopy(int sink, EsRelayStats *copy)
{
	if (es_shared == NULL)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	memcpy(copy, &es_shared->stats[sink], sizeof(EsRelayStats));
	SpinLockRelease(&es_shared->mutex);
	return true;
}

/*
 * Wake the relay worker if one runs, for the sinks of 'sinks' (bits 1 <<
 * sink; 0: every sink); with 'revisit', it also reads again outbox rows it
 * has passed (dead letters of a parked key were requeued or discarded).
 * Called from a commit callback: it must not raise an error, and SetLatch()
 * does not.
 */
void
EsWakeRelay(bool revisit, uint32 sinks)
{
	Latch	   *latch;

	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	latch = es_shared->relay_latch;
	if (revisit)
		es_shared->relay_revisit = true;
	es_shared->relay_sinks |= sinks != 0 ? sinks : ~(uint32) 0;
	SpinLockRelease(&es_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Wake every poll() waiting for events.  Called after a transaction that
 * appended released its locks (so its horizon lock no longer holds anything
 * back); like EsWakeRelay it must not raise an error.
 */
void
EsWakePollers(void)
{
	if (es_shared != NULL)
		ConditionVariableBroadcast(&es_shared->events_cv);
}

/*
 * Before looking for events: from now on, a transaction that ends with
 * appends wakes the next EsWaitForEvents().  False without shared memory.
 */
bool
EsPrepareToWaitForEvents(void)
{
	if (es_shared == NULL)
		return false;
	ConditionVariablePrepareToSleep(&es_shared->events_cv);
	return true;
}

/*
 * Sleep until a transaction with appends ends (or anything else sets our
 * latch), at most 'timeout_ms'; without shared memory at most
 * ES_POLL_RECHECK_MS.  Interrupts are served.
 */
void
EsWaitForEvents(long timeout_ms)
{
	if (es_shared != NULL)
	{
		(void) ConditionVariableTimedSleep(&es_shared->events_cv, timeout_ms,
										   PG_WAIT_EXTENSION);
		return;
	}
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Min(timeout_ms, ES_POLL_RECHECK_MS), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/* Done waiting (EsPrepareToWaitForEvents) */
void
EsStopWaitingForEvents(void)
{
	if (es_shared != NULL)
		ConditionVariableCancelSleep();
}
