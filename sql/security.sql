-- Security model.  (1) Nothing that runs as the schema's owner resolves a
-- name or operator through the caller's search_path: a role with exactly the
-- documented grants shadows pg_catalog's operators and functions in a schema
-- of its own, puts it first in its search_path, calls every function, and
-- none of its shadows runs under another identity.  (2) A reducer runs as
-- its owner, never with the rights of whoever loads.

CREATE ROLE regress_es_hostile;
-- the reader's, the writer's and the operator's documented grants, together
GRANT USAGE ON SCHEMA eventstore TO regress_es_hostile;
GRANT SELECT ON ALL TABLES IN SCHEMA eventstore TO regress_es_hostile;
GRANT EXECUTE ON FUNCTION
	eventstore.stream_version(text),
	eventstore.read_stream(text, bigint, integer),
	eventstore.read_all(bigint, integer, text),
	eventstore.read_horizon(),
	eventstore.load_aggregate(text, bigint),
	eventstore.append(text, bigint, jsonb),
	eventstore.append_event(text, bigint, text, jsonb, jsonb, uuid),
	eventstore.save_snapshot(text, bigint, jsonb),
	eventstore.publish(text, text, jsonb, jsonb, text),
	eventstore.register_aggregate(text, regprocedure, integer, integer),
	eventstore.relay_status(),
	eventstore.requeue_dead_letters(bigint[]),
	eventstore.discard_dead_letters(bigint[]),
	eventstore.replay(text, text, bigint, bigint, text),
	eventstore.add_route(text, text, text),
	eventstore.remove_route(text),
	eventstore.cloudevent_headers(eventstore.events, text),
	eventstore.create_subscription(text, text, text[], jsonpath, bigint, integer, text),
	eventstore.drop_subscription(text),
	eventstore.poll(text, integer, interval, integer),
	eventstore.ack(text, bigint, integer),
	eventstore.nack(text, bigint, text, integer),
	eventstore.requeue_subscription_dead_letters(text, bigint[]),
	eventstore.discard_subscription_dead_letters(text, bigint[]),
	eventstore.stream_partition(text, integer)
	TO regress_es_hostile;
-- and a schema of its own
CREATE SCHEMA hostile AUTHORIZATION regress_es_hostile;

