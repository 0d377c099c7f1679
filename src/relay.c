/*
 * relay.c
 *		The relay: a background worker that sends committed outbox rows to
 *		their brokers (Kafka, RabbitMQ, NATS JetStream), in outbox order per
 *		key, with retries and dead letters.
 *
 * Each sink (sink.h: the broker's client behind one interface) has a
 * pipeline of its own, reading only the outbox rows of that sink, so that
 * one broker's outage or backlog holds back no other; the worker turns
 * every pipeline in each round and sleeps on its latch and every sink's
 * socket together.  What follows describes one pipeline.
 *
 * The relay is a pipeline.  It reads ready rows (relay_outbox.c) and hands
 * them to the sink without waiting for the broker, as long as its window
 * has room (eventstore.relay_window_messages and _memory: messages sent and
 * not yet recorded).  Answers come back on this thread (sink.h); a message
 * is settled once it and every message sent before it have their answer,
 * and settled messages are recorded in the outbox in grouped statements:
 * acknowledged rows deleted by id, failures scheduled for a retry or moved
 * to the dead letters.  A crash before a recording only means its
 * acknowledged rows are sent again: at-least-once.
 *
 *	   outbox --read (id > last read, below the horizon)--> window --send--> sink
 *		 ^														 |
 *		 +------record (delete / retry / dead letter) <--settle <-- answers
 *
 * Per-key order.  Each sink sends in the order it is given (Kafka: the
 * idempotent producer keeps a partition's messages in the order they were
 * produced; RabbitMQ: one channel; NATS: one connection), and a message
 * that fails because the queue was purged at the delivery timeout fails
 * with every later one in flight.  A key's messages therefore stay in
 * order unless one fails while later ones of its key are in flight and
 * those later ones succeed (a permanent error from the broker, or a fatal
 * producer error): those
 * later ones are then not recorded (they stay in the outbox) and are sent
 * again after the failed one, so a consumer may see an early copy of them
 * (docs/relay.md).  The key is blocked from that message on: later
 * messages of it are not sent ("held") until the relay reads the outbox
 * again from the start.  A key's message to another topic than the one its
 * earlier in-flight messages go to is held the same way, since nothing
 * orders two topics.
 *
 * Reading again from the start ("revisit").  Reads only take ids after the
 * largest read so far, and pass a row whose key has an earlier row
 * scheduled for a retry (relay_outbox.c), so rows the relay passed are
 * looked at again only when they can have become ready: after a failure, a
 * held message, a retry falling due, a retried message leaving the outbox,
 * requeued or discarded dead letters (a flag in shared memory), a reload,
 * and every relay_idle_interval while idle.  The relay stops reading, lets
 * its window drain, and reads from the first id again.
 *
 * Waking.  The worker sleeps on its latch and on each sink's socket (for
 * Kafka, librdkafka's report pipe) together.  A transaction that took the
 * outbox horizon sets the latch once it ended and released its locks
 * (outbox.c), with the sinks it enqueued for in shared memory: those
 * pipelines read, and any whose last read found rows held back by an open
 * transaction (which that end may have released); held-back rows are also
 * looked at again after 50 ms; a timer (eventstore.relay_idle_interval)
 * covers anything missed.
 *
 * Errors: the worker runs with session settings of its own (a read-only
 * default or tiny timeouts of the database or role must not stop it).  An
 * ERROR does not end the worker: it recovers as PostgreSQL's own
 * long-lived processes do (sigsetjmp, EmitErrorReport,
 * AbortCurrentTransaction, FlushErrorState), shows state "error" with the
 * message for the sink whose step failed, and that pipeline tries again
 * after a backoff while the others go on.  The window survives in memory:
 * what was sent is recorded later, never sent again for that.
 * FATAL (SIGTERM) still ends it; the launcher (launcher.c) starts it again
 * after 2 seconds, and all progress is in the tables.
 *
 * Each relay serves one database, given by the launcher, in a slot of
 * shared memory (shmem.c).  It ends when its database has no extension
 * (dropped, or never created there).  It also publishes the read horizon
 * for hot standbys after appends end (horizon.c).
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "eventstore.h"
#include "relay.h"

#include <math.h>

/* The longest acknowledged rows wait before they are recorded */
#define ES_RECORD_DELAY_MS 10
/* Failed reads of one row before that row is set aside as a dead letter */
#define ES_POISON_READS 3
/* How often to purge the queue again once a delivery timed out */
#define ES_PURGE_RECHECK_MS 10

bool		es_relay_no_extension = false;

/* The name of the relay's database, for its messages */
static char es_relay_dbname[NAMEDATALEN];

/* One read of the outbox in the window, and how far it got */
typedef struct EsBatch
{
	MemoryContext cxt;			/* holds the batch and its messages */
	EsMessage  *msgs;
	int			n;
	int			looked_at;		/* [0, looked_at) were produced or held */
	int			settled;		/* [0, settled) are in p->outcome */
} EsBatch;

/* A key with messages in the window */
typedef struct EsKeyState
{
	uint32		hash;			/* hash of the key: the table's key */
	int			unsettled;		/* produced and not settled */
	char	   *topic;			/* the topic they go to */
	int64		blocked_from;	/* 0, or the id from which its messages wait */
} EsKeyState;

/*
 * One sink's pipeline: its window, keys, outcome and read position.  Each
 * sink has its own, so that one broker's outage holds back no other.
 */
