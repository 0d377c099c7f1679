/*
 * shmem.c
 *		The extension's shared memory: a slot per relay worker (one per
 *		database it serves), where backends find that relay's latch to wake
 *		it when they commit messages or appends, and where it keeps the
 *		statistics relay_status() shows; the launcher's latch; the times of
 *		outbox commits (the relay's latencies start there); and the
 *		condition variable that subscriptions' poll() waits on for new
 *		events.
 *
 * It exists only when the library is in shared_preload_libraries; without
 * it there is no relay to wake, EsWakeRelay() does nothing and a waiting
 * poll() looks again every ES_POLL_RECHECK_MS instead.
 *
 * Slots: the launcher claims a free slot for a database before it starts
 * that database's relay (EsClaimRelaySlot) and frees it once the relay
 * ended; the relay attaches to it (EsAttachRelaySlot).  Backends look their
 * database's slot up by its OID.  There are eventstore.max_relays slots.
 */
#include "postgres.h"

#include "access/xlog.h"
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

/* The latest commits of outbox messages the relays look up */
#define ES_COMMIT_MARKS 1024

/* A relay's slot: the database it serves, and what it shares with backends */
typedef struct EsRelaySlot
{
	Oid			database;		/* InvalidOid: the slot is free */
	uint32		generation;		/* which claim of the slot this is */
	Latch	   *latch;			/* the relay's latch, NULL until it runs */
	bool		revisit;		/* rows it passed may be ready: look again */
	uint32		sinks;			/* bits (1 << sink) of the sinks committed rows are for */
	bool		horizon_wanted; /* appends ended: publish the read horizon */
	bool		check_extension;	/* an extension was dropped: is ours there? */
	bool		leave;			/* a command needs the database without sessions */
	bool		no_extension;	/* the relay found no extension and ended */
	bool		ended;			/* the relay attached and ended since */
	EsRelayStats stats[ES_RELAY_SINKS]; /* what relay_status() shows, per sink */
} EsRelaySlot;

/* What backends share with the launcher and the relays */
typedef struct EsShared
{
	slock_t		mutex;
	Latch	   *launcher_latch; /* NULL while no launcher runs */
	bool		launcher_rescan;	/* a database may have got the extension */
	uint32		generations;	/* claims of relay slots so far */
	ConditionVariable events_cv;	/* broadcast when appends end */
	uint64		commits_written;	/* marks written since startup */
	EsCommitMark commits[ES_COMMIT_MARKS];	/* a ring of the latest */
	EsRelaySlot slots[FLEXIBLE_ARRAY_MEMBER];	/* eventstore.max_relays */
} EsShared;

/* How often a waiting poll() looks again without wake-ups */
#define ES_POLL_RECHECK_MS 20

static EsShared *es_shared = NULL;

/* The slot this process's relay attached to, -1 if it is no relay */
static int	es_my_slot = -1;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* The size of our shared memory */
static Size
EsShmemSize(void)
{
	return add_size(offsetof(EsShared, slots),
					mul_size(es_max_relays, sizeof(EsRelaySlot)));
}

#if PG_VERSION_NUM >= 150000
/* Ask for our shared memory (PostgreSQL 15 and later) */
static void
EsShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(EsShmemSize());
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
	es_shared = ShmemInitStruct("eventstore", EsShmemSize(), &found);
	if (!found)
	{
		memset(es_shared, 0, EsShmemSize());
		SpinLockInit(&es_shared->mutex);
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
	RequestAddinShmemSpace(EsShmemSize());
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = EsShmemStartup;
}

/* This database's relay slot, NULL if none (mutex held) */
static EsRelaySlot *
EsDatabaseSlot(Oid database)
{
	int			i;

	for (i = 0; i < es_max_relays; i++)
		if (es_shared->slots[i].database == database)
			return &es_shared->slots[i];
	return NULL;
}

/* This relay's slot (mutex held by the caller or not needed) */
static EsRelaySlot *
EsMySlot(void)
{
	Assert(es_my_slot >= 0);
	return &es_shared->slots[es_my_slot];
}

/*
 * The launcher: claim a free slot for 'database' (its relay is about to
 * start); -1 when every slot is taken.  *generation tells this claim from
 * earlier ones of the slot: only the relay given it may attach.
 */
int
EsClaimRelaySlot(Oid database, uint32 *generation)
{
	int			i;
	int			claimed = -1;

	if (es_shared == NULL)
		return -1;
	SpinLockAcquire(&es_shared->mutex);
	for (i = 0; i < es_max_relays && claimed < 0; i++)
	{
		EsRelaySlot *slot = &es_shared->slots[i];

		if (OidIsValid(slot->database))
			continue;
		memset(slot, 0, sizeof(EsRelaySlot));
		slot->database = database;
		slot->generation = ++es_shared->generations;
		*generation = slot->generation;
		claimed = i;
	}
	SpinLockRelease(&es_shared->mutex);
	return claimed;
}

/*
 * The launcher: free slot 'i' once its relay ended; true if that relay
 * ended because its database has no extension
 */
