-- Sinks: routes, publish() and replay() name the broker a message goes to;
-- outbox rows, dead letters, outbox_lag and relay_status() carry it (no
-- broker is configured here).
CREATE OR REPLACE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- a route per sink; the default is kafka; add_route replaces the sink too
SELECT eventstore.add_route('snkk', 'snk-kafka');
SELECT eventstore.add_route('snkr', 'snk-exchange', 'rabbitmq');
SELECT eventstore.add_route('snkn', 'snk-subject', 'nats');
SELECT eventstore.add_route('snkx', 'snk-x', 'nats');
SELECT eventstore.add_route('snkx', 'snk-x', 'rabbitmq');
SELECT category, topic, sink FROM eventstore.routes WHERE category LIKE 'snk%' ORDER BY category;

-- appends are enqueued for their route's sink, in order
SELECT eventstore.append('snkk-1', 0, '{"type": "A", "data": {}}');
SELECT eventstore.append('snkr-1', 0, '[{"type": "A", "data": {}}, {"type": "B", "data": {}}]');
SELECT eventstore.append('snkn-1', 0, '{"type": "A", "data": {}}');
SELECT eventstore.append('snkx-1', 0, '{"type": "A", "data": {}}');
SELECT topic, message_key, sink FROM eventstore.outbox ORDER BY id;

-- publish and replay take a sink as their last argument
SELECT eventstore.publish('snk-mail', 'k1', '{}') > 0 AS kafka;
SELECT eventstore.publish('snk-mail', 'k2', '{}', NULL, 'rabbitmq') > 0 AS rabbitmq;
SELECT eventstore.publish('snk-mail', 'k3', '{}', '{"h": "v"}', sink => 'nats') > 0 AS nats;
SELECT eventstore.replay('snk-replay', 'snkk', sink => 'nats');
SELECT topic, message_key, sink FROM eventstore.outbox WHERE topic IN ('snk-mail', 'snk-replay') ORDER BY id;

-- outbox_lag per sink and topic
SELECT sink, topic, pending FROM eventstore.outbox_lag ORDER BY sink, topic;

-- relay_status(): a row per sink with messages waiting (none is configured)
SELECT sink, state, pending FROM eventstore.relay_status() ORDER BY sink;

-- bad sinks: clear errors, nothing written
SELECT count(*) AS before FROM eventstore.outbox \gset
SELECT try($$SELECT eventstore.add_route('snkk', 't', 'pulsar')$$);
SELECT try($$SELECT eventstore.add_route('snkk', 't', NULL)$$);
SELECT try($$SELECT eventstore.add_route('snkk', 't', 'Kafka')$$);
SELECT try($$SELECT eventstore.publish('t', 'k', '{}', NULL, 'pulsar')$$);
SELECT try($$SELECT eventstore.publish('t', 'k', '{}', NULL, NULL)$$);
SELECT try($$SELECT eventstore.publish('t', 'k', '{}', NULL, '')$$);
SELECT try($$SELECT eventstore.replay('t', sink => 'amqp')$$);
SELECT count(*) = :before AS nothing_written FROM eventstore.outbox;
SELECT sink FROM eventstore.routes WHERE category = 'snkk';
-- the table refuses another sink written by hand (as the owner)
SELECT try($$INSERT INTO eventstore.outbox (topic, sink) VALUES ('t', 'pulsar')$$);

-- the old signatures are gone: no overload makes a short call ambiguous
SELECT count(*) FROM pg_proc WHERE pronamespace = 'eventstore'::regnamespace
	AND proname IN ('publish', 'add_route', 'replay');

-- a dead letter keeps its sink, and requeue puts it back to that sink, in
-- front of the later messages of its key on that sink only
DELETE FROM eventstore.outbox;
SELECT eventstore.publish('snk-dl', 'dk', '{"n": 1}', NULL, 'nats') AS dl_id \gset
SELECT eventstore.publish('snk-dl', 'dk', '{"n": 2}', NULL, 'nats') > 0;
SELECT eventstore.publish('snk-dl', 'dk', '{"n": 3}', NULL, 'kafka') > 0;
INSERT INTO eventstore.dead_letters (outbox_id, topic, message_key, payload, headers, created_at,
	attempts, last_error, first_failed_at, last_failed_at, sink)
SELECT id, topic, message_key, payload, headers, created_at, 1, 'x', now(), now(), sink
FROM eventstore.outbox WHERE id = :dl_id;
DELETE FROM eventstore.outbox WHERE id = :dl_id;
SELECT eventstore.requeue_dead_letters();
SELECT payload->>'n' AS n, sink FROM eventstore.outbox ORDER BY id;
DELETE FROM eventstore.outbox;
DELETE FROM eventstore.routes WHERE category LIKE 'snk%';