typedef struct EsPipe
{
	EsSinkId	id;
	const EsSinkRoutine *sink;

	/* The window: reads not fully settled, oldest first */
	List	   *window;
	int			window_count;	/* their messages not settled yet */
	Size		window_bytes;
	Oid			window_outbox;	/* the table they were read from */

	/*
	 * The window's keys, by hash.  Two keys with the same hash share an
	 * entry: that can only hold a message back, never let one overtake
	 * another.
	 */
	HTAB	   *keys;
	MemoryContext keys_cxt;		/* the table and its topics */

	/* The retriable error last logged for the outcome being settled */
	int			logged_err;

	/* Settled messages not recorded yet, in outcome_cxt */
	EsOutcome  *outcome;
	MemoryContext outcome_cxt;

	/* The largest id read since the last revisit */
	int64		last_read;

	/* Whether to read the outbox from the start once the window drained */
	bool		revisit;
	/* When to do so for a retry falling due (0: none known) */
	TimestampTz revisit_at;

	/* Whether outbox rows may wait for a retry (see EsRelayFetch) */
	bool		retries_pending;

	/* When an idle pipeline reads the outbox from its start again (0: not set) */
	TimestampTz rescan_at;

	/* Whether to read the outbox now, and when at the latest */
	bool		read_wanted;
	TimestampTz read_at;
	/* The last read found committed rows held back by an open transaction */
	bool		held_back;

	/* The sink's settings changed: drain the window, then start it anew */
	bool		draining;

	/*
	 * Consecutive steps of this pipeline that failed with an ERROR, and when
	 * it tries again (0: now); other pipelines go on meanwhile
	 */
	int			failed_rounds;
	TimestampTz retry_at;

	/*
	 * A read that fails with an ERROR (a row that cannot be read) is
	 * followed by reads of one row each, for as many rows as it was to
	 * read ('careful_reads'); a row on which ES_POISON_READS reads of one
	 * row fail in a row is set aside as a dead letter with the error
	 * ('read_errors'; the row, looked up after each failure, 'read_error_id';
	 * the read's start 'read_error_after'; the message 'read_error')
	 */
	int			careful_reads;
	int			read_errors;
	bool		read_error_looked_up;
	int64		read_error_id;
	int64		read_error_after;
	char		read_error[256];
} EsPipe;

/* The pipelines of the sinks built in, by sink id (sink NULL: none) */
static EsPipe es_pipes[ES_NUM_SINKS];

/* The pipeline a step runs for, to which an error is accounted (NULL: all) */
static EsPipe *es_current = NULL;

/* A read in progress: deleted if an error interrupts it */
static MemoryContext es_reading_cxt = NULL;
/* The rows the read in progress asked for (0: none), and after which id */
static int	es_reading_limit = 0;
static int64 es_reading_after = 0;
static MemoryContext es_relay_cxt = NULL;

/* What the relay does, for last_error */
static const char *es_round_step = "reading the outbox";

/* Withdraw our latch from shared memory as the worker exits */
static void
EsRelayExit(int code, Datum arg)
{
	EsDetachRelaySlot(es_relay_no_extension);
}

/* End the worker if its database has no extension (dropped, or never created) */
static void
EsRelayEndWithoutExtension(void)
{
	if (!es_relay_no_extension)
		return;
	ereport(LOG,
			(errmsg("eventstore relay for database \"%s\" ends: the database has no eventstore extension",
					es_relay_dbname)));
	proc_exit(0);
}

/*
 * A sink's state as relay_status() shows it: "error" while steps fail, and
 * "broker_down" instead of sending, backing off or idle while the broker
 * cannot be reached (until a delivery or a probe succeeds)
 */
static void
EsRelayShowState(EsPipe *p, EsRelayState state)
{
	if (p->failed_rounds > 0)
		state = ES_RELAY_ERROR;
	else if (p->sink->down() &&
			 (state == ES_RELAY_SENDING || state == ES_RELAY_BACKING_OFF ||
			  state == ES_RELAY_IDLE))
		state = ES_RELAY_BROKER_DOWN;
	EsRelaySetState(p->id, state);
}

/* An empty outcome (in p->outcome_cxt) */
static EsOutcome *
EsNewOutcome(EsPipe *p)
{
	MemoryContext old;
	EsOutcome  *o;
	int			cap = Max(es_relay_batch_size, 64);

	MemoryContextReset(p->outcome_cxt);
	p->logged_err = 0;
	old = MemoryContextSwitchTo(p->outcome_cxt);
	o = palloc0(sizeof(EsOutcome));
	o->capacity = cap;
	o->sent = palloc(sizeof(Datum) * cap);
	o->latencies = palloc(sizeof(double) * cap);
	o->retry_ids = palloc(sizeof(Datum) * cap);
	o->retry_delays = palloc(sizeof(Datum) * cap);
	o->retry_errors = palloc(sizeof(Datum) * cap);
	o->dead_ids[0] = palloc(sizeof(Datum) * cap);
	o->dead_ids[1] = palloc(sizeof(Datum) * cap);
	o->dead_errors[0] = palloc(sizeof(Datum) * cap);
	o->dead_errors[1] = palloc(sizeof(Datum) * cap);
	o->all_down = true;
	MemoryContextSwitchTo(old);
	return o;
}

