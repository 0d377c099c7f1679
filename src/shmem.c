/*
 * shmem.c
 *		The extension's shared memory: where backends find the relay worker's
 *		latch to wake it when they commit messages, and the condition
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

/* What backends share with the relay worker */
typedef struct EsShared
{
	slock_t		mutex;
	Latch	   *relay_latch;	/* the relay's latch, NULL while none runs */
	EsRelayStats stats;			/* what relay_status() shows */
	ConditionVariable events_cv;	/* broadcast when appends end */
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
		memset(&es_shared->stats, 0, sizeof(EsRelayStats));
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
	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->relay_latch = latch;
	if (latch != NULL)
	{
		memset(&es_shared->stats, 0, sizeof(EsRelayStats));
		es_shared->stats.pid = MyProcPid;
	}
	else
	{
		es_shared->stats.pid = 0;
		es_shared->stats.state = ES_RELAY_STOPPED;
	}
	SpinLockRelease(&es_shared->mutex);
}

/* The relay's state, as relay_status() shows it */
void
EsRelaySetState(EsRelayState state)
{
	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->stats.state = state;
	SpinLockRelease(&es_shared->mutex);
}

/*
 * Account for a recorded batch: counters, the last error (NULL: none new)
 * and the delivery latencies (ms) of its acknowledged messages.
 */
void
EsRelayAccount(int sent, int retries, int dead, const char *error,
			   const double *latencies, int nlatencies)
{
	EsRelayStats *st;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (es_shared == NULL)
		return;
	st = &es_shared->stats;
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

/* A copy of the relay's statistics; false without shared memory */
bool
EsRelayStatsCopy(EsRelayStats *copy)
{
	if (es_shared == NULL)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	memcpy(copy, &es_shared->stats, sizeof(EsRelayStats));
	SpinLockRelease(&es_shared->mutex);
	return true;
}

/*
 * Wake the relay worker if one runs.  Called from a commit callback: it must
 * not raise an error, and SetLatch() does not.
 */
void
EsWakeRelay(void)
{
	Latch	   *latch;

	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	latch = es_shared->relay_latch;
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
