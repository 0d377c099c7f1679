/*
 * launcher.c
 *		The launcher: a background worker that starts one relay per database
 *		with the extension, as PostgreSQL's logical replication launcher
 *		starts apply workers.
 *
 * The launcher connects to no database: it reads the shared catalog
 * pg_database, and starts a relay (a dynamic background worker) for each
 * database that allows connections, is no template, and is served
 * (eventstore.database empty, or that name).  Whether a database has the
 * extension is known only inside it, so the relay looks: without the
 * extension it ends at once, saying so in its slot, and the launcher tries
 * that database again only when woken (a committed CREATE EXTENSION or
 * CREATE DATABASE, see outbox.c) or after ES_LAUNCHER_ABSENT_SECS.  A relay
 * that ended otherwise (an error, a DROP EXTENSION it noticed, a crash) is
 * started again after ES_LAUNCHER_RESTART_SECS if the database is still
 * there.
 *
 * At most eventstore.max_relays relays run (the shared-memory slots), and
 * each needs a background worker slot (max_worker_processes).  A database
 * that gets no relay slot shows "not_served" in relay_status(), and its
 * sessions warn when they enqueue; running out of background worker slots
 * is warned about in the log.  Either way it is tried again later.
 *
 * The launcher starts once recovery has finished: on a hot standby nothing
 * runs; after a promotion the postmaster starts it and it starts the relays.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "eventstore.h"

/* Seconds before the postmaster restarts a launcher that ended with an error */
#define ES_LAUNCHER_RESTART_SECS 5
/* Seconds before a relay that ended is started again */
#define ES_LAUNCHER_RESTART_RELAY_SECS 2
/* Seconds before a database found without the extension is looked at again */
#define ES_LAUNCHER_ABSENT_SECS 60
/* Seconds before a relay that could not start for lack of a slot is tried again */
#define ES_LAUNCHER_NO_SLOT_SECS 10
/* Seconds between two reads of pg_database */
#define ES_LAUNCHER_SCAN_SECS 10

/* A database the launcher serves */
typedef struct EsServedDb
{
	Oid			oid;
	char		name[NAMEDATALEN];
	bool		seen;			/* found by the last scan of pg_database */
	int			slot;			/* its relay's slot, -1 if none runs */
	BackgroundWorkerHandle *handle;
	bool		absent;			/* its relay found no extension */
	bool		recheck;		/* woken to look again since its relay started */
	TimestampTz not_before; /* when its relay may start (again) */
} EsServedDb;

static EsServedDb *es_dbs = NULL;
static int	es_ndbs = 0;
static int	es_dbs_allocated = 0;

/*
 * A worker of ours that runs 'function' as 'name' once recovery finished,
 * restarted after 'restart' seconds (BGW_NEVER_RESTART: never)
 */
static void
EsDescribeWorker(BackgroundWorker *worker, const char *function,
				 const char *name, int restart)
{
	memset(worker, 0, sizeof(BackgroundWorker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = restart;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "eventstore");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker->bgw_type, BGW_MAXLEN, "%s", name);
}

/* Register the launcher; called from _PG_init in the postmaster */
void
EsRegisterLauncher(void)
{
	BackgroundWorker worker;

	EsDescribeWorker(&worker, "eventstore_launcher_main", "eventstore launcher",
					 ES_LAUNCHER_RESTART_SECS);
	RegisterBackgroundWorker(&worker);
}

/* Whether database 'name' is served: eventstore.database is empty or names it */
bool
EsDatabaseNameIsServed(const char *name)
{
	return es_database == NULL || es_database[0] == '\0' ||
		strcmp(es_database, name) == 0;
}

/* The entry of database 'oid', added if new */
static EsServedDb *
EsServedDbEntry(Oid oid, const char *name)
{
	int			i;
	EsServedDb *db;

	for (i = 0; i < es_ndbs; i++)
		if (es_dbs[i].oid == oid)
			return &es_dbs[i];
	if (es_ndbs == es_dbs_allocated)
	{
		es_dbs_allocated = Max(16, es_dbs_allocated * 2);
		es_dbs = es_dbs == NULL ?
			MemoryContextAlloc(TopMemoryContext, es_dbs_allocated * sizeof(EsServedDb)) :
			repalloc(es_dbs, es_dbs_allocated * sizeof(EsServedDb));
	}
	db = &es_dbs[es_ndbs++];
	memset(db, 0, sizeof(EsServedDb));
	db->oid = oid;
	strlcpy(db->name, name, NAMEDATALEN);
	db->slot = -1;
	return db;
}

/*
 * Read pg_database: note the served databases, and forget those that are
 * gone (once their relay ended)
 */
static void
EsLauncherScan(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	EsServedDb *db;
	int			i;

	for (i = 0; i < es_ndbs; i++)
		es_dbs[i].seen = false;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database d = (Form_pg_database) GETSTRUCT(tup);

		if (!d->datallowconn || d->datistemplate ||
			!EsDatabaseNameIsServed(NameStr(d->datname)))
			continue;
		db = EsServedDbEntry(d->oid, NameStr(d->datname));
		strlcpy(db->name, NameStr(d->datname), NAMEDATALEN);
		db->seen = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* Forget databases no longer there or served, whose relay ended */
	for (i = 0; i < es_ndbs;)
	{
		if (!es_dbs[i].seen && es_dbs[i].slot < 0)
			es_dbs[i] = es_dbs[--es_ndbs];
		else
			i++;
	}
}

/*
 * As the launcher starts: take over the slots of relays a previous launcher
 * started that run (attached), and free the others: those of relays that
 * ended, and those of relays not attached yet, which may never attach (one
 * that dies on its way cannot say so).  A relay that comes late finds its
 * claim over (EsAttachRelaySlot) and ends; this launcher starts another.
 */