/* Make room for one more message in every array of the outcome */
static void
EsOutcomeGrow(EsOutcome *o)
{
	int			cap;

	if (o->nsent < o->capacity && o->nretry < o->capacity &&
		o->ndead[0] < o->capacity && o->ndead[1] < o->capacity)
		return;
	cap = o->capacity * 2;
	o->sent = repalloc(o->sent, sizeof(Datum) * cap);
	o->latencies = repalloc(o->latencies, sizeof(double) * cap);
	o->retry_ids = repalloc(o->retry_ids, sizeof(Datum) * cap);
	o->retry_delays = repalloc(o->retry_delays, sizeof(Datum) * cap);
	o->retry_errors = repalloc(o->retry_errors, sizeof(Datum) * cap);
	o->dead_ids[0] = repalloc(o->dead_ids[0], sizeof(Datum) * cap);
	o->dead_ids[1] = repalloc(o->dead_ids[1], sizeof(Datum) * cap);
	o->dead_errors[0] = repalloc(o->dead_errors[0], sizeof(Datum) * cap);
	o->dead_errors[1] = repalloc(o->dead_errors[1], sizeof(Datum) * cap);
	o->capacity = cap;
}

/* A fresh table of the window's keys */
static void
EsResetKeys(EsPipe *p)
{
	HASHCTL		ctl;

	MemoryContextReset(p->keys_cxt);
	ctl.keysize = sizeof(uint32);
	ctl.entrysize = sizeof(EsKeyState);
	ctl.hcxt = p->keys_cxt;
	p->keys = hash_create("eventstore relay keys", 1024, &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/* The window's entry of a message's key (created if 'create'); NULL: no key */
static EsKeyState *
EsKeyOf(EsPipe *p, const EsMessage *m, bool create)
{
	uint32		hash;
	bool		found;
	EsKeyState *k;

	if (m->key == NULL)
		return NULL;
	hash = hash_bytes((const unsigned char *) m->key, strlen(m->key));
	k = hash_search(p->keys, &hash, create ? HASH_ENTER : HASH_FIND, &found);
	if (k != NULL && !found)
	{
		k->unsettled = 0;
		k->topic = MemoryContextStrdup(p->keys_cxt, m->topic);
		k->blocked_from = 0;
	}
	return k;
}

/* Messages of the key from 'id' on wait for a revisit */
static void
EsBlockKey(EsPipe *p, EsKeyState *k, int64 id)
{
	if (k != NULL && (k->blocked_from == 0 || id < k->blocked_from))
		k->blocked_from = id;
	p->revisit = true;
}

/* Forget a key with nothing in the window that holds anything back */
static void
EsForgetKeyIfIdle(EsPipe *p, EsKeyState *k)
{
	if (k == NULL || k->unsettled > 0 || k->blocked_from != 0)
		return;
	pfree(k->topic);
	(void) hash_search(p->keys, &k->hash, HASH_REMOVE, NULL);
}

/*
 * Hand the batch's messages to the producer, or hold them (see the file
 * header).  Stops when librdkafka's queue is full, and resumes there (or
 * where an error interrupted it) at the next call.
 */
static void
EsProduceBatch(EsPipe *p, EsBatch *b)
{
	while (b->looked_at < b->n)
	{
		EsMessage  *m = &b->msgs[b->looked_at];
		EsKeyState *k = EsKeyOf(p, m, true);

		if (k != NULL &&
			((k->blocked_from != 0 && m->id > k->blocked_from) ||
			 (k->unsettled > 0 && strcmp(k->topic, m->topic) != 0)))
		{
			m->held = true;
			EsBlockKey(p, k, m->id);
		}
		else
		{
			if (k != NULL && k->unsettled == 0 && strcmp(k->topic, m->topic) != 0)
			{
				pfree(k->topic);
				k->topic = MemoryContextStrdup(p->keys_cxt, m->topic);
			}
			if (!m->done)		/* refused when read: not convertible */
			{
				m->produced_at = GetCurrentTimestamp();
				if (!p->sink->send(m))
					return;		/* queue full: later */
				if (k != NULL)
					k->unsettled++;
			}
			if (m->done && m->err != 0)
				EsBlockKey(p, k, m->id);
		}
		b->looked_at++;
	}
}

/* Whether a message failed for good: refused by the relay, or by the broker */
static bool
EsPermanent(EsPipe *p, const EsMessage *m)
{
	return m->refused != NULL || p->sink->is_permanent(m->err);
}

/*
 * Settle one message into the outcome; logs failures, retriable ones once
 * per error and recording
 */
static void
EsSettle(EsPipe *p, EsMessage *m)
{
	EsOutcome  *o = p->outcome;
	EsKeyState *k = EsKeyOf(p, m, false);
	MemoryContext old;
	Datum		error;
	int			where;
	bool		forward_ok;

	if (m->produced && k != NULL)
		k->unsettled--;
	if (m->held || (k != NULL && k->blocked_from != 0 && m->id > k->blocked_from))
	{
		/* Held, or sent after an earlier message of its key failed: stays */
		EsForgetKeyIfIdle(p, k);
		return;
	}

	old = MemoryContextSwitchTo(p->outcome_cxt);
	EsOutcomeGrow(o);
	o->nsettled++;
	if (o->first_at == 0)
		o->first_at = GetCurrentTimestamp();
	/*
	 * A retried message that leaves the outbox releases the later messages
	 * of its key that reads passed: read from the start again
	 */
	if (m->attempts > 0 &&
		(m->err == 0 || EsPermanent(p, m) ||
		 m->attempts + 1 >= es_max_attempts))
		p->revisit = true;

	if (m->err == 0)
	{
		o->latencies[o->nsent] = (double) (GetCurrentTimestamp() - m->committed_at) / 1000.0;
		o->sent[o->nsent++] = Int64GetDatum(m->id);
		o->all_down = false;
		EsForgetKeyIfIdle(p, k);
		MemoryContextSwitchTo(old);
		return;
	}

	/* A failure: the key's later messages in the window stay in the outbox */
	EsBlockKey(p, k, m->id);
	o->last_error = m->refused ? pstrdup(m->refused) : p->sink->error_text(m->err);
	o->all_down = o->all_down && m->refused == NULL && p->sink->is_unreachable(m->err);
	error = CStringGetTextDatum(o->last_error);
	if (!EsPermanent(p, m) && m->attempts + 1 < es_max_attempts)
	{
		/* Log retriable failures once per error and recording */
		if (m->err != p->logged_err)
			ereport(LOG,
					(errmsg("eventstore relay: delivery of outbox message " INT64_FORMAT " to %s topic \"%s\" failed, will retry: %s",
							m->id, p->sink->name, m->topic, o->last_error),
					 errdetail("Attempt %d of %d.", m->attempts + 1, es_max_attempts)));
		p->logged_err = m->err;
		o->retry_ids[o->nretry] = Int64GetDatum(m->id);
		o->retry_delays[o->nretry] = Float8GetDatum(EsBackoffMs(m->attempts));
		if (o->nretry == 0 || DatumGetFloat8(o->retry_delays[o->nretry]) < o->first_retry_ms)
			o->first_retry_ms = DatumGetFloat8(o->retry_delays[o->nretry]);
		o->retry_errors[o->nretry++] = error;
		MemoryContextSwitchTo(old);
		return;
	}

	/* A failed forward to the dead-letter topic stays in the table */
	forward_ok = es_dead_letter_topic[0] != '\0' && es_on_dead_letter != ES_DEAD_LETTER_PARK;
	if (o->ndead[1] == 0 && o->ndead[0] == 0 && forward_ok)
		o->dead_letter_topic = pstrdup(es_dead_letter_topic);
	where = (o->dead_letter_topic != NULL && !m->forwarded) ? 1 : 0;
	ereport(LOG,
			(errmsg("eventstore relay: outbox message " INT64_FORMAT " to %s topic \"%s\" is a dead letter: %s",
					m->id, p->sink->name, m->topic, o->last_error),
			 errdetail("%s after %d attempts; %s.",
					   EsPermanent(p, m) ? "Permanent error" : "Retriable error",
					   m->attempts + 1,
					   where ? "forwarded to the dead-letter topic" : "kept in eventstore.dead_letters")));
	o->dead_ids[where][o->ndead[where]] = Int64GetDatum(m->id);
	o->dead_errors[where][o->ndead[where]++] = error;
	MemoryContextSwitchTo(old);
}

/*
 * Settle what the broker answered, in the order the messages were sent;
 * batches fully settled leave the window
 */
static void
EsSettleWindow(EsPipe *p)
{
	while (p->window != NIL)
	{
		EsBatch    *b = linitial(p->window);

		while (b->settled < b->looked_at)
		{
			EsMessage  *m = &b->msgs[b->settled];

			if (!m->held && !m->done)
				return;
			EsSettle(p, m);
			p->window_count--;
			p->window_bytes -= m->bytes;
			b->settled++;
		}
		if (b->settled < b->n)
			return;
		p->window = list_delete_first(p->window);
		MemoryContextDelete(b->cxt);
	}
}

/*
 * Messages of the window the producer can no longer report (it was
 * destroyed): failed, to be sent again
 */
static void
EsFailUnreported(EsPipe *p)
{
	ListCell   *lc;

	foreach(lc, p->window)
	{
		EsBatch    *b = lfirst(lc);
		int			i;

		for (i = b->settled; i < b->looked_at; i++)
			if (b->msgs[i].produced && !b->msgs[i].done)
			{
				b->msgs[i].done = true;
				b->msgs[i].err = p->sink->lost_err;
			}
	}
	p->revisit = true;
}

/* Whether settled messages should be recorded now */
static bool
EsRecordDue(EsPipe *p, TimestampTz now)
{
	EsOutcome  *o = p->outcome;

	if (o->nsettled == 0)
		return false;
	return o->nretry > 0 || o->ndead[0] > 0 || o->ndead[1] > 0 ||
		o->nsettled >= es_relay_batch_size ||
		p->window_count + o->nsettled >= es_relay_window_messages ||
		(p->revisit && p->window_count == 0) ||
		TimestampDifferenceExceeds(o->first_at, now, ES_RECORD_DELAY_MS);
}

/* Record the settled messages, account for them, start a new outcome */
static void
EsRecordSettled(EsPipe *p)
{
	EsOutcome  *o = p->outcome;

	es_round_step = "recording deliveries";
	if (!EsRelayRecord(o, p->window_outbox))
		ereport(LOG,
				(errmsg("eventstore relay: the outcome of sent messages is dropped: the outbox they were read from no longer exists"),
				 errdetail("%d messages were acknowledged, %d were to be retried and %d to be dead-lettered.",
						   o->nsent, o->nretry, o->ndead[0] + o->ndead[1])));
	p->failed_rounds = 0;
	EsRelayAccount(p->id, o->nsent, o->nretry, o->ndead[0] + o->ndead[1], o->last_error,
				   o->latencies, o->nsent);
	if (o->nsent + o->nretry + o->ndead[0] + o->ndead[1] > 0 && o->all_down)
		p->sink->set_down();
	if (o->nretry > 0)
	{
		TimestampTz due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													  (int) ceil(Max(1, o->first_retry_ms)));

		p->retries_pending = true;
		if (p->revisit_at == 0 || due < p->revisit_at)
			p->revisit_at = due;
	}
	p->outcome = EsNewOutcome(p);
}

/* Whether the window has room for another read */
static bool
EsWindowHasRoom(EsPipe *p)
{
	return p->window_count + p->outcome->nsettled < es_relay_window_messages &&
		p->window_bytes < (Size) es_relay_window_memory * 1024;
}

/* Whether every message read was produced or held (none waits for room) */
static bool
EsWindowProduced(EsPipe *p)
{
	EsBatch    *tail;

	if (p->window == NIL)
		return true;
	tail = llast(p->window);
	return tail->looked_at == tail->n;
}

/*
 * Give up sending what a full queue left of the last read: those messages
 * stay in the outbox (held) and are read again by the revisit, so that the
 * window can drain for a revisit, a new producer or a stop
 */
static void
EsHoldUnproduced(EsPipe *p)
{
	EsBatch    *tail;

	if (EsWindowProduced(p))
		return;
	tail = llast(p->window);
	for (; tail->looked_at < tail->n; tail->looked_at++)
		tail->msgs[tail->looked_at].held = true;
	p->revisit = true;
}

/* Whether nothing is in the window, settled or not */
static bool
EsWindowEmpty(EsPipe *p)
{
	return p->window == NIL && p->outcome->nsettled == 0;
}

/*
 * After a failed read of one row: which row it was (the count starts again
 * if another row failed), and once the same row failed ES_POISON_READS
 * times in a row, set it aside as a dead letter with the error, so that the
 * sink's other messages go on
 */
static void
EsSetAside(EsPipe *p)
{
	int64		id;

	es_round_step = "setting an unreadable message aside";
	if (!p->read_error_looked_up)
	{
		id = EsRelayQuarantine(p->id, p->read_error_after, 0, NULL);
		if (id != p->read_error_id)
			p->read_errors = 1;
		p->read_error_id = id;
		p->read_error_looked_up = true;
	}
	if (p->read_errors < ES_POISON_READS)
		return;
	id = EsRelayQuarantine(p->id, p->read_error_after, p->read_error_id, p->read_error);
	if (id != 0 && id == p->read_error_id)
	{
		ereport(LOG,
				(errmsg("eventstore relay: outbox message " INT64_FORMAT " to %s cannot be read and is a dead letter: %s",
						id, EsSinkTitle(p->id), p->read_error),
				 errdetail("Reading it failed %d times in a row.", p->read_errors)));
		EsRelayAccount(p->id, 0, 0, 1, p->read_error, NULL, 0);
	}
	p->read_errors = 0;
	p->read_wanted = true;
}

/* Read the next ready rows into the window and send them */
static void
EsReadAndSend(EsPipe *p)
{
	MemoryContext cxt = AllocSetContextCreate(es_relay_cxt, "eventstore relay batch",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	EsBatch    *b = palloc0(sizeof(EsBatch));
	Oid			outbox;
	long		wait_ms = es_relay_idle_interval;
	TimestampTz retry_due = 0;
	int			limit = Min(es_relay_batch_size,
							es_relay_window_messages - p->window_count - p->outcome->nsettled);
	int			i;

	if (p->careful_reads > 0)
		limit = 1;				/* after a failed read: see EsPipe */
	es_round_step = "reading the outbox";
	b->cxt = cxt;
	es_reading_cxt = cxt;
	es_reading_limit = limit;
	es_reading_after = p->last_read;
	b->n = EsRelayFetch(p->id, &outbox, p->last_read, limit, &b->msgs, &wait_ms, &retry_due,
						&p->retries_pending);
	es_reading_cxt = NULL;
	es_reading_limit = 0;
	MemoryContextSwitchTo(old);
	p->failed_rounds = 0;
	p->read_errors = 0;
	if (p->careful_reads > 0)
		p->careful_reads = b->n == 0 ? 0 : p->careful_reads - 1;
	p->read_wanted = b->n == limit;
	p->read_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
	p->held_back = b->n < limit && wait_ms == ES_HELD_BACK_RECHECK_MS;
	if (retry_due != 0 && (p->revisit_at == 0 || retry_due < p->revisit_at))
		p->revisit_at = retry_due;

	if (outbox != p->window_outbox)
	{
		/*
		 * The extension was created (again): ids start over.  What the
		 * window holds came from the old table; read the new one from its
		 * start once the window drained.
		 */
		MemoryContextDelete(cxt);
		if (EsWindowEmpty(p))
		{
			p->window_outbox = outbox;
			p->last_read = 0;
			p->read_wanted = OidIsValid(outbox);
		}
		else
			p->revisit = true;
		return;
	}
	if (b->n == 0)
	{
		MemoryContextDelete(cxt);
		return;
	}

	p->last_read = b->msgs[b->n - 1].id;
	p->window = lappend(p->window, b);
	p->window_count += b->n;
	for (i = 0; i < b->n; i++)
		p->window_bytes += b->msgs[i].bytes;
	es_round_step = "sending";
	EsProduceBatch(p, b);
}

/*
 * Session settings of the worker's own, over those of the database and the
 * role: it must be able to write, never time out, read committed rows, and
 * resolve no name through a search_path it does not control.  Its commits
 * need not wait for the WAL flush: a recording lost in a crash only means
 * its messages are sent again.
 */
static void
EsRelaySessionSettings(void)
{
	static const char *const settings[][2] = {
		{"default_transaction_read_only", "off"},
		{"default_transaction_isolation", "read committed"},
		{"default_transaction_deferrable", "off"},
		{"statement_timeout", "0"},
		{"lock_timeout", "0"},
		{"idle_in_transaction_session_timeout", "0"},
		{"session_replication_role", "origin"},
		{"search_path", "pg_catalog, pg_temp"},
		{"synchronous_commit", "off"},
	};
	int			i;

	for (i = 0; i < (int) lengthof(settings); i++)
		SetConfigOption(settings[i][0], settings[i][1], PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * Recover from an ERROR, as PostgreSQL's long-lived processes do
 * (autovacuum launcher, checkpointer): report it, abort the transaction,
 * release what the error left behind, and schedule the next try with the
 * retry backoff.  The window and the settled outcome stay in memory.
 */
static void
EsRelayRecover(MemoryContext error_cxt)
{
	ErrorData  *edata;
	char		error[256];
	int			i;

	/* Since not using PG_TRY, reset the error stack by hand */
	error_context_stack = NULL;
	HOLD_INTERRUPTS();
	disable_all_timeouts(false);
	QueryCancelPending = false;

	MemoryContextSwitchTo(error_cxt);
	edata = CopyErrorData();
	EmitErrorReport();
	AbortCurrentTransaction();
	LWLockReleaseAll();
	pgstat_report_wait_end();
	MemoryContextSwitchTo(TopMemoryContext);
	FlushErrorState();
	if (es_reading_cxt != NULL)
		MemoryContextDelete(es_reading_cxt);
	es_reading_cxt = NULL;
	if (es_reading_limit > 0 && es_current != NULL)
	{
		/* A read failed: read one row at a time to find the row (EsPipe) */
		es_current->careful_reads = Max(es_current->careful_reads, es_reading_limit);
		if (es_reading_limit == 1)
		{
			if (es_current->read_errors > 0 && es_current->read_error_after == es_reading_after)
				es_current->read_errors++;
			else
				es_current->read_errors = 1;
			es_current->read_error_after = es_reading_after;
			es_current->read_error_looked_up = false;
			strlcpy(es_current->read_error, edata->message, sizeof(es_current->read_error));
		}
	}
	es_reading_limit = 0;

	snprintf(error, sizeof(error), "%s: %s", es_round_step, edata->message);
	/* The pipeline whose step failed backs off (all, if none was running) */
	for (i = 0; i < ES_NUM_SINKS; i++)
	{
		EsPipe	   *p = &es_pipes[i];

		if (p->sink == NULL || (es_current != NULL && es_current != p))
			continue;
		p->failed_rounds++;
		p->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												  (int) EsBackoffMs(p->failed_rounds - 1));
		EsRelayAccount(i, 0, 0, 0, error, NULL, 0);
		EsRelayShowState(p, ES_RELAY_ERROR);
	}
	es_current = NULL;
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting to retry after an error");
	MemoryContextReset(error_cxt);
	RESUME_INTERRUPTS();
}

/* The earlier of a deadline and another (0: none) */
static TimestampTz
EsEarlier(TimestampTz a, TimestampTz b)
{
	return a == 0 ? b : (b == 0 ? a : Min(a, b));
}

/*
 * When the oldest message in flight times out (0: none in flight): past it,
 * what is still queued is purged, so that no later message of its
 * partition can be sent after it failed
 */
static TimestampTz
EsDeliveryDeadline(EsPipe *p)
{
	ListCell   *lc;

	foreach(lc, p->window)
	{
		EsBatch    *b = lfirst(lc);
		int			i;

		for (i = b->settled; i < b->looked_at; i++)
			if (b->msgs[i].produced && !b->msgs[i].done)
				return TimestampTzPlusMilliseconds(b->msgs[i].produced_at, es_delivery_timeout);
	}
	return 0;
}

/*
 * One turn of a sink's pipeline: serve answers, settle, record, read and
 * send as far as there is work; returns when to wake at the latest (0: no
 * limit)
 */
static TimestampTz
EsRelayTurn(EsPipe *p)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz wake = 0;
	TimestampTz deadline;
	bool		running;

	es_current = p;
	if (!p->sink->configured() || p->sink->settings_changed())
		p->draining = p->sink->running();
	if (p->sink->failed())
	{
		p->sink->stop();
		EsFailUnreported(p);
	}

	if (p->sink->serve())
		p->revisit = true;		/* stop reading until it settled */
	if (p->revisit_at != 0 && now >= p->revisit_at)
	{
		p->revisit = true;
		p->revisit_at = 0;
	}
	if (p->revisit || p->draining || !p->sink->running())
		EsHoldUnproduced(p);
	EsSettleWindow(p);
	deadline = EsDeliveryDeadline(p);
	if (deadline != 0 && now >= deadline)
	{
		/*
		 * Nothing more is sent until what the purge failed is settled: a
		 * message produced now could reach the broker before the purged
		 * ones of its key are sent again
		 */
		p->sink->purge();
		p->revisit = true;
		wake = TimestampTzPlusMilliseconds(now, ES_PURGE_RECHECK_MS);
	}
	else
		wake = deadline;
	if (EsRecordDue(p, now))
		EsRecordSettled(p);
	if (p->draining && EsWindowEmpty(p))
	{
		p->sink->stop();
		p->draining = false;
	}

	running = p->sink->running();
	if (!running && p->sink->configured() && EsWindowEmpty(p))
	{
		if (!p->sink->start())
		{
			char	   *error = psprintf("invalid %s settings: see the server log",
									 EsSinkTitle(p->id));

			EsRelaySetState(p->id, ES_RELAY_CONNECTING);
			EsRelayAccount(p->id, 0, 0, 0, error, NULL, 0);
			pfree(error);
			return TimestampTzPlusMilliseconds(now, es_retry_backoff_max);
		}
		EsRelaySetState(p->id, ES_RELAY_CONNECTING);
		running = true;
	}
	if (!running)
	{
		EsRelaySetState(p->id, ES_RELAY_DISABLED);
		return wake;			/* off: sleep until a reload */
	}

	/* Finish sending a read that a full queue or an error interrupted */
	if (!EsWindowProduced(p) && !p->revisit)
		EsProduceBatch(p, llast(p->window));

	/*
	 * The safety net: an idle relay reads the outbox from its start every
	 * relay_idle_interval, for rows it passed that became ready in a way it
	 * was not told of (dead letters deleted by hand)
	 */
	if (p->rescan_at == 0)
		p->rescan_at = TimestampTzPlusMilliseconds(now, es_relay_idle_interval);
	if (now >= p->rescan_at && EsWindowEmpty(p))
		p->revisit = true;

	/* Once the window drained, read the outbox again from the start */
	if (p->revisit && EsWindowEmpty(p))
	{
		p->revisit = false;
		p->last_read = 0;
		p->read_wanted = true;
		p->rescan_at = TimestampTzPlusMilliseconds(now, es_relay_idle_interval);
		EsResetKeys(p);
	}
	if (p->read_at != 0 && now >= p->read_at)
		p->read_wanted = true;
	if (p->read_errors > 0)
		EsSetAside(p);
	if (p->read_wanted && !p->revisit && !p->draining && EsWindowHasRoom(p) &&
		EsWindowProduced(p))
	{
		EsReadAndSend(p);
		if (p->sink->serve())
			p->revisit = true;
		EsSettleWindow(p);
	}

	EsRelaySetInFlight(p->id, p->sink->in_flight());
	p->sink->probe();
	EsRelayShowState(p, p->window != NIL ? ES_RELAY_SENDING :
					 p->revisit_at != 0 ? ES_RELAY_BACKING_OFF : ES_RELAY_IDLE);

	/* More to do at once, or the earliest of the timers */
	if (p->read_wanted && !p->revisit && !p->draining && EsWindowHasRoom(p) &&
		EsWindowProduced(p))
		return now;
	if (p->revisit && EsWindowEmpty(p))
		return now;
	if (p->outcome->nsettled > 0)
		wake = EsEarlier(wake, TimestampTzPlusMilliseconds(p->outcome->first_at, ES_RECORD_DELAY_MS));
	wake = EsEarlier(wake, p->revisit_at);
	/* The read timer only when a read could start (else: reports wake us) */
	if (!p->revisit && !p->draining && EsWindowHasRoom(p) && EsWindowProduced(p))
		wake = EsEarlier(wake, p->read_at);
	if (EsWindowEmpty(p))
		wake = EsEarlier(wake, p->rescan_at);
	if (p->sink->down())
		wake = EsEarlier(wake, TimestampTzPlusMilliseconds(now, 1000));
	return wake;
}

/*
 * The latch was set: a transaction that enqueued ended.  The pipelines of
 * the sinks it enqueued for read, and those whose rows were held back by
 * the horizon (any transaction's end may have released them).
 */
static void
EsRelayWoken(void)
{
	uint32		sinks = EsRelayTakeSinks();
	int			i;

	for (i = 0; i < ES_NUM_SINKS; i++)
		if ((sinks & ((uint32) 1 << i)) != 0 || es_pipes[i].held_back)
			es_pipes[i].read_wanted = true;
}

/*
 * Sleep until the latch is set, a sink's answers arrive, or 'wake' (0: no
 * limit).  Table statistics are reported first, as PostgresMain does
 * between queries: the outbox's autovacuum depends on the relay's deletes
 * being counted; what could not be reported yet shortens the sleep.
 */
static void
EsRelaySleep(TimestampTz wake)
{
	long		stats_ms = pgstat_report_stat(false);
	long		sleep_ms = -1;
	WaitEventSet *set;
	WaitEvent	events[ES_NUM_SINKS + 2];
	int			nevents;
	int			i;

	if (wake != 0)
		sleep_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), wake);
	if (stats_ms > 0 && (sleep_ms < 0 || stats_ms < sleep_ms))
		sleep_ms = stats_ms;
	if (sleep_ms == 0)
		return;
	pgstat_report_activity(STATE_IDLE, "eventstore relay: waiting");

	set = EsCreateWaitEventSet(ES_NUM_SINKS + 2);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (i = 0; i < ES_NUM_SINKS; i++)
	{
		pgsocket	sock;

		if (es_pipes[i].sink == NULL || !es_pipes[i].sink->running())
			continue;
		sock = es_pipes[i].sink->socket();
		if (sock != PGINVALID_SOCKET)
			AddWaitEventToSet(set, WL_SOCKET_READABLE, sock, NULL, NULL);
	}
	nevents = WaitEventSetWait(set, sleep_ms, events, lengthof(events), PG_WAIT_EXTENSION);
	FreeWaitEventSet(set);
	for (i = 0; i < nevents; i++)
		if (events[i].events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			EsRelayWoken();
		}
}

