#!/usr/bin/python3
"""peer_relay.py: the outbox relay most teams write by hand, as the peer
eventstore's relay is compared with (bench/relay_drain.sh).

    bench/peer_relay.py CONNINFO BROKERS TABLE TOPIC [SOURCE]

A Python service on Debian's python3-psycopg2 and python3-confluent-kafka
(test/tools/install-deps installs them; run it with /usr/bin/python3, which
has them).  TABLE is an outbox like eventstore.outbox (LIKE eventstore.outbox
INCLUDING ALL) whose rows point at events by event_position.  Until TABLE is
empty, each round is one transaction:

    BEGIN;
    SELECT ... FROM TABLE JOIN eventstore.events ... ORDER BY id
        LIMIT 1000 FOR UPDATE SKIP LOCKED;
    produce each row, then flush() (wait for every delivery report);
    DELETE FROM TABLE WHERE id = ANY(...);
    COMMIT;

Every message goes to TOPIC with what eventstore's relay sends for a routed
event: the outbox row's key, the event's data as the value and the
CloudEvents headers of eventstore.cloudevent_headers(e, SOURCE) (SOURCE
defaults to the relay's: eventstore.cloudevents_source, or
/eventstore/<database>).  The producer has the relay's settings: idempotent,
acks=all, linger.ms=1, the murmur2_random partitioner.  One warm-up message
(not timed) connects it and fetches TOPIC's metadata first, as the relay is
connected when a drain starts.  Prints one line, as bench/produce_only does:

    messages=N failed=F seconds=S.SSS rate=R

Exits 0 when TABLE was drained, 1 when a delivery failed (that batch's
transaction is rolled back, its rows stay), 2 on misuse.
"""
import sys
import time

import confluent_kafka
import psycopg2
import psycopg2.sql

BATCH = 1000


def main(argv):
    """Drain the outbox table and print the figures"""
    if len(argv) not in (5, 6):
        print("usage: peer_relay.py CONNINFO BROKERS TABLE TOPIC [SOURCE]", file=sys.stderr)
        return 2
    conninfo, brokers, table, topic = argv[1:5]
    failures = []

    def on_delivery(err, msg):
        """Delivery report, served by poll() and flush() on this thread"""
        if err is not None:
            failures.append(err)

    conn = psycopg2.connect(conninfo)
    cur = conn.cursor()
    if len(argv) == 6:
        source = argv[5]
    else:
        cur.execute("SELECT coalesce(nullif(current_setting('eventstore.cloudevents_source', true), ''),"
                    " '/eventstore/' || current_database())")
        source = cur.fetchone()[0]
        conn.rollback()
    fetch = psycopg2.sql.SQL(
        "SELECT o.id, o.message_key, e.data::text, eventstore.cloudevent_headers(e, %s)"
        " FROM {t} o JOIN eventstore.events e ON e.global_position = o.event_position"
        " ORDER BY o.id LIMIT {n} FOR UPDATE OF o SKIP LOCKED").format(
            t=psycopg2.sql.Identifier(*table.split(".")), n=psycopg2.sql.Literal(BATCH))
    delete = psycopg2.sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(
        t=psycopg2.sql.Identifier(*table.split(".")))

    producer = confluent_kafka.Producer({
        "bootstrap.servers": brokers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
        "partitioner": "murmur2_random",
        "on_delivery": on_delivery,
    })
    producer.produce(topic, key="warm-up", value="{}")
    if producer.flush(30) != 0 or failures:
        print("peer_relay: the warm-up message was not delivered: %s" % failures, file=sys.stderr)
        return 1

    messages = 0
    t0 = time.monotonic()
    while True:
        cur.execute(fetch, (source,))    # psycopg2 opens the transaction
        rows = cur.fetchall()
        if not rows:
            conn.rollback()
            break
        for row_id, key, value, headers in rows:
            while True:
                try:
                    producer.produce(topic, key=key, value=value,
                                     headers=list(headers.items()))
                    break
                except BufferError:    # the local queue is full: let it drain
                    producer.poll(0.01)
            producer.poll(0)
        producer.flush()
        if failures:
            conn.rollback()
            print("messages=%d failed=%d seconds=%.3f rate=0" % (messages, len(failures),
                                                                 time.monotonic() - t0))
            print("peer_relay: delivery failed: %s" % failures[0], file=sys.stderr)
            return 1
        cur.execute(delete, ([r[0] for r in rows],))
        conn.commit()
        messages += len(rows)
    seconds = time.monotonic() - t0
    print("messages=%d failed=0 seconds=%.3f rate=%.0f" % (messages, seconds,
                                                          messages / seconds if seconds > 0 else 0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