SET ROLE regress_es_hostile;
CREATE TABLE hostile.calls (ran_as name, what text);
-- Every shadow records who it runs as, and tries to make its role superuser
-- when it runs as someone else
CREATE FUNCTION hostile.trap(what text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog AS $$
BEGIN
	INSERT INTO hostile.calls VALUES (current_user, what);
	IF current_user OPERATOR(pg_catalog.<>) 'regress_es_hostile' THEN
		EXECUTE 'ALTER ROLE regress_es_hostile SUPERUSER';
	END IF;
END $$;
-- A shadow of every binary operator of pg_catalog between the types the
-- extension's statements use, calling the real operator's function
DO $$
DECLARE
	o record;
	n int := 0;
BEGIN
	FOR o IN
		SELECT op.oid, op.oprname, op.oprleft::regtype AS l, op.oprright::regtype AS r,
			   op.oprresult::regtype AS res, p.proname
		FROM pg_operator op JOIN pg_proc p ON p.oid = op.oprcode
		WHERE op.oprnamespace = 'pg_catalog'::regnamespace AND op.oprkind = 'b'
		  AND op.oprname IN ('=', '<>', '<', '>', '<=', '>=', '+', '-', '*', '/', '||', '?', '@>', '->', '->>')
		  AND op.oprleft IN ('text'::regtype, 'bigint'::regtype, 'integer'::regtype, 'uuid'::regtype,
			'jsonb'::regtype, 'timestamptz'::regtype, 'interval'::regtype, 'float8'::regtype,
			'boolean'::regtype, 'numeric'::regtype, 'name'::regtype, 'oid'::regtype, 'text[]'::regtype,
			'bigint[]'::regtype)
		  AND op.oprright IN ('text'::regtype, 'bigint'::regtype, 'integer'::regtype, 'uuid'::regtype,
			'jsonb'::regtype, 'timestamptz'::regtype, 'interval'::regtype, 'float8'::regtype,
			'boolean'::regtype, 'numeric'::regtype, 'name'::regtype, 'oid'::regtype, 'text[]'::regtype,
			'bigint[]'::regtype)
	LOOP
		EXECUTE format('CREATE FUNCTION hostile.op_%s(l %s, r %s) RETURNS %s LANGUAGE plpgsql AS %L',
			o.oid, o.l, o.r, o.res,
			format('BEGIN PERFORM hostile.trap(%L); RETURN pg_catalog.%I(l, r); END',
				   o.l || ' ' || o.oprname || ' ' || o.r, o.proname));
		EXECUTE format('CREATE OPERATOR hostile.%s (FUNCTION = hostile.op_%s, LEFTARG = %s, RIGHTARG = %s)',
			o.oprname, o.oid, o.l, o.r);
		n := n + 1;
	END LOOP;
	RAISE NOTICE 'shadowed % operators', n >= 100;
END $$;
-- ... and of the functions the statements call
CREATE FUNCTION hostile.now() RETURNS timestamptz LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION hostile.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION hostile.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('unnest(bigint[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION hostile.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION hostile.unnest(a uuid[]) RETURNS SETOF uuid LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('unnest(uuid[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION hostile.unnest(a jsonb[]) RETURNS SETOF jsonb LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('unnest(jsonb[])'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
CREATE FUNCTION hostile.replace(a text, b text, c text) RETURNS text LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('replace'); RETURN pg_catalog.replace(a, b, c); END $$;
CREATE FUNCTION hostile.split_part(a text, b text, c int) RETURNS text LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('split_part'); RETURN pg_catalog.split_part(a, b, c); END $$;
CREATE FUNCTION hostile.jsonb_typeof(a jsonb) RETURNS text LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('jsonb_typeof'); RETURN pg_catalog.jsonb_typeof(a); END $$;
CREATE FUNCTION hostile.gen_random_uuid() RETURNS uuid LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('gen_random_uuid'); RETURN pg_catalog.gen_random_uuid(); END $$;
CREATE FUNCTION hostile.pg_sequence_last_value(a regclass) RETURNS bigint LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('pg_sequence_last_value'); RETURN pg_catalog.pg_sequence_last_value(a); END $$;
CREATE FUNCTION hostile.ceil(a float8) RETURNS float8 LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('ceil'); RETURN pg_catalog.ceil(a); END $$;
CREATE FUNCTION hostile.date_part(a text, b timestamptz) RETURNS float8 LANGUAGE plpgsql AS
	$$ BEGIN PERFORM hostile.trap('date_part'); RETURN pg_catalog.date_part(a, b); END $$;
-- the hostile role's own reducer, registered through its grant
CREATE FUNCTION hostile.reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT to_jsonb(coalesce((state ->> 'n')::int, 0)) $$;

SET search_path = hostile, pg_catalog;
-- the shadows work: called here, they run as the hostile role itself
SELECT 1::bigint = 1::bigint AS shadowed, now() IS NOT NULL AS also;
SELECT count(*) > 0 AS shadows_ran, bool_and(ran_as = 'regress_es_hostile') AS as_itself FROM hostile.calls;
TRUNCATE hostile.calls;
RESET search_path;
RESET ROLE;

-- a dead letter to requeue (the issue's reproduction used replay, then requeue)
INSERT INTO eventstore.dead_letters (outbox_id, topic, message_key, payload, headers,
	created_at, attempts, last_error, first_failed_at, last_failed_at)
VALUES (1, 'sec-topic', 'sec-1', '{}', '{}', now(), 1, 'e', now(), now());

SET ROLE regress_es_hostile;
SET search_path = hostile, pg_catalog;
SELECT eventstore.add_route('sec', 'sec-topic');
SELECT eventstore.append('sec-1', 0, '[{"type": "A", "data": {"n": 1}}, {"type": "B", "data": {}}]');
SELECT eventstore.append('sec-1', 2, '{"type": "C", "data": {}, "id": "6e4d3f08-3d2a-4f55-9a43-2e0d1e3a1c01"}');
SELECT eventstore.append('sec-1', 2, '{"type": "C", "data": {}, "id": "6e4d3f08-3d2a-4f55-9a43-2e0d1e3a1c01"}');
SELECT eventstore.append_event('sec-1', NULL, 'D', '{}');
SELECT eventstore.append_event('sec-1', 1, 'E', '{}');
SELECT eventstore.append_event('sec-2', NULL, 'F', '{}', '{"correlation_id": "c"}',
	'0b0c5e7e-6f4b-4b8e-9d3c-3c7a1d0e9f02');
SELECT eventstore.register_aggregate('sec', 'hostile.reducer(jsonb, eventstore.events)', 1);
SELECT version, state FROM eventstore.load_aggregate('sec-1');
SELECT eventstore.save_snapshot('sec-1', 2, '{"n": 2}');
SELECT eventstore.publish('sec-topic', 'sec-k', '{"x": 1}', '{"h": "v"}') > 0 AS published;
SELECT eventstore.replay('sec-replay', 'sec') > 0 AS replayed;
SELECT eventstore.replay('sec-replay', NULL, 0, 3) > 0 AS replayed;
SELECT eventstore.requeue_dead_letters() AS requeued;
SELECT eventstore.discard_dead_letters('{1,2}');
SELECT state IS NOT NULL AS status FROM eventstore.relay_status();
SELECT eventstore.read_horizon() > 0 AS horizon;
SELECT count(*) FROM eventstore.read_all(0, 100, 'sec');
SELECT count(*) FROM eventstore.read_stream('sec-1');
SELECT eventstore.stream_version('sec-1');
SELECT (eventstore.cloudevent_headers(e, '/src') OPERATOR(pg_catalog.->>) 'ce_type') AS ce_type
FROM eventstore.events e WHERE e.stream_id OPERATOR(pg_catalog.=) 'sec-2';
SELECT eventstore.remove_route('sec');
-- the statements of the other sinks, under the same hostile search_path
SELECT eventstore.add_route('sec', 'sec-exchange', 'rabbitmq');
SELECT eventstore.append_event('sec-4', NULL, 'H', '{}');
SELECT eventstore.publish('sec-topic', 'sec-k', '{"x": 2}', NULL, 'nats') > 0 AS published;
SELECT eventstore.replay('sec-replay', 'sec', sink => 'nats') > 0 AS replayed;
SELECT sink, count(*) FROM eventstore.outbox_lag GROUP BY sink ORDER BY sink;
SELECT sink, state IS NOT NULL AS status FROM eventstore.relay_status() ORDER BY sink;
SELECT eventstore.remove_route('sec');
-- subscriptions: selection by category, event types and filter, partitions,
-- ack, nack, dead letters (a filter that fails on sec-3's event), requeue,
-- discard, the lag view and drop
SELECT eventstore.append_event('sec-3', NULL, 'G', '{"n": "x"}');
SELECT eventstore.create_subscription('sec-sub', 'sec', NULL, '$.data.n >= 1', 0, 2, 'skip');
SELECT eventstore.create_subscription('sec-park', 'sec', '{A,C,D,G}', NULL, 0, 1, 'park');
SELECT count(*) FROM eventstore.poll('sec-sub', 100, '0', 0);
SELECT count(*) FROM eventstore.poll('sec-sub', 100, '0', 1);
SELECT count(*) FROM eventstore.poll('sec-sub', 100, '1 ms');
SELECT stream_id, attempts FROM eventstore.subscription_dead_letters;
SELECT eventstore.ack('sec-sub', (SELECT max(global_position) FROM eventstore.events), 0);
SELECT eventstore.ack('sec-sub', (SELECT max(global_position) FROM eventstore.events), 1);
SELECT eventstore.requeue_subscription_dead_letters('sec-sub');
SELECT stream_id FROM eventstore.poll('sec-sub', 10, '0',
	(SELECT partition FROM eventstore.subscription_dead_letters));
SELECT eventstore.nack('sec-sub', (SELECT event_position FROM eventstore.subscription_dead_letters),
	'again');
SELECT stream_id, last_error, requeued_at IS NULL AS back FROM eventstore.subscription_dead_letters;
SELECT eventstore.discard_subscription_dead_letters('sec-sub',
	ARRAY(SELECT id FROM eventstore.subscription_dead_letters));
SELECT count(*) FROM eventstore.poll('sec-park');
SELECT eventstore.ack('sec-park', (SELECT min(global_position) FROM eventstore.events
	WHERE stream_id = 'sec-1'));
SELECT eventstore.nack('sec-park', (SELECT global_position FROM eventstore.events
	WHERE stream_id = 'sec-1' AND event_type = 'C'), 'e');
SELECT subscription, partition, behind, attempts FROM eventstore.subscription_lag ORDER BY 1, 2;
SELECT eventstore.drop_subscription('sec-sub');
SELECT eventstore.drop_subscription('sec-park');
RESET search_path;
RESET ROLE;

-- none of the shadows ran as anyone but the hostile role, which is no superuser
SELECT ran_as, what FROM hostile.calls WHERE ran_as <> 'regress_es_hostile';
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_es_hostile';

-- (2) Reducers run as their owner.  One that tries to make its owner
-- superuser when a superuser loads, and reports who it ran as
CREATE ROLE regress_es_reducer_owner;
GRANT USAGE, CREATE ON SCHEMA hostile TO regress_es_reducer_owner;
GRANT USAGE ON SCHEMA eventstore TO regress_es_reducer_owner;
SET ROLE regress_es_reducer_owner;
CREATE FUNCTION hostile.greedy(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	outcome text := 'escalated';
BEGIN
	BEGIN
		EXECUTE 'ALTER ROLE regress_es_reducer_owner SUPERUSER';
	EXCEPTION WHEN OTHERS THEN
		outcome := SQLSTATE;
	END;
	RETURN jsonb_build_object('ran_as', current_user, 'outcome', outcome,
		'search_path', current_setting('search_path'));
END $$;
RESET ROLE;
SELECT eventstore.append_event('greedy-1', 0, 'A', '{}');
SELECT eventstore.register_aggregate('greedy', 'hostile.greedy(jsonb, eventstore.events)');
SET search_path = hostile, public;
SELECT state FROM eventstore.load_aggregate('greedy-1');
RESET search_path;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_es_reducer_owner';
-- the signature and strictness are checked again at load
ALTER FUNCTION hostile.greedy(jsonb, eventstore.events) STRICT;
SELECT state FROM eventstore.load_aggregate('greedy-1');
DROP FUNCTION hostile.greedy(jsonb, eventstore.events);
DO $$ BEGIN PERFORM eventstore.load_aggregate('greedy-1');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'dropped reducer: %', SQLSTATE; END $$;

-- only a reducer's owner may register it (it will run as that owner for
-- every loader), and not from a temporary schema
CREATE FUNCTION public.admin_reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
GRANT EXECUTE ON FUNCTION public.admin_reducer(jsonb, eventstore.events) TO regress_es_reducer_owner;
GRANT EXECUTE ON FUNCTION eventstore.register_aggregate(text, regprocedure, integer, integer)
	TO regress_es_reducer_owner;
SET ROLE regress_es_reducer_owner;
SELECT eventstore.register_aggregate('greedy', 'public.admin_reducer(jsonb, eventstore.events)');
RESET ROLE;
DROP FUNCTION public.admin_reducer(jsonb, eventstore.events);
CREATE FUNCTION pg_temp.temp_reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
DO $$ BEGIN PERFORM eventstore.register_aggregate('greedy', 'pg_temp.temp_reducer(jsonb, eventstore.events)');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'temporary reducer: %', SQLSTATE; END $$;

-- a reducer cannot close load_aggregate's cursor (that crashed the server)
CREATE FUNCTION hostile.closer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	c refcursor;
BEGIN
	FOR i IN 1..100 LOOP
		c := '<unnamed portal ' || i || '>';
		BEGIN
			CLOSE c;
		EXCEPTION WHEN invalid_cursor_name THEN
		END;
	END LOOP;
	RETURN '{}';
END $$;
SELECT eventstore.register_aggregate('closer', 'hostile.closer(jsonb, eventstore.events)');
SELECT eventstore.append('closer-1', 0, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}]');
DO $$ BEGIN PERFORM eventstore.load_aggregate('closer-1');
EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'closing the cursor: %', SQLSTATE; END $$;
SELECT 1 AS still_connected;

-- clean up
DELETE FROM eventstore.aggregates WHERE category IN ('sec', 'greedy', 'closer');
DELETE FROM eventstore.outbox;
SET client_min_messages = warning;
DROP SCHEMA hostile CASCADE;
RESET client_min_messages;
DROP OWNED BY regress_es_hostile, regress_es_reducer_owner;
DROP ROLE regress_es_hostile, regress_es_reducer_owner;