static void
EsLauncherAdopt(void)
{
	int			i;

	for (i = 0; i < es_max_relays; i++)
	{
		bool		attached;
		bool		ended;
		Oid			database = EsRelaySlotDatabase(i, &attached, &ended);

		if (!OidIsValid(database))
			continue;
		if (attached && !ended)
			EsServedDbEntry(database, "")->slot = i;
		else
			(void) EsFreeRelaySlot(i);
	}
}

/*
 * Note the relays that ended, and free their slots: those this launcher
 * started through their handle, adopted ones through their slot
 */
static void
EsLauncherReap(TimestampTz now)
{
	int			i;

	for (i = 0; i < es_ndbs; i++)
	{
		EsServedDb *db = &es_dbs[i];
		pid_t		pid;
		bool		attached;
		bool		ended;

		if (db->slot < 0)
			continue;
		if (db->handle != NULL)
		{
			if (GetBackgroundWorkerPid(db->handle, &pid) != BGWH_STOPPED)
				continue;
			pfree(db->handle);
			db->handle = NULL;
		}
		else if (EsRelaySlotDatabase(db->slot, &attached, &ended) == db->oid && !ended)
			continue;
		db->absent = EsFreeRelaySlot(db->slot);
		db->slot = -1;
		/* The extension may have been created after the relay looked */
		if (db->absent && db->recheck)
		{
			db->not_before = now;
			continue;
		}
		db->not_before = TimestampTzPlusMilliseconds(now, 1000 *
													 (db->absent ? ES_LAUNCHER_ABSENT_SECS :
													  ES_LAUNCHER_RESTART_RELAY_SECS));
		if (!db->absent)
			ereport(LOG,
					(errmsg("eventstore relay for database \"%s\" ended; it starts again in %d seconds",
							db->name, ES_LAUNCHER_RESTART_RELAY_SECS)));
	}
}

/*
 * Start the relay of 'db'; false when no relay slot or no background worker
 * slot is free.  A full set of relay slots is not warned about here: the
 * database may have no extension (its sessions warn, see
 * EsWarnIfNotServed, and relay_status() says why).  Running out of
 * background worker slots is warned about once.
 */
static bool
EsLauncherStartRelay(EsServedDb *db, TimestampTz now)
{
	static bool warned = false;
	BackgroundWorker worker;
	EsRelayArgs args;
	int			slot = EsClaimRelaySlot(db->oid, &args.generation);

	if (slot >= 0)
	{
		EsDescribeWorker(&worker, "eventstore_relay_main", "eventstore relay",
						 BGW_NEVER_RESTART);
		worker.bgw_main_arg = Int32GetDatum(slot);
		args.database = db->oid;
		StaticAssertStmt(sizeof(EsRelayArgs) <= BGW_EXTRALEN, "EsRelayArgs too large");
		memcpy(worker.bgw_extra, &args, sizeof(EsRelayArgs));
		worker.bgw_notify_pid = MyProcPid;
		if (RegisterDynamicBackgroundWorker(&worker, &db->handle))
		{
			db->slot = slot;
			db->recheck = false;
			return true;
		}
		(void) EsFreeRelaySlot(slot);
		db->handle = NULL;
		if (!warned)
			ereport(WARNING,
					(errmsg("no background worker slot is free for the eventstore relay of database \"%s\"",
							db->name),
					 errdetail("The relays of other databases may be missing too; the launcher tries again every %d seconds.",
							   ES_LAUNCHER_NO_SLOT_SECS),
					 errhint("Raise max_worker_processes (a server restart).")));
		warned = true;
	}
	else
		ereport(DEBUG1,
				(errmsg("eventstore launcher: every relay slot is taken, database \"%s\" waits",
						db->name)));
	db->not_before = TimestampTzPlusMilliseconds(now, 1000 * ES_LAUNCHER_NO_SLOT_SECS);
	return false;
}

/* Before the launcher exits: backends no longer wake it */
static void
EsLauncherExit(int code, Datum arg)
{
	EsSetLauncherLatch(NULL);
}

/* The launcher's entry point */
void
eventstore_launcher_main(Datum arg)
{
	TimestampTz next_scan = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	/* No database: the launcher only reads shared catalogs */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	EsSetLauncherLatch(MyLatch);
	before_shmem_exit(EsLauncherExit, (Datum) 0);
	EsLauncherAdopt();
	ereport(LOG, (errmsg("eventstore launcher started")));

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz wake = TimestampTzPlusMilliseconds(now, 1000 * ES_LAUNCHER_SCAN_SECS);
		bool		rescan = EsLauncherTakeRescan();
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* A database may have got the extension: look again everywhere */
		for (i = 0; rescan && i < es_ndbs; i++)
		{
			es_dbs[i].recheck = true;
			if (es_dbs[i].slot < 0 && es_dbs[i].absent)
				es_dbs[i].not_before = 0;
		}
		EsLauncherReap(now);
		if (rescan || now >= next_scan)
		{
			EsLauncherScan();
			next_scan = TimestampTzPlusMilliseconds(now, 1000 * ES_LAUNCHER_SCAN_SECS);
		}
		for (i = 0; i < es_ndbs; i++)
		{
			EsServedDb *db = &es_dbs[i];

			if (db->slot >= 0 || !db->seen)
				continue;
			if (now >= db->not_before)
				(void) EsLauncherStartRelay(db, now);
			if (db->slot < 0 && db->not_before < wake)
				wake = db->not_before;
		}

		/* Relays starting and ending set our latch (bgw_notify_pid) */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), wake), 1),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
