/*
 * horizon.c
 *		read_all's horizon: the global position below which every event that
 *		will ever commit is already visible.
 *
 * Positions come from a sequence as rows are inserted, but transactions
 * commit in another order: a reader paging by the last position it saw
 * would skip an event whose position was taken before, but committed after,
 * a larger one it already returned.
 *
 * So a transaction that is about to take its first position announces a
 * lower bound of the positions it will take (the sequence's last value + 1):
 * it takes a share lock on an advisory lock tag of its own key space
 * (objsubid 17745 for events, 17746 for the outbox) that carries that bound, in the top
 * transaction's resource owner, so it is held until the transaction ends,
 * whatever savepoints do.  Locks are released after the transaction is
 * visible as committed (or aborted) to new snapshots.
 *
 * A reader first reads the sequence's last value V, then the lock table; the
 * horizon is the smallest announced bound, or V + 1 when there is none.  A
 * writer missing from the lock table either ended before the reader looked
 * (its events are visible to the snapshot the reader takes next) or takes
 * its first position after the reader read V (so above V).  The reader must
 * take its snapshot after computing the horizon, which only READ COMMITTED
 * does; read_all refuses to run under a transaction snapshot.
 *
 * Using the lock manager rather than shared memory of our own means the
 * extension needs no shared_preload_libraries for this, entries vanish with
 * their transaction even on a crash, and pg_locks shows who holds the
 * horizon back (the view eventstore.horizon_holders).
 *
 * Hot standbys.  A standby has neither the primary's lock table nor its
 * sequence's true last value (sequences are WAL-logged up to 32 values
 * ahead), so there the horizon is one the primary published: its relay
 * (one per database) computes the horizon as above after appends end, at
 * most every ES_PUBLISH_INTERVAL_MS, and stores it with setval() in the
 * sequence eventstore.events_published_horizon (WAL-logged; the relay
 * flushes it once appends stop, their commits flush it before).  The
 * value was valid on the primary for every snapshot taken after it was
 * computed, so for every snapshot that sees the setval: the commits of the
 * transactions no longer in the lock table came before it in the WAL, and
 * a standby replays the WAL in order.  A standby reader reads the value,
 * then takes its snapshot, as on the primary.  Why not the snapshot's xmin
 * alone: a transaction that took a position p and is still open has an
 * xid at or above xmin, but so may one that took p + 1 and committed, and
 * one below xmin may have taken its position after p; xids order neither
 * the positions nor their commits (docs/reference.md).
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "commands/sequence.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"

#include "compat.h"
#include "eventstore.h"

/*
 * Each guarded sequence: its name in the eventstore schema and the
 * locktag_field4 of its advisory locks (SQL's advisory locks use 1 and 2).
 */
static const struct
{
	const char *seqname;
	uint16		lockspace;
}			es_horizons[] = {
	[ES_SEQ_EVENTS] = {"events_global_position_seq", 17745},
	[ES_SEQ_OUTBOX] = {"outbox_id_seq", 17746},
};

/* The sequence the primary's relay publishes the events horizon in */
#define ES_PUBLISHED_HORIZON_SEQ "events_published_horizon"

/* The relay publishes the horizon at most this often (while appends end) */
#define ES_PUBLISH_INTERVAL_MS 20

/* The local transaction that already holds its horizon lock, per sequence */
static LocalTransactionId horizon_lxid[lengthof(es_horizons)];

/* The sequence the last EsLastValue() read, per sequence */
static Oid	horizon_seqoid[lengthof(es_horizons)];

/* The last value taken from the sequence, 0 if none yet */
int64
EsLastValue(EsSequence seq)
{
	Oid			seqoid;

	seqoid = get_relname_relid(es_horizons[seq].seqname, EsSchemaOid());
	if (!OidIsValid(seqoid))
		elog(ERROR, "sequence eventstore.%s not found", es_horizons[seq].seqname);
	horizon_seqoid[seq] = seqoid;
	return EsSequenceLastValue(seqoid, EsSchemaOwner());
}

/*
 * The OID of the sequence EsLastValue() last read (InvalidOid if none):
 * it may have been dropped since
 */
Oid
EsLastSequenceRead(EsSequence seq)
{
	return horizon_seqoid[seq];
}

/*
 * The last value taken from sequence 'seqoid', 0 if none yet, read as
 * 'reader' (who may read it)
 */
int64
EsSequenceLastValue(Oid seqoid, Oid reader)
{
	Oid			saved_user;
	int			saved_context;
	LOCAL_FCINFO(fcinfo, 1);
	Datum		result;

	/* pg_sequence_last_value returns NULL before the first nextval */
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ObjectIdGetDatum(seqoid);
	fcinfo->args[0].isnull = false;
	/*
	 * As the schema's owner, who may read the sequence; no name is resolved
	 * and no user code runs here, so the search_path needs no pinning.
	 */
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(reader,
						   saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	result = pg_sequence_last_value(fcinfo);
	SetUserIdAndSecContext(saved_user, saved_context);
	return fcinfo->isnull ? 0 : DatumGetInt64(result);
}

/* Fill in the lock tag that announces lower bound 'bound' */
static void
EsHorizonTag(LOCKTAG *tag, EsSequence seq, uint64 bound)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (bound >> 32),
						 (uint32) bound, es_horizons[seq].lockspace);
}

/*
 * Announce, once per transaction and before taking a position, the smallest
 * position this transaction can take.
 */