bool
EsFreeRelaySlot(int i)
{
	bool		no_extension;

	SpinLockAcquire(&es_shared->mutex);
	no_extension = es_shared->slots[i].no_extension;
	memset(&es_shared->slots[i], 0, sizeof(EsRelaySlot));
	SpinLockRelease(&es_shared->mutex);
	return no_extension;
}

/*
 * The database slot 'i' is claimed for (InvalidOid: free); whether its
 * relay attached, and whether it ended since
 */
Oid
EsRelaySlotDatabase(int i, bool *attached, bool *ended)
{
	Oid			database;

	SpinLockAcquire(&es_shared->mutex);
	database = es_shared->slots[i].database;
	*attached = es_shared->slots[i].latch != NULL || es_shared->slots[i].ended;
	*ended = es_shared->slots[i].ended;
	SpinLockRelease(&es_shared->mutex);
	return database;
}

/*
 * A relay: attach to slot 'i' the launcher claimed for this database with
 * 'generation', and publish our latch; false if that claim is over (a
 * launcher that started afterwards freed the slot)
 */
bool
EsAttachRelaySlot(int i, uint32 generation)
{
	EsRelaySlot *slot;
	int			s;
	bool		ok;

	if (es_shared == NULL || i < 0 || i >= es_max_relays)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	slot = &es_shared->slots[i];
	ok = slot->database == MyDatabaseId && slot->generation == generation &&
		slot->latch == NULL && !slot->ended;
	if (ok)
	{
		slot->latch = MyLatch;
		memset(slot->stats, 0, sizeof(slot->stats));
		for (s = 0; s < ES_RELAY_SINKS; s++)
			slot->stats[s].pid = MyProcPid;
		/* Publish the horizon at once, for hot standbys */
		slot->horizon_wanted = true;
		es_my_slot = i;
	}
	SpinLockRelease(&es_shared->mutex);
	return ok;
}

/*
 * A relay, as it exits: withdraw its latch; with 'no_extension', tell the
 * launcher it ended because the database has no extension
 */
void
EsDetachRelaySlot(bool no_extension)
{
	EsRelaySlot *slot;
	int			s;

	if (es_shared == NULL || es_my_slot < 0)
		return;
	SpinLockAcquire(&es_shared->mutex);
	slot = EsMySlot();
	slot->latch = NULL;
	slot->no_extension = no_extension;
	slot->ended = true;
	for (s = 0; s < ES_RELAY_SINKS; s++)
	{
		slot->stats[s].pid = 0;
		slot->stats[s].state = ES_RELAY_STOPPED;
	}
	SpinLockRelease(&es_shared->mutex);
}

/* The launcher publishes its latch (NULL as it exits) */
void
EsSetLauncherLatch(Latch *latch)
{
	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->launcher_latch = latch;
	SpinLockRelease(&es_shared->mutex);
}

/*
 * Wake the launcher to look for databases again (one may have got the
 * extension).  Called from a commit callback: must not raise an error.
 */
