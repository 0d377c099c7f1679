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

#include "eventstore.h"

/* What backends share with the relay worker */
typedef struct EsShared
{
	slock_t		mutex;
	Latch	   *relay_latch;	/* the relay's latch, NULL while none runs */
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

/* Publish (or, with NULL, withdraw) the relay worker's latch */
void
EsSetRelayLatch(Latch *latch)
{
	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->relay_latch = latch;
	SpinLockRelease(&es_shared->mutex);
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
