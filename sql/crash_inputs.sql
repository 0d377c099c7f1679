-- Every SQL-callable C function of the extension with hostile arguments:
-- NULL in each position, empty and huge values, INT64 extremes, odd arrays
-- and rows built by hand.  None may crash the server or answer XX000
-- (internal error): each call shows 'ok' or its SQLSTATE and message.
--
-- probe(sql) runs one call in a subtransaction that is always rolled back
-- (a call that succeeded is undone by raising ESOK0), and stops the whole
-- file on an XX000.  Everything else happens in one transaction that is
-- rolled back at the end, so later test files see nothing of this one.
BEGIN;
CREATE FUNCTION pg_temp.probe(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	state text;
	msg text;
BEGIN
	BEGIN
		EXECUTE sql;
		RAISE SQLSTATE 'ESOK0';
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
	END;
	IF state = 'ESOK0' THEN
		RETURN 'ok';
	END IF;
	IF state = 'XX000' THEN
		RAISE EXCEPTION 'internal error (XX000) from %: %', left(sql, 200), msg;
	END IF;
	-- the head depends on what earlier test files appended
	RETURN state || ': ' || left(regexp_replace(msg, 'the head (\(?)\d+', 'the head \1N'), 100);
END
$$;
-- incompressible text of n characters (md5 hex), and a 1 MB jsonb object
CREATE FUNCTION pg_temp.noise(n int) RETURNS text LANGUAGE sql AS
	$$SELECT left(string_agg(md5(i::text), ''), n) FROM generate_series(1, n / 32 + 1) i$$;
CREATE FUNCTION pg_temp.mb() RETURNS jsonb LANGUAGE sql AS
	$$SELECT jsonb_object_agg('k' || i, repeat('v', 100)) FROM generate_series(1, 10000) i$$;
SELECT pg_column_size(pg_temp.mb()) > 1000000 AS one_mb;
-- a stream with one event, for the calls that need one
SELECT eventstore.append('crash-1', 0, '{"type": "A", "data": 1}');
\pset format unaligned

-- append(stream_id, expected_version, events)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.append(NULL, NULL, NULL)$$,
	$$SELECT eventstore.append('crash-2', NULL, NULL)$$,
	$$SELECT eventstore.append(NULL, 0, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-2', NULL, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('', 0, '{}')$$,
	$$SELECT eventstore.append('crash-2', 0, '{}')$$,
	$$SELECT eventstore.append('crash-2', 0, '[]')$$,
	$$SELECT eventstore.append('crash-2', 0, '[[]]')$$,
	$$SELECT eventstore.append('crash-2', 0, '[{}]')$$,
	$$SELECT eventstore.append('crash-2', 0, 'null')$$,
	$$SELECT eventstore.append('crash-2', 0, '{"type": null, "data": null}')$$,
	$$SELECT eventstore.append('crash-2', 0, '{"type": "A", "data": null, "metadata": {}}')$$,
	$$SELECT eventstore.append('crash-2', 0, '{"type": "A", "data": 1, "id": ""}')$$,
	$$SELECT eventstore.append('crash-2', 0, '{"type": "A", "data": 1, "id": null}')$$,
	$$SELECT eventstore.append('crash-2', 0, '{"type": {"a": 1}, "data": 1}')$$,
	$$SELECT eventstore.append('crash-2', 9223372036854775807, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-2', -9223372036854775808, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-1', 9223372036854775807, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append(repeat('x', 10000), 0, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append(pg_temp.noise(10000), 0, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-' || pg_temp.noise(2700), 0, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-' || repeat('x', 1018), 0, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-' || repeat('x', 1019), 0, '{"type": "A", "data": 1}')$$,
	$$SELECT eventstore.append('crash-2', 0, jsonb_build_object('type', repeat('t', 10000), 'data', pg_temp.mb()))$$,
	$$SELECT eventstore.append('crash-2', 0, jsonb_build_object('type', 'A', 'data', 1, 'metadata', pg_temp.mb()))$$,
	$$SELECT eventstore.append('crash-2', 0, (SELECT jsonb_agg(jsonb_build_object('type', 'A', 'data', i)) FROM generate_series(1, 10000) i))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- append_event(stream_id, expected_version, event_type, data, metadata, event_id)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.append_event(NULL, NULL, NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.append_event('crash-2', NULL, NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.append_event('crash-2', NULL, 'A', NULL, NULL, NULL)$$,
	$$SELECT eventstore.append_event('crash-2', NULL, NULL, '1', NULL, NULL)$$,
	$$SELECT eventstore.append_event('crash-2', NULL, 'A', '1', NULL, NULL)$$,
	$$SELECT eventstore.append_event('', 0, '', 'null', '{}', NULL)$$,
	$$SELECT eventstore.append_event('crash-2', 0, '', '{}')$$,
	$$SELECT eventstore.append_event('crash-2', 0, 'A', '{}', 'null')$$,
	$$SELECT eventstore.append_event('crash-2', 0, 'A', '{}', '"s"')$$,
	$$SELECT eventstore.append_event('crash-2', 0, 'A', '{}', '[]')$$,
	$$SELECT eventstore.append_event('crash-2', 0, 'A', '{}', '{}', '00000000-0000-0000-0000-000000000000')$$,
	$$SELECT eventstore.append_event('crash-2', 9223372036854775807, 'A', '1')$$,
	$$SELECT eventstore.append_event('crash-2', -9223372036854775808, 'A', '1')$$,
	$$SELECT eventstore.append_event(pg_temp.noise(10000), 0, 'A', '1')$$,
	$$SELECT eventstore.append_event('crash-2', 0, repeat('t', 10000), pg_temp.mb(), pg_temp.mb())$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- read_horizon() and relay_status(): no arguments
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.read_horizon()$$,
	$$SELECT * FROM eventstore.relay_status()$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- load_aggregate(stream_id, as_of_version)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT * FROM eventstore.load_aggregate(NULL, NULL)$$,
	$$SELECT * FROM eventstore.load_aggregate('crash-1', NULL)$$,
	$$SELECT * FROM eventstore.load_aggregate('', 0)$$,
	$$SELECT * FROM eventstore.load_aggregate('crash-1', 0)$$,
	$$SELECT * FROM eventstore.load_aggregate('crash-1', 9223372036854775807)$$,
	$$SELECT * FROM eventstore.load_aggregate('crash-1', -9223372036854775808)$$,
	$$SELECT * FROM eventstore.load_aggregate(repeat('x', 10000))$$,
	$$SELECT * FROM eventstore.load_aggregate(pg_temp.noise(10000))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- save_snapshot(stream_id, version, state)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.save_snapshot(NULL, NULL, NULL)$$,
	$$SELECT eventstore.save_snapshot('crash-1', NULL, NULL)$$,
	$$SELECT eventstore.save_snapshot('crash-1', 1, NULL)$$,
	$$SELECT eventstore.save_snapshot('crash-1', NULL, '{}')$$,
	$$SELECT eventstore.save_snapshot(NULL, 1, '{}')$$,
	$$SELECT eventstore.save_snapshot('', 1, '{}')$$,
	$$SELECT eventstore.save_snapshot('crash-1', 1, 'null')$$,
	$$SELECT eventstore.save_snapshot('crash-1', 1, '[]')$$,
	$$SELECT eventstore.save_snapshot('crash-1', 1, pg_temp.mb())$$,
	$$SELECT eventstore.save_snapshot('crash-1', 9223372036854775807, '{}')$$,
	$$SELECT eventstore.save_snapshot('crash-1', -9223372036854775808, '{}')$$,
	$$SELECT eventstore.save_snapshot(pg_temp.noise(10000), 1, '{}')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- register_aggregate(category, reducer, snapshot_every, revision)
CREATE FUNCTION public.crash_reducer(state jsonb, event eventstore.events) RETURNS jsonb
	LANGUAGE sql AS 'SELECT state';
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.register_aggregate(NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.register_aggregate('crash', NULL, NULL, NULL)$$,
	$$SELECT eventstore.register_aggregate('crash', 'public.crash_reducer(jsonb, eventstore.events)', NULL, 1)$$,
	$$SELECT eventstore.register_aggregate('crash', 'public.crash_reducer(jsonb, eventstore.events)', 1, NULL)$$,
	$$SELECT eventstore.register_aggregate('', 'public.crash_reducer(jsonb, eventstore.events)')$$,
	$$SELECT eventstore.register_aggregate('crash', 0)$$,
	$$SELECT eventstore.register_aggregate('crash', 0::oid::regprocedure)$$,
	$$SELECT eventstore.register_aggregate('crash', 4294967295::oid::regprocedure)$$,
	$$SELECT eventstore.register_aggregate('crash', 'public.crash_reducer(jsonb, eventstore.events)', 2147483647, 2147483647)$$,
	$$SELECT eventstore.register_aggregate('crash', 'public.crash_reducer(jsonb, eventstore.events)', -2147483648, 1)$$,
	$$SELECT eventstore.register_aggregate(repeat('x', 10000), 'public.crash_reducer(jsonb, eventstore.events)')$$,
	$$SELECT eventstore.register_aggregate(pg_temp.noise(10000), 'public.crash_reducer(jsonb, eventstore.events)')$$,
	$$SELECT eventstore.register_aggregate('crash', 'pg_catalog.sum(int4)')$$,
	$$SELECT eventstore.register_aggregate('crash', 'public.crash_reducer(jsonb, eventstore.events)')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- routes_changed(): a trigger function, called directly and from triggers
-- it was not made for (a BEFORE ROW trigger returning NULL skips the row: 22012 below)
CREATE TEMP TABLE crash_rows (x int);
CREATE TRIGGER crash_before BEFORE INSERT ON crash_rows
	FOR EACH ROW EXECUTE FUNCTION eventstore.routes_changed();
CREATE TEMP TABLE crash_after (x int);
CREATE TRIGGER crash_after AFTER INSERT ON crash_after
	FOR EACH STATEMENT EXECUTE FUNCTION eventstore.routes_changed();
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.routes_changed()$$,
	$$WITH i AS (INSERT INTO crash_rows VALUES (1) RETURNING x) SELECT 1 / (SELECT count(*) FROM i)::int$$,
	$$WITH i AS (INSERT INTO crash_after VALUES (1) RETURNING x) SELECT 1 / (SELECT count(*) FROM i)::int$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- publish(topic, key, payload, headers)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.publish(NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.publish('t', NULL, NULL, NULL)$$,
	$$SELECT eventstore.publish('', '', 'null', '{}')$$,
	$$SELECT eventstore.publish('t', '', '{}', '{}')$$,
	$$SELECT eventstore.publish('t', 'k', '[]', '[]')$$,
	$$SELECT eventstore.publish('t', 'k', '1', '"h"')$$,
	$$SELECT eventstore.publish('t', 'k', '1', 'null')$$,
	$$SELECT eventstore.publish('t', 'k', '1', '{"h": null}')$$,
	$$SELECT eventstore.publish('t', 'k', '1', '{"h": {"x": "y"}}')$$,
	$$SELECT eventstore.publish('t', 'k', '1', '{"eventstore-outbox-id": "1"}')$$,
	$$SELECT eventstore.publish(repeat('t', 10000), 'k', '1')$$,
	$$SELECT eventstore.publish(repeat('t', 249), 'k', '1')$$,
	$$SELECT eventstore.publish('t', repeat('k', 10000), '1')$$,
	$$SELECT eventstore.publish('t', pg_temp.noise(2700), '1')$$,
	$$SELECT eventstore.publish('t', repeat('k', 1024), '1')$$,
	$$SELECT eventstore.publish('t', repeat('k', 1025), '1')$$,
	$$SELECT eventstore.publish('t', 'k', pg_temp.mb(), (SELECT jsonb_object_agg('h' || i, repeat('v', 100)) FROM generate_series(1, 10000) i))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- add_route(category, topic) and remove_route(category)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.add_route(NULL, NULL)$$,
	$$SELECT eventstore.add_route('crash', NULL)$$,
	$$SELECT eventstore.add_route('', '')$$,
	$$SELECT eventstore.add_route('crash', '')$$,
	$$SELECT eventstore.add_route('*', 't')$$,
	$$SELECT eventstore.add_route(repeat('x', 10000), 't')$$,
	$$SELECT eventstore.add_route(pg_temp.noise(10000), 't')$$,
	$$SELECT eventstore.add_route('crash', repeat('t', 10000))$$,
	$$SELECT eventstore.remove_route(NULL)$$,
	$$SELECT eventstore.remove_route('')$$,
	$$SELECT eventstore.remove_route('crash')$$,
	$$SELECT eventstore.remove_route(repeat('x', 10000))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- requeue_dead_letters(ids) and discard_dead_letters(ids)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.requeue_dead_letters(NULL)$$,
	$$SELECT eventstore.requeue_dead_letters('{}')$$,
	$$SELECT eventstore.requeue_dead_letters(ARRAY[NULL]::bigint[])$$,
	$$SELECT eventstore.requeue_dead_letters(ARRAY[1, NULL])$$,
	$$SELECT eventstore.requeue_dead_letters('{{1,2},{3,4}}')$$,
	$$SELECT eventstore.requeue_dead_letters('[5:6]={1,2}')$$,
	$$SELECT eventstore.requeue_dead_letters(ARRAY[9223372036854775807, -9223372036854775808])$$,
	$$SELECT eventstore.requeue_dead_letters(ARRAY(SELECT generate_series(1, 100000)::bigint))$$,
	$$SELECT eventstore.discard_dead_letters(NULL)$$,
	$$SELECT eventstore.discard_dead_letters('{}')$$,
	$$SELECT eventstore.discard_dead_letters(ARRAY[NULL]::bigint[])$$,
	$$SELECT eventstore.discard_dead_letters('{{1,2},{3,4}}')$$,
	$$SELECT eventstore.discard_dead_letters(ARRAY[9223372036854775807, -9223372036854775808])$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- replay(topic, category, from_position, to_position)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.replay(NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.replay('t', NULL, NULL, NULL)$$,
	$$SELECT eventstore.replay('', '', 0, 0)$$,
	$$SELECT eventstore.replay('t', '', 0, 0)$$,
	$$SELECT eventstore.replay('t', 'a-b', 0, 0)$$,
	$$SELECT eventstore.replay('t', repeat('x', 10000))$$,
	$$SELECT eventstore.replay('t', NULL, 9223372036854775807)$$,
	$$SELECT eventstore.replay('t', NULL, -9223372036854775808)$$,
	$$SELECT eventstore.replay('t', NULL, 0, 9223372036854775807)$$,
	$$SELECT eventstore.replay('t', NULL, 0, -9223372036854775808)$$,
	$$SELECT eventstore.replay('t', NULL, 9223372036854775807, 9223372036854775807)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- cloudevent_headers(e, source) with rows built by hand; the columns are
-- (global_position, stream_id, stream_version, event_id, event_type, data,
-- metadata, recorded_at, category)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.cloudevent_headers(NULL, NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', NULL, '{}', now(), NULL), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(NULL, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, NULL, 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', NULL, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, NULL, 't', '{}', '{}', now(), 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', NULL, '{}', '{}', now(), 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', NULL, now(), 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', NULL, 'x'), 'src')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '["zzzzzzzz","xxxxxxxxxxxxco","rrelation_id"]', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '[]', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '"correlation_id"', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '42', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', 'null', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', 'true', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', '', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, '', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), ''), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 0, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', -9223372036854775808, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(0, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(-9223372036854775808, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(9223372036854775807, 'x-1', 9223372036854775807, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', 'infinity', 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', '-infinity', 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', '4713-01-01 00:00 BC', 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', '0001-01-01 00:00:00+00 BC', 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', '9999-12-31 23:59:59.999999+00', 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', '10000-01-01 00:00:00+00', 'x'), NULL)$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), '')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), 'my source')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), E'/a\nb')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), '/a%zz')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, 'x-1', 1, '11111111-1111-4111-8111-111111111111', 't', '{}', '{}', now(), 'x'), 'https://example.com/a%20b?x=1#f')$$,
	$$SELECT eventstore.cloudevent_headers(ROW(1, repeat('x', 10000), 1, '11111111-1111-4111-8111-111111111111', repeat('t', 10000), '{}', jsonb_build_object('correlation_id', repeat('c', 10000)) || pg_temp.mb(), now(), 'x'), repeat('s', 10000))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- the subscription functions, on two subscriptions made for them (rolled
-- back with the rest); a filter that fails on crash-1's event
SELECT eventstore.create_subscription('crash-sub', filter => '$.data.x > 1', start_position => 0)
	IS NULL AS created;
SELECT eventstore.create_subscription('crash-sub4', 'crash', partitions => 4, on_failure => 'park')
	IS NULL AS created;
-- create_subscription(name, category, event_types, filter, start_position, partitions, on_failure)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.create_subscription(NULL, NULL, NULL, NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, NULL, 0, NULL, 'skip')$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, NULL, 0, 1, NULL)$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, NULL, NULL, 1, 'skip')$$,
	$$SELECT eventstore.create_subscription('', '', '{}', NULL, 0, 1, '')$$,
	$$SELECT eventstore.create_subscription('c', '', NULL)$$,
	$$SELECT eventstore.create_subscription('c', repeat('x', 10000))$$,
	$$SELECT eventstore.create_subscription('c', pg_temp.noise(10000))$$,
	$$SELECT eventstore.create_subscription('c', NULL, '{NULL}')$$,
	$$SELECT eventstore.create_subscription('c', NULL, '{""}')$$,
	$$SELECT eventstore.create_subscription('c', NULL, '{{a,b},{c,d}}')$$,
	$$SELECT eventstore.create_subscription('c', NULL, '[5:6]={a,b}')$$,
	$$SELECT eventstore.create_subscription('c', NULL, ARRAY[repeat('t', 10000)])$$,
	$$SELECT eventstore.create_subscription('c', NULL, ARRAY(SELECT 't' || i FROM generate_series(1, 100000) i))$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, '$')$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, '$.a')$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, 'strict $.a == 1')$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, '$.a like_regex "(" ')$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, '$.a == $x')$$,
	$$SELECT eventstore.create_subscription('c', NULL, NULL, ('$.a == "' || repeat('x', 100000) || '"')::jsonpath)$$,
	$$SELECT eventstore.create_subscription('c', start_position => 9223372036854775807)$$,
	$$SELECT eventstore.create_subscription('c', start_position => -9223372036854775808)$$,
	$$SELECT eventstore.create_subscription('c', partitions => 2147483647)$$,
	$$SELECT eventstore.create_subscription('c', partitions => -2147483648)$$,
	$$SELECT eventstore.create_subscription('c', partitions => 1024)$$,
	$$SELECT eventstore.create_subscription('c', on_failure => 'SKIP')$$,
	$$SELECT eventstore.create_subscription('c', on_failure => repeat('p', 10000))$$,
	$$SELECT eventstore.create_subscription(repeat('n', 10000))$$,
	$$SELECT eventstore.create_subscription(pg_temp.noise(10000))$$,
	$$SELECT eventstore.create_subscription(E'a\\0b')$$,
	$$SELECT eventstore.create_subscription('crash-sub')$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- drop_subscription(name) and stream_partition(stream_id, partitions)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.drop_subscription(NULL)$$,
	$$SELECT eventstore.drop_subscription('')$$,
	$$SELECT eventstore.drop_subscription(repeat('n', 10000))$$,
	$$SELECT eventstore.drop_subscription('crash-sub')$$,
	$$SELECT eventstore.stream_partition(NULL, NULL)$$,
	$$SELECT eventstore.stream_partition('', 1)$$,
	$$SELECT eventstore.stream_partition('x', 0)$$,
	$$SELECT eventstore.stream_partition('x', -1)$$,
	$$SELECT eventstore.stream_partition('x', -2147483648)$$,
	$$SELECT eventstore.stream_partition('x', 2147483647)$$,
	$$SELECT eventstore.stream_partition(pg_temp.noise(100000), 1024)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- poll(subscription, max_count, wait, partition)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT * FROM eventstore.poll(NULL, NULL, NULL, NULL)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', NULL, NULL, NULL)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, NULL, NULL)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', NULL, '0', NULL)$$,
	$$SELECT * FROM eventstore.poll('', 1)$$,
	$$SELECT * FROM eventstore.poll(repeat('n', 10000))$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 0)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 2147483647)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', -2147483648)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '1 us')$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '-1 day 86400.000001 s')$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '-178000000 years')$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '1 month -30 days -1 us')$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '-1 us')$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '0', 0)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '0', 1)$$,
	$$SELECT * FROM eventstore.poll('crash-sub', 1, '0', -2147483648)$$,
	$$SELECT * FROM eventstore.poll('crash-sub4', 1, '0', 2147483647)$$,
	$$SELECT * FROM eventstore.poll('crash-sub4', 1, '0', 3)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- ack(subscription, position, partition) and nack(subscription, position, error, partition)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.ack(NULL, NULL, NULL)$$,
	$$SELECT eventstore.ack('crash-sub', NULL, NULL)$$,
	$$SELECT eventstore.ack(NULL, 1, NULL)$$,
	$$SELECT eventstore.ack('', 1)$$,
	$$SELECT eventstore.ack(repeat('n', 10000), 1)$$,
	$$SELECT eventstore.ack('crash-sub', 0)$$,
	$$SELECT eventstore.ack('crash-sub', 0, 0)$$,
	$$SELECT eventstore.ack('crash-sub', 9223372036854775807)$$,
	$$SELECT eventstore.ack('crash-sub', -9223372036854775808)$$,
	$$SELECT eventstore.ack('crash-sub', 0, 2147483647)$$,
	$$SELECT eventstore.ack('crash-sub', 0, -2147483648)$$,
	$$SELECT eventstore.ack('crash-sub4', 9223372036854775807, NULL)$$,
	$$SELECT eventstore.ack('crash-sub4', -1, 3)$$,
	$$SELECT eventstore.nack(NULL, NULL, NULL, NULL)$$,
	$$SELECT eventstore.nack('crash-sub', NULL, NULL, NULL)$$,
	$$SELECT eventstore.nack('crash-sub', 1, NULL, NULL)$$,
	$$SELECT eventstore.nack('crash-sub', NULL, 'e', NULL)$$,
	$$SELECT eventstore.nack('', 1, '')$$,
	$$SELECT eventstore.nack('crash-sub', 0, 'e')$$,
	$$SELECT eventstore.nack('crash-sub', 9223372036854775807, 'e')$$,
	$$SELECT eventstore.nack('crash-sub', -9223372036854775808, 'e')$$,
	$$SELECT eventstore.nack('crash-sub', 1, 'e', 2147483647)$$,
	$$SELECT eventstore.nack('crash-sub', 1, 'e', -2147483648)$$,
	$$SELECT eventstore.nack('crash-sub', 1, repeat('e', 1000000))$$,
	$$SELECT eventstore.nack('crash-sub', 1, pg_temp.noise(100000))$$,
	$$SELECT eventstore.nack('crash-sub4', 9223372036854775807, '', NULL)$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