void
EsWakeLauncher(void)
{
	Latch	   *latch;

	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	es_shared->launcher_rescan = true;
	latch = es_shared->launcher_latch;
	SpinLockRelease(&es_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/* Read a flag in shared memory and clear it */
static bool
EsTakeFlag(bool *flag)
{
	bool		was;

	SpinLockAcquire(&es_shared->mutex);
	was = *flag;
	*flag = false;
	SpinLockRelease(&es_shared->mutex);
	return was;
}

/*
 * Raise the flag at 'offset' (in EsRelaySlot) of the relay of 'database'
 * and wake it; false when no relay is attached there.  Must not raise an
 * error.
 */
static bool
EsRaiseRelayFlag(Oid database, size_t offset)
{
	EsRelaySlot *slot;
	Latch	   *latch = NULL;

	if (es_shared == NULL)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	slot = EsDatabaseSlot(database);
	if (slot != NULL && slot->latch != NULL)
	{
		*(bool *) ((char *) slot + offset) = true;
		latch = slot->latch;
	}
	SpinLockRelease(&es_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
	return latch != NULL;
}

/* The launcher: whether it was asked to look again (and clear it) */
bool
EsLauncherTakeRescan(void)
{
	return EsTakeFlag(&es_shared->launcher_rescan);
}

/* Whether every relay slot is taken by another database than this one */
bool
EsRelaySlotsFull(void)
{
	int			i;
	bool		full = true;

	if (es_shared == NULL)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	for (i = 0; i < es_max_relays && full; i++)
		full = OidIsValid(es_shared->slots[i].database) &&
			es_shared->slots[i].database != MyDatabaseId;
	SpinLockRelease(&es_shared->mutex);
	return full;
}

/* Whether the relay was asked to read passed rows again (and clear it) */
bool
EsRelayTakeRevisit(void)
{
	return EsTakeFlag(&EsMySlot()->revisit);
}

/* The sinks the relay was woken for since the last call (and clear them) */
uint32
EsRelayTakeSinks(void)
{
	uint32		sinks;

	SpinLockAcquire(&es_shared->mutex);
	sinks = EsMySlot()->sinks;
	EsMySlot()->sinks = 0;
	SpinLockRelease(&es_shared->mutex);
	return sinks;
}

/* Whether appends ended since the relay last published the horizon (and clear it) */
bool
EsRelayTakeHorizonWanted(void)
{
	return EsTakeFlag(&EsMySlot()->horizon_wanted);
}

/* Whether an extension was dropped in the relay's database (and clear it) */
bool
EsRelayTakeCheckExtension(void)
{
	return EsTakeFlag(&EsMySlot()->check_extension);
}

/*
 * Wake this database's relay to look whether the extension is still there
 * (a DROP EXTENSION ended).  Must not raise an error.
 */
void
EsWakeRelayToCheckExtension(void)
{
	(void) EsRaiseRelayFlag(MyDatabaseId, offsetof(EsRelaySlot, check_extension));
}

/* Whether the relay was asked to leave its database (and clear it) */
bool
EsRelayTakeLeave(void)
{
	return EsTakeFlag(&EsMySlot()->leave);
}

/*
 * Ask the relay of 'database' to leave it (a command needs the database
 * without sessions); false when no relay is connected to it
 */
bool
EsAskRelayToLeave(Oid database)
{
	return EsRaiseRelayFlag(database, offsetof(EsRelaySlot, leave));
}

/* How many messages the relay has in flight to a sink, for relay_status() */
void
EsRelaySetInFlight(int sink, int in_flight)
{
	SpinLockAcquire(&es_shared->mutex);
	EsMySlot()->stats[sink].in_flight = in_flight;
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
	SpinLockAcquire(&es_shared->mutex);
	EsMySlot()->stats[sink].state = state;
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

	st = &EsMySlot()->stats[sink];
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

/*
 * A copy of this database's relay's statistics for a sink (state "stopped"
 * and zeros when no relay serves it); false without shared memory
 */
bool
EsRelayStatsCopy(int sink, EsRelayStats *copy)
{
	EsRelaySlot *slot;

	if (es_shared == NULL)
		return false;
	SpinLockAcquire(&es_shared->mutex);
	slot = EsDatabaseSlot(MyDatabaseId);
	if (slot != NULL)
		memcpy(copy, &slot->stats[sink], sizeof(EsRelayStats));
	else
		memset(copy, 0, sizeof(EsRelayStats));
	SpinLockRelease(&es_shared->mutex);
	return true;
}

/*
 * Wake this database's relay if one runs, for the sinks of 'sinks' (bits 1
 * << sink; 0: every sink); with 'revisit', it also reads again outbox rows
 * it has passed (dead letters of a parked key were requeued or discarded).
 * Called from a commit callback: it must not raise an error, and SetLatch()
 * does not.
 */
void
EsWakeRelay(bool revisit, uint32 sinks)
{
	EsRelaySlot *slot;
	Latch	   *latch = NULL;

	if (es_shared == NULL)
		return;
	SpinLockAcquire(&es_shared->mutex);
	slot = EsDatabaseSlot(MyDatabaseId);
	if (slot != NULL)
	{
		latch = slot->latch;
		if (revisit)
			slot->revisit = true;
		slot->sinks |= sinks != 0 ? sinks : ~(uint32) 0;
	}
	SpinLockRelease(&es_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Wake every poll() waiting for events, and this database's relay to
 * publish the read horizon for hot standbys (once until it did).  Called
 * after a transaction that appended released its locks (so its horizon
 * lock no longer holds anything back); like EsWakeRelay it must not raise
 * an error.
 */
void
EsWakePollers(void)
{
	EsRelaySlot *slot;
	Latch	   *latch = NULL;

	if (es_shared == NULL)
		return;
	ConditionVariableBroadcast(&es_shared->events_cv);
	SpinLockAcquire(&es_shared->mutex);
	slot = EsDatabaseSlot(MyDatabaseId);
	if (slot != NULL && !slot->horizon_wanted)
	{
		slot->horizon_wanted = true;
		latch = slot->latch;
	}
	SpinLockRelease(&es_shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Before looking for events: from now on, a transaction that ends with
 * appends wakes the next EsWaitForEvents().  False without shared memory,
 * and on a hot standby (the primary's appends wake nothing here).
 */
bool
EsPrepareToWaitForEvents(void)
{
	if (es_shared == NULL || RecoveryInProgress())
		return false;
	ConditionVariablePrepareToSleep(&es_shared->events_cv);
	return true;
}

/*
 * Sleep until a transaction with appends ends (or anything else sets our
 * latch), at most 'timeout_ms'; without shared memory, and on a hot
 * standby, at most ES_POLL_RECHECK_MS.  Interrupts are served.
 */
void
EsWaitForEvents(long timeout_ms)
{
	if (es_shared != NULL && !RecoveryInProgress())
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
	if (es_shared != NULL && !RecoveryInProgress())
		ConditionVariableCancelSleep();
}
