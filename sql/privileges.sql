-- Nothing is granted to PUBLIC; the GRANTs of docs/reference.md give an
-- application writer and a reader exactly what they need.
CREATE ROLE regress_es_nobody;
CREATE ROLE regress_es_reader;
CREATE ROLE regress_es_writer;

-- the reader role, as in the docs
GRANT USAGE ON SCHEMA eventstore TO regress_es_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA eventstore TO regress_es_reader;
GRANT EXECUTE ON FUNCTION
	eventstore.stream_version(text),
	eventstore.read_stream(text, bigint, integer),
	eventstore.read_all(bigint, integer, text),
	eventstore.read_horizon(),
	eventstore.load_aggregate(text, bigint)
	TO regress_es_reader;
-- the writer role: a reader that may also append and save snapshots
GRANT regress_es_reader TO regress_es_writer;
GRANT EXECUTE ON FUNCTION
	eventstore.append(text, bigint, jsonb),
	eventstore.append_event(text, bigint, text, jsonb, jsonb, uuid),
	eventstore.save_snapshot(text, bigint, jsonb),
	eventstore.publish(text, text, jsonb, jsonb, text)
	TO regress_es_writer;

-- no function of the extension is executable by PUBLIC
SELECT p.proname FROM pg_proc p
WHERE p.pronamespace = 'eventstore'::regnamespace
  AND has_function_privilege('regress_es_nobody', p.oid, 'EXECUTE');

SET ROLE regress_es_nobody;
SELECT eventstore.append('priv-1', 0, '{"type": "A", "data": 1}');
SELECT count(*) FROM eventstore.events;
RESET ROLE;

SET ROLE regress_es_writer;
SELECT eventstore.append('priv-1', 0, '{"type": "A", "data": 1}');
SELECT eventstore.append_event('priv-1', 1, 'B', '2');
SELECT eventstore.save_snapshot('priv-1', 2, '{"n": 2}');
SELECT eventstore.publish('priv-topic', 'k', '{}') > 0 AS published;
-- appends only through append(): no direct writes
INSERT INTO eventstore.events (stream_id, stream_version, event_id, event_type, data)
VALUES ('priv-1', 3, gen_random_uuid(), 'C', '3');
UPDATE eventstore.streams SET version = 0 WHERE stream_id = 'priv-1';
SELECT eventstore.register_aggregate('priv', 'jsonb_concat(jsonb, jsonb)');
SELECT eventstore.add_route('priv', 'priv-topic');
DELETE FROM eventstore.outbox;
RESET ROLE;

SET ROLE regress_es_reader;
SELECT stream_version, event_type FROM eventstore.read_stream('priv-1');
SELECT count(*) FROM eventstore.read_all() WHERE stream_id = 'priv-1';
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('priv-1');
SELECT eventstore.stream_version('priv-1');
SELECT eventstore.append('priv-1', 2, '{"type": "C", "data": 3}');
SELECT eventstore.save_snapshot('priv-1', 2, '{}');
SELECT eventstore.publish('priv-topic', 'k', '{}');
RESET ROLE;

-- a reader without EXECUTE on the reducer cannot fold (the reducer itself runs as its owner)
CREATE FUNCTION priv_reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('last', event.event_type) $$;
REVOKE ALL ON FUNCTION priv_reducer(jsonb, eventstore.events) FROM PUBLIC;
SELECT eventstore.register_aggregate('priv', 'priv_reducer(jsonb, eventstore.events)');
SET ROLE regress_es_reader;
SELECT state FROM eventstore.load_aggregate('priv-1');
RESET ROLE;
GRANT EXECUTE ON FUNCTION priv_reducer(jsonb, eventstore.events) TO regress_es_reader;
SET ROLE regress_es_reader;
SELECT state FROM eventstore.load_aggregate('priv-1');
RESET ROLE;

DROP OWNED BY regress_es_nobody, regress_es_reader, regress_es_writer;
DROP ROLE regress_es_nobody, regress_es_reader, regress_es_writer;

-- An operator: watches the relay, handles dead letters, replays, routes
CREATE ROLE regress_es_operator;
CREATE ROLE regress_es_plain;
GRANT USAGE ON SCHEMA eventstore TO regress_es_operator;
GRANT SELECT ON eventstore.outbox, eventstore.dead_letters, eventstore.outbox_lag,
	eventstore.routes TO regress_es_operator;
GRANT EXECUTE ON FUNCTION
	eventstore.relay_status(),
	eventstore.requeue_dead_letters(bigint[]),
	eventstore.discard_dead_letters(bigint[]),
	eventstore.replay(text, text, bigint, bigint, text),
	eventstore.add_route(text, text, text),
	eventstore.remove_route(text)
	TO regress_es_operator;
SET ROLE regress_es_operator;
SELECT state IS NOT NULL AND pending >= 0 AS visible FROM eventstore.relay_status();
SELECT count(*) FROM eventstore.outbox_lag;
SELECT eventstore.requeue_dead_letters();
SELECT eventstore.discard_dead_letters('{}');
SELECT eventstore.replay('priv-replay', 'priv');
SELECT eventstore.add_route('priv', 'priv-topic');
SELECT eventstore.remove_route('priv');
SHOW eventstore.kafka_config;
RESET ROLE;

