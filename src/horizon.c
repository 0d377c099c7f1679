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
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
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
 * The sequence's horizon: every value below it that will ever commit is
 * visible to a snapshot taken after this returns.
 */
int64
EsHorizon(EsSequence seq)
{
	int64		horizon;
	LockData   *locks;
	int			i;

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