/* Process exit (before_shmem_exit): each running sink's bounded flush */
static void
EsRelaySinksAtExit(int code, Datum arg)
{
	int			i;

	for (i = 0; i < ES_NUM_SINKS; i++)
		if (es_pipes[i].sink != NULL && es_pipes[i].sink->running())
			es_pipes[i].sink->at_exit();
}

/* Set up the pipeline of every sink built in */
static void
EsRelayPipesInit(void)
{
	int			i;

	for (i = 0; i < ES_NUM_SINKS; i++)
	{
		EsPipe	   *p = &es_pipes[i];

		memset(p, 0, sizeof(EsPipe));
		p->id = (EsSinkId) i;
		p->sink = es_sinks[i];
		if (p->sink == NULL)
			continue;
		p->outcome_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay outcome",
											   ALLOCSET_DEFAULT_SIZES);
		p->keys_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay keys",
											ALLOCSET_DEFAULT_SIZES);
		p->outcome = EsNewOutcome(p);
		EsResetKeys(p);
		p->retries_pending = true;
		p->read_wanted = true;
	}
}

/* Every pipeline reads the outbox from the start once its window drained */
static void
EsRelayRevisitAll(void)
{
	int			i;

	for (i = 0; i < ES_NUM_SINKS; i++)
		es_pipes[i].revisit = true;
}