-- a role with nothing granted can do none of it, and cannot see kafka_config
GRANT USAGE ON SCHEMA eventstore TO regress_es_plain;
SET ROLE regress_es_plain;
SELECT * FROM eventstore.relay_status();
SELECT eventstore.requeue_dead_letters();
SELECT eventstore.discard_dead_letters('{1}');
SELECT eventstore.replay('t');
SELECT count(*) FROM eventstore.outbox_lag;
SELECT count(*) FROM eventstore.dead_letters;
SHOW eventstore.kafka_config;
SHOW eventstore.rabbitmq_url;
SHOW eventstore.nats_url;
SHOW eventstore.nats_credentials;
SELECT count(*) FROM pg_settings WHERE name = 'eventstore.kafka_config';
SELECT current_setting('eventstore.kafka_config');
RESET ROLE;
SELECT count(*) FROM pg_settings WHERE name = 'eventstore.kafka_config';
DELETE FROM eventstore.outbox WHERE topic = 'priv-replay';
DROP OWNED BY regress_es_operator, regress_es_plain;
DROP ROLE regress_es_operator, regress_es_plain;

-- Subscriptions (docs/subscriptions.md): an operator creates them and
-- handles their dead letters; a consumer can only poll, ack and nack
CREATE ROLE regress_es_sub_operator;
CREATE ROLE regress_es_consumer;
CREATE ROLE regress_es_plain;
GRANT USAGE ON SCHEMA eventstore TO regress_es_sub_operator, regress_es_consumer, regress_es_plain;
GRANT EXECUTE ON FUNCTION
	eventstore.create_subscription(text, text, text[], jsonpath, bigint, integer, text),
	eventstore.drop_subscription(text),
	eventstore.requeue_subscription_dead_letters(text, bigint[]),
	eventstore.discard_subscription_dead_letters(text, bigint[]),
	eventstore.stream_partition(text, integer)
	TO regress_es_sub_operator;
GRANT SELECT ON eventstore.subscriptions, eventstore.subscription_partitions,
	eventstore.subscription_dead_letters, eventstore.subscription_lag,
	eventstore.events TO regress_es_sub_operator;
GRANT EXECUTE ON FUNCTION
	eventstore.poll(text, integer, interval, integer),
	eventstore.ack(text, bigint, integer),
	eventstore.nack(text, bigint, text, integer)
	TO regress_es_consumer;
SELECT eventstore.read_horizon() - 1 AS ph \gset

SET ROLE regress_es_sub_operator;
SELECT eventstore.create_subscription('priv-sub', 'privsub', start_position => :ph);
SELECT eventstore.create_subscription('priv-sub-2', filter => '$.data.total > 1', partitions => 2,
	on_failure => 'park');
SELECT name, category, filter, partitions, on_failure FROM eventstore.subscriptions
WHERE name LIKE 'priv-sub%' ORDER BY name;
SELECT subscription, partition, checkpoint = :ph AS at_start FROM eventstore.subscription_partitions
WHERE subscription = 'priv-sub';
-- the tables change only through the functions
UPDATE eventstore.subscription_partitions SET checkpoint = 0;
DELETE FROM eventstore.subscription_dead_letters;
INSERT INTO eventstore.subscriptions (name, partitions, on_failure, start_position)
VALUES ('priv-direct', 1, 'skip', 0);
SELECT eventstore.drop_subscription('priv-sub-2');
RESET ROLE;

SELECT eventstore.append('privsub-1', 0, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}]');
SET ROLE regress_es_consumer;
SELECT global_position - :ph AS pos, stream_id, stream_version, event_type
FROM eventstore.poll('priv-sub');
SELECT eventstore.ack('priv-sub', :ph + 1);
SELECT eventstore.nack('priv-sub', :ph + 2, 'failed');
-- and nothing else
SELECT eventstore.create_subscription('priv-sub-3');
SELECT eventstore.drop_subscription('priv-sub');
SELECT eventstore.requeue_subscription_dead_letters('priv-sub');
SELECT eventstore.discard_subscription_dead_letters('priv-sub', '{}');
SELECT count(*) FROM eventstore.subscriptions;
SELECT count(*) FROM eventstore.subscription_partitions;
SELECT count(*) FROM eventstore.subscription_dead_letters;
SELECT count(*) FROM eventstore.subscription_lag;
SELECT count(*) FROM eventstore.events;
SELECT count(*) FROM eventstore.read_all();
UPDATE eventstore.subscription_partitions SET checkpoint = 0;
RESET ROLE;

-- the operator sees what the consumer did, and cleans up
SET ROLE regress_es_sub_operator;
SELECT partition, checkpoint - :ph AS checkpoint, failed_position - :ph AS failed, attempts, last_error
FROM eventstore.subscription_partitions WHERE subscription = 'priv-sub';
SELECT subscription, partition, behind, attempts FROM eventstore.subscription_lag
WHERE subscription = 'priv-sub';
SELECT eventstore.requeue_subscription_dead_letters('priv-sub');
SELECT eventstore.discard_subscription_dead_letters('priv-sub', '{}');
SELECT eventstore.drop_subscription('priv-sub');
-- and cannot consume
SELECT * FROM eventstore.poll('priv-sub');
RESET ROLE;

-- a role with only USAGE can do none of it
SET ROLE regress_es_plain;
SELECT eventstore.create_subscription('priv-plain');
SELECT * FROM eventstore.poll('priv-sub');
SELECT eventstore.ack('priv-sub', 1);
SELECT eventstore.nack('priv-sub', 1, 'e');
SELECT count(*) FROM eventstore.subscription_lag;
RESET ROLE;
SELECT count(*) AS left_over FROM eventstore.subscriptions WHERE name LIKE 'priv%';
DROP OWNED BY regress_es_sub_operator, regress_es_consumer, regress_es_plain;
DROP ROLE regress_es_sub_operator, regress_es_consumer, regress_es_plain;
