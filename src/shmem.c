/*
 * shmem.c
 *		The extension's shared memory: where backends find the relay worker's
 *		latch to wake it when they commit messages.
 *
 * It exists only when the library is in shared_preload_libraries; without
 * it there is no relay to wake and EsWakeRelay() does nothing.
 */
#include "postgres.h"

#include "miscadmin.h"
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
} EsShared;

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