-- requeue_subscription_dead_letters(subscription, ids) and
-- discard_subscription_dead_letters(subscription, ids)
SELECT n, call, pg_temp.probe(call) FROM unnest(ARRAY[
	$$SELECT eventstore.requeue_subscription_dead_letters(NULL, NULL)$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', NULL)$$,
	$$SELECT eventstore.requeue_subscription_dead_letters(NULL, '{1}')$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('', '{}')$$,
	$$SELECT eventstore.requeue_subscription_dead_letters(repeat('n', 10000), '{}')$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', '{}')$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', ARRAY[NULL]::bigint[])$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', ARRAY[1, NULL])$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', '{{1,2},{3,4}}')$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', '[5:6]={1,2}')$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', ARRAY[9223372036854775807, -9223372036854775808])$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub', ARRAY(SELECT generate_series(1, 100000)::bigint))$$,
	$$SELECT eventstore.requeue_subscription_dead_letters('crash-sub4', NULL)$$,
	$$SELECT eventstore.discard_subscription_dead_letters(NULL, NULL)$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub', NULL)$$,
	$$SELECT eventstore.discard_subscription_dead_letters(NULL, '{1}')$$,
	$$SELECT eventstore.discard_subscription_dead_letters('', '{}')$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub', '{}')$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub', ARRAY[NULL]::bigint[])$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub', '{{1,2},{3,4}}')$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub', '[5:6]={1,2}')$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub', ARRAY[9223372036854775807, -9223372036854775808])$$,
	$$SELECT eventstore.discard_subscription_dead_letters('crash-sub4', ARRAY(SELECT generate_series(1, 100000)::bigint))$$
]) WITH ORDINALITY AS c(call, n) ORDER BY n;

\pset format aligned
ROLLBACK;
-- nothing is left behind
SELECT count(*) AS crash_streams FROM eventstore.streams WHERE stream_id LIKE 'crash%';