void
EsHoldHorizon(EsSequence seq)
{
	LOCKTAG		tag;
	ResourceOwner saved_owner;

	if (horizon_lxid[seq] == EsMyLocalXid())
		return;

	EsHorizonTag(&tag, seq, (uint64) EsLastValue(seq) + 1);
	saved_owner = CurrentResourceOwner;
	CurrentResourceOwner = TopTransactionResourceOwner;
	(void) LockAcquire(&tag, ShareLock, false, false);
	CurrentResourceOwner = saved_owner;
	horizon_lxid[seq] = EsMyLocalXid();

	/*
	 * Whether this transaction commits or aborts, the relay (outbox) or a
	 * waiting poll (events) may have skipped committed rows above our bound:
	 * wake them once our lock is gone.
	 */
	if (seq == ES_SEQ_OUTBOX)
		EsOutboxEnqueuing();
	else
		EsWakePollersAtEnd();
}

/*
 * On a hot standby: the events horizon the primary's relay published; an
 * error if none was
 */
static int64
EsPublishedHorizon(void)
{
	Oid			seqoid = get_relname_relid(ES_PUBLISHED_HORIZON_SEQ, EsSchemaOid());
	int64		horizon;

	if (!OidIsValid(seqoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the eventstore extension's SQL objects are older than its library"),
				 errhint("Run ALTER EXTENSION eventstore UPDATE on the primary.")));
	horizon = EsSequenceLastValue(seqoid, EsSchemaOwner());
	if (horizon == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no read horizon has been published for this database"),
				 errdetail("On a hot standby, read_all and poll read up to the horizon the primary's eventstore relay publishes."),
				 errhint("Preload eventstore on the primary (shared_preload_libraries) and let a relay serve this database (eventstore.database).")));
	return horizon;
}

/*
 * The relay: publish the events horizon for hot standbys (see the file
 * header), in a transaction of its own, if it moved up (the caller waits
 * EsPublishIntervalMs() between two calls).  *lsn: the end of the WAL
 * written, InvalidXLogRecPtr if nothing was.  False when this database has
 * no extension.
 */
bool
EsPublishHorizon(XLogRecPtr *lsn)
{
	static Oid	published_seq = InvalidOid;
	static int64 published = 0;
	Oid			seqoid;

	*lsn = InvalidXLogRecPtr;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (!OidIsValid(get_extension_oid("eventstore", true)))
	{
		CommitTransactionCommand();
		return false;
	}
	/* Older SQL objects have no such sequence: nothing to publish */
	seqoid = get_relname_relid(ES_PUBLISHED_HORIZON_SEQ, EsSchemaOid());
	if (OidIsValid(seqoid))
	{
		int64		horizon = EsHorizon(ES_SEQ_EVENTS);

		if (seqoid != published_seq)
		{
			published = EsSequenceLastValue(seqoid, GetUserId());
			published_seq = seqoid;
		}
		/* Valid horizons can go down a little: publish only a larger one */
		if (horizon > published)
		{
			(void) DirectFunctionCall2(setval_oid, ObjectIdGetDatum(seqoid),
									   Int64GetDatum(horizon));
			published = horizon;
			*lsn = GetXLogInsertRecPtr();
		}
	}
	/*
	 * An asynchronous commit (the relay's synchronous_commit is off): while
	 * appends go on, their commits flush it; when they stop, the relay
	 * flushes the last publication itself (EsFlushPublishedHorizon), rather
	 * than leaving it to the WAL writer's wal_writer_delay.
	 */
	CommitTransactionCommand();
	return true;
}

/*
 * The relay, once appends stopped: flush the WAL up to the last publication
 * ('lsn'), so that standbys receive it now
 */
void
EsFlushPublishedHorizon(XLogRecPtr lsn)
{
	if (!XLogRecPtrIsInvalid(lsn))
		XLogFlush(lsn);
}

/* How often the relay publishes the horizon at most, in milliseconds */
int
EsPublishIntervalMs(void)
{
	return ES_PUBLISH_INTERVAL_MS;
}

/*
 * The sequence's horizon: every value below it that will ever commit is
 * visible to a snapshot taken after this returns.
 */
int64
EsHorizon(EsSequence seq)
{
	int64		horizon;
	LockData   *locks;
	int			i;

	if (seq == ES_SEQ_EVENTS && RecoveryInProgress())
		return EsPublishedHorizon();

	/* First the sequence, then the lock table: see the file header */
	horizon = EsLastValue(seq) + 1;
	locks = GetLockStatusData();
	for (i = 0; i < locks->nelements; i++)
	{
		LOCKTAG    *tag = &locks->locks[i].locktag;

		if (tag->locktag_type != LOCKTAG_ADVISORY ||
			tag->locktag_field4 != es_horizons[seq].lockspace ||
			tag->locktag_field1 != MyDatabaseId ||
			locks->locks[i].holdMask == 0)
			continue;
		horizon = Min(horizon, (int64) (((uint64) tag->locktag_field2 << 32) |
										tag->locktag_field3));
	}
	return horizon;
}

PG_FUNCTION_INFO_V1(eventstore_read_horizon);

/* SQL: eventstore.read_horizon() -> bigint, the horizon of event positions */
Datum
eventstore_read_horizon(PG_FUNCTION_ARGS)
{
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("read_all requires the READ COMMITTED isolation level"),
				 errdetail("Under a transaction snapshot read_all could skip events that commit later with a smaller position."),
				 errhint("Call read_all outside an explicit REPEATABLE READ or SERIALIZABLE transaction.")));
	PG_RETURN_INT64(EsHorizon(ES_SEQ_EVENTS));
}