/*
 * The relay worker's entry point: 'arg' is the slot the launcher claimed
 * for it, bgw_extra its database and the claim's generation (EsRelayArgs)
 */
void
eventstore_relay_main(Datum arg)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext error_cxt;
	EsRelayArgs args;
	/* static: they survive an ERROR (longjmp) */
	static TimestampTz publish_due = 0;
	static XLogRecPtr unflushed = InvalidXLogRecPtr;	/* the last publication */

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(EsRelayArgs));
	BackgroundWorkerInitializeConnectionByOid(args.database, InvalidOid, 0);
	if (!EsAttachRelaySlot(DatumGetInt32(arg), args.generation))
	{
		/* A launcher that started meanwhile freed our slot, and starts another */
		ereport(LOG,
				(errmsg("eventstore relay for database %u ends: its slot was given up while it started",
						args.database)));
		proc_exit(0);
	}
	before_shmem_exit(EsRelayExit, (Datum) 0);
	EsRelaySessionSettings();
	EsRelayInstallPlannerHook();

	/* Nothing to do without the extension: the launcher tries again later */
	StartTransactionCommand();
	es_relay_no_extension = !OidIsValid(get_extension_oid("eventstore", true));
	strlcpy(es_relay_dbname, get_database_name(MyDatabaseId), NAMEDATALEN);
	CommitTransactionCommand();
	if (es_relay_no_extension)
	{
		ereport(DEBUG1,
				(errmsg("eventstore relay: database \"%s\" has no eventstore extension",
						es_relay_dbname)));
		proc_exit(0);
	}

	/* Runs first (callbacks run in reverse order): flush the sinks */
	before_shmem_exit(EsRelaySinksAtExit, (Datum) 0);
	es_relay_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay",
										 ALLOCSET_DEFAULT_SIZES);
	error_cxt = AllocSetContextCreate(TopMemoryContext, "eventstore relay error",
									  ALLOCSET_DEFAULT_SIZES);
	EsRelayPipesInit();
	ereport(LOG,
			(errmsg("eventstore relay started for database \"%s\"", es_relay_dbname)));

	/* An ERROR comes back here: see EsRelayRecover */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
		EsRelayRecover(error_cxt);
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		TimestampTz wake = 0;
		int			i;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* on_dead_letter may have released parked rows it passed */
			EsRelayRevisitAll();
		}
		/* Requeued or discarded dead letters */
		if (EsRelayTakeRevisit())
			EsRelayRevisitAll();
		/* A command needs the database without sessions: leave it */
		if (EsRelayTakeLeave())
		{
			ereport(LOG,
					(errmsg("eventstore relay for database \"%s\" leaves it for a command that needs it without sessions",
							es_relay_dbname)));
			proc_exit(0);
		}
		/* An extension was dropped here: end if it was ours */
		if (EsRelayTakeCheckExtension())
		{
			StartTransactionCommand();
			es_relay_no_extension = !OidIsValid(get_extension_oid("eventstore", true));
			CommitTransactionCommand();
			EsRelayEndWithoutExtension();
		}

		/*
		 * Appends ended: publish the read horizon for hot standbys, at most
		 * every EsPublishIntervalMs().  The request is taken only when due,
		 * so that appends ending meanwhile find it set and do not wake us.
		 */
		if (GetCurrentTimestamp() >= publish_due)
		{
			if (EsRelayTakeHorizonWanted())
			{
				es_round_step = "publishing the read horizon";
				es_relay_no_extension = !EsPublishHorizon(&unflushed);
				EsRelayEndWithoutExtension();
				publish_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  EsPublishIntervalMs());
				/* Look again then: to publish again, or to flush this one */
				wake = publish_due;
			}
			else
			{
				/* No append ended for an interval: send the last one on */
				EsFlushPublishedHorizon(unflushed);
				unflushed = InvalidXLogRecPtr;
			}
		}
		else
			wake = publish_due;

		for (i = 0; i < ES_NUM_SINKS; i++)
		{
			EsPipe	   *p = &es_pipes[i];

			if (p->sink == NULL)
				continue;
			if (p->retry_at != 0 && GetCurrentTimestamp() < p->retry_at)
			{
				/* After an error: only serve answers until the backoff passed */
				if (p->sink->serve())
					p->revisit = true;
				wake = EsEarlier(wake, p->retry_at);
				continue;
			}
			p->retry_at = 0;
			wake = EsEarlier(wake, EsRelayTurn(p));
			es_current = NULL;
			EsRelayEndWithoutExtension();
		}
		EsRelaySleep(wake);
	}
}
