-- Subscriptions: create/drop, selection (category, event types, jsonpath
-- filter), start positions, partitions and their leases, ack and nack,
-- retries and dead letters (skip and park), requeue and discard, the lag
-- view, and every bad input of the contract with its SQLSTATE.
--
-- Positions are shown relative to :h0, the head when this file starts (the
-- files before this one wrote events too).  Nothing here depends on timing:
-- polls do not wait (except one that only checks it comes back), and a
-- retry "falls due" by moving its next_attempt_at into the past.

-- nothing is open: the head is the last position taken
SELECT eventstore.read_horizon() - 1 AS h0 \gset
SELECT set_config('regress.h0', :'h0', false) IS NOT NULL AS h0_set;
-- try(sql) runs one statement and shows its SQLSTATE and message, with
-- the positions in it (numbers from h0 on, the files before this one wrote
-- some 10000) written as h0+n
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	h0 numeric := current_setting('regress.h0')::numeric;
	state text;
	msg text;
BEGIN
	BEGIN
		EXECUTE sql;
		RETURN 'no error';
	EXCEPTION WHEN OTHERS THEN
		state := SQLSTATE;
		msg := SQLERRM;
	END;
	RETURN state || ': ' || string_agg(CASE WHEN t[1] ~ '^[0-9]{4,12}$'
		AND t[1]::numeric >= greatest(h0, 2000) THEN 'h0+' || (t[1]::numeric - h0) ELSE t[1] END, '' ORDER BY n)
		   FROM regexp_matches(msg, '[0-9]+|[^0-9]+', 'g') WITH ORDINALITY AS m(t, n);
END
$$;
-- everything the subscription tables hold, and the leases this backend
-- holds, as one value: the same before and after a failing call
CREATE FUNCTION pg_temp.state() RETURNS text LANGUAGE sql AS $$
	SELECT md5(concat_ws('|',
		(SELECT string_agg(s::text, ',' ORDER BY s.name) FROM eventstore.subscriptions s),
		(SELECT string_agg(p::text, ',' ORDER BY p.subscription, p.partition)
		 FROM eventstore.subscription_partitions p),
		(SELECT string_agg(d::text, ',' ORDER BY d.id) FROM eventstore.subscription_dead_letters d),
		(SELECT count(*) FROM eventstore.events),
		(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 17747
		   AND pid = pg_backend_pid())))
$$;
-- a partition's row, positions relative to h0
CREATE FUNCTION pg_temp.parts(sub text, h0 bigint)
RETURNS TABLE (part integer, checkpoint bigint, acked boolean, failed_position bigint,
			   attempts integer, waiting boolean, first_failed boolean, last_error text)
LANGUAGE sql AS $$
	SELECT p.partition, p.checkpoint - h0, p.acked_at IS NOT NULL, p.failed_position - h0,
		   p.attempts, p.next_attempt_at > now(), p.first_failed_at IS NOT NULL, p.last_error
	FROM eventstore.subscription_partitions p
	WHERE p.subscription = sub ORDER BY p.partition
$$;
-- a subscription's dead letters, positions relative to h0
CREATE FUNCTION pg_temp.dead(sub text, h0 bigint)
RETURNS TABLE (part integer, pos bigint, stream_id text, attempts integer, last_error text,
			   failed boolean, requeued boolean, delivered boolean)
LANGUAGE sql AS $$
	SELECT d.partition, d.event_position - h0, d.stream_id, d.attempts, d.last_error,
		   d.first_failed_at <= d.last_failed_at, d.requeued_at IS NOT NULL,
		   d.delivered_at IS NOT NULL
	FROM eventstore.subscription_dead_letters d
	WHERE d.subscription = sub ORDER BY d.event_position
$$;
-- time passes: the pending retry of a subscription falls due
CREATE FUNCTION pg_temp.due(sub text) RETURNS void LANGUAGE sql AS $$
	UPDATE eventstore.subscription_partitions SET next_attempt_at = now() - interval '1 second'
	WHERE subscription = sub AND next_attempt_at IS NOT NULL
$$;
-- fail(sub, pos, error): the pending retry falls due, the event fails
-- again (nack), and the partition shows its attempts and whether its retry
-- is between half and all of the backoff after the nack: initial * 2 ^
-- (attempts - 1), capped at the maximum.  The retry is then moved an hour
-- on, so that no stall of the test can make it due before the test does.
CREATE FUNCTION pg_temp.fail(sub text, pos bigint, error text)
RETURNS TABLE (attempts integer, waiting boolean, not_before_half boolean, not_after_all boolean)
LANGUAGE plpgsql AS $$
DECLARE
	initial_ms float8 := extract(epoch FROM current_setting('eventstore.retry_backoff_initial')::interval) * 1000;
	max_ms float8 := extract(epoch FROM current_setting('eventstore.retry_backoff_max')::interval) * 1000;
BEGIN
	PERFORM pg_temp.due(sub);
	PERFORM eventstore.nack(sub, pos, error);
	-- now() is before the nack and clock_timestamp() after it
	RETURN QUERY SELECT p.attempts, p.next_attempt_at IS NOT NULL,
		p.next_attempt_at - now() >= interval '1 ms' * least(initial_ms * 2 ^ (p.attempts - 1), max_ms) / 2,
		p.next_attempt_at - clock_timestamp() <= interval '1 ms' * least(initial_ms * 2 ^ (p.attempts - 1), max_ms)
	FROM eventstore.subscription_partitions p WHERE p.subscription = sub;
	UPDATE eventstore.subscription_partitions p SET next_attempt_at = now() + interval '1 hour'
	WHERE p.subscription = sub AND p.next_attempt_at IS NOT NULL;
END
$$;

-- events: positions h0 + 1 .. h0 + 6
SELECT eventstore.append('subord-1', 0, '[{"type": "Placed", "data": {"total": 10}},
	{"type": "Paid", "data": {"total": 10}}]');
SELECT eventstore.append('subord-2', 0, '{"type": "Placed", "data": {"total": 500}}');
SELECT eventstore.append('subpay-1', 0, '{"type": "Paid", "data": {"total": 5}}');
SELECT eventstore.append('subord-2', 1, '[{"type": "Paid", "data": {"total": 500}},
	{"type": "Shipped", "data": {}}]');
SELECT global_position - :h0 AS pos, stream_id, event_type, data FROM eventstore.events
WHERE global_position > :h0 ORDER BY global_position;

-- create: defaults, the row of each partition at the start position
SELECT eventstore.create_subscription('sub-all', 'subord');
SELECT name, category, event_types, filter, partitions, on_failure, start_position,
	   id IS NOT NULL AS has_id, created_at IS NOT NULL AS has_created_at
FROM eventstore.subscriptions;
SELECT subscription, partition, checkpoint, acked_at, failed_position, attempts, next_attempt_at,
	   first_failed_at, last_error
FROM eventstore.subscription_partitions;

-- category: every event of the category after position 0, in order; poll
-- does not move the checkpoint
SELECT global_position - :h0 AS pos, stream_id, stream_version, event_type
FROM eventstore.poll('sub-all');
SELECT global_position - :h0 AS pos FROM eventstore.poll('sub-all', 2);
SELECT count(*) FROM eventstore.poll('sub-all', 0);
SELECT checkpoint FROM eventstore.subscription_partitions WHERE subscription = 'sub-all';

-- event types across categories; a filter on the event row; all three
SELECT eventstore.create_subscription('sub-types', event_types => '{Paid,Shipped}',
	start_position => :h0);
SELECT eventstore.create_subscription('sub-big', filter => '$.data.total >= 100',
	start_position => :h0);
SELECT eventstore.create_subscription('sub-big-paid', 'subord', '{Paid}', '$.data.total > 100',
	:h0, 1, 'park');
SELECT name, category, event_types, filter, partitions, on_failure, start_position - :h0 AS start
FROM eventstore.subscriptions WHERE name LIKE 'sub-big%' OR name = 'sub-types' ORDER BY name;
SELECT global_position - :h0 AS pos, stream_id, event_type FROM eventstore.poll('sub-types');
SELECT global_position - :h0 AS pos, stream_id, event_type FROM eventstore.poll('sub-big');
SELECT global_position - :h0 AS pos, stream_id, event_type FROM eventstore.poll('sub-big-paid');

-- start_position n: events after n; NULL: the current head
SELECT eventstore.create_subscription('sub-from', 'subord', start_position => :h0 + 3);
SELECT global_position - :h0 AS pos FROM eventstore.poll('sub-from');
SELECT eventstore.create_subscription('sub-head', start_position => NULL);
SELECT start_position - :h0 AS start FROM eventstore.subscriptions WHERE name = 'sub-head';
SELECT checkpoint - :h0 AS checkpoint FROM eventstore.subscription_partitions
WHERE subscription = 'sub-head';
SELECT count(*) FROM eventstore.poll('sub-head');
SELECT eventstore.append('subord-3', 0, '{"type": "Placed", "data": {"total": 1}}');
SELECT global_position - :h0 AS pos, stream_id FROM eventstore.poll('sub-head');

-- bad input to create_subscription: an error with its SQLSTATE, nothing written
SELECT pg_temp.state() AS before \gset
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-all')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-all', 'other')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription(NULL)$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription(repeat('n', 1025))$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', '')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', 'a-b')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', event_types => '{}')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', event_types => '{A,NULL}')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', event_types => '{A,""}')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', event_types => '{{A},{B}}')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', filter => '$.data.total')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', filter => '$.data')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', partitions => 0)$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', partitions => -1)$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', partitions => 1025)$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', on_failure => 'retry')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', on_failure => '')$$);
SELECT pg_temp.try($$SELECT eventstore.create_subscription('sub-bad', start_position => -1)$$);
SELECT pg_temp.try(format($$SELECT eventstore.create_subscription('sub-bad', start_position => %s)$$,
	eventstore.read_horizon()));
SELECT pg_temp.state() = :'before' AS unchanged;
-- a name of 1024 bytes is fine (multibyte: 1024 bytes, not characters)
SELECT eventstore.create_subscription(repeat('n', 1024), start_position => NULL);
SELECT pg_temp.try($$SELECT eventstore.create_subscription(repeat('é', 513), start_position => NULL)$$);
SELECT eventstore.drop_subscription(repeat('n', 1024));

-- unknown subscriptions: 42704 from every function, nothing written
SELECT pg_temp.state() AS before \gset
SELECT pg_temp.try($$SELECT eventstore.drop_subscription('sub-nope')$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-nope')$$);
SELECT pg_temp.try($$SELECT eventstore.ack('sub-nope', 1)$$);
SELECT pg_temp.try($$SELECT eventstore.nack('sub-nope', 1, 'e')$$);
SELECT pg_temp.try($$SELECT eventstore.requeue_subscription_dead_letters('sub-nope')$$);
SELECT pg_temp.try($$SELECT eventstore.discard_subscription_dead_letters('sub-nope', '{1}')$$);
-- NULL arguments: 22004
SELECT pg_temp.try($$SELECT eventstore.drop_subscription(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all', NULL)$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all', 10, NULL)$$);
SELECT pg_temp.try($$SELECT eventstore.ack(NULL, 1)$$);
SELECT pg_temp.try($$SELECT eventstore.ack('sub-all', NULL)$$);
SELECT pg_temp.try($$SELECT eventstore.nack(NULL, 1, 'e')$$);
SELECT pg_temp.try($$SELECT eventstore.nack('sub-all', NULL, 'e')$$);
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-all', %s, NULL)$$, :h0 + 1));
SELECT pg_temp.try($$SELECT eventstore.requeue_subscription_dead_letters(NULL)$$);
SELECT pg_temp.try($$SELECT eventstore.discard_subscription_dead_letters(NULL, '{1}')$$);
-- poll: max_count < 0, wait < 0, a partition out of range, REPEATABLE READ
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all', -1)$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all', 10, '-1 ms')$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all', 10, '0', 1)$$);
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all', 10, '0', -1)$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all')$$);
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT pg_temp.try($$SELECT * FROM eventstore.poll('sub-all')$$);
ROLLBACK;
SELECT pg_temp.state() = :'before' AS unchanged;

-- ack moves the checkpoint, in the caller's transaction
BEGIN;
SELECT eventstore.ack('sub-all', :h0 + 2);
SELECT checkpoint - :h0 AS checkpoint, acked_at IS NOT NULL AS acked
FROM eventstore.subscription_partitions WHERE subscription = 'sub-all';
ROLLBACK;
SELECT checkpoint, acked_at FROM eventstore.subscription_partitions WHERE subscription = 'sub-all';
SELECT eventstore.ack('sub-all', :h0 + 2);
SELECT * FROM pg_temp.parts('sub-all', :h0);
SELECT global_position - :h0 AS pos FROM eventstore.poll('sub-all');
-- the current checkpoint again: a no-op (acked_at stays)
SELECT acked_at AS acked_before FROM eventstore.subscription_partitions WHERE subscription = 'sub-all' \gset
SELECT eventstore.ack('sub-all', :h0 + 2);
SELECT acked_at = :'acked_before' AS unchanged FROM eventstore.subscription_partitions
WHERE subscription = 'sub-all';
-- a position with no event (a rolled back append took it): partition 0 of
-- a one-partition subscription
BEGIN;
SELECT eventstore.append('subgap-1', 0, '{"type": "A", "data": 1}');
ROLLBACK;
SELECT eventstore.read_horizon() - 1 AS gap \gset
SELECT count(*) AS events_at_gap FROM eventstore.events WHERE global_position = :gap;
-- behind the checkpoint, ahead of the head, a partition out of range: 22023
SELECT pg_temp.state() AS before \gset
SELECT pg_temp.try(format($$SELECT eventstore.ack('sub-all', %s)$$, :h0 + 1));
SELECT pg_temp.try($$SELECT eventstore.ack('sub-all', 0)$$);
SELECT pg_temp.try(format($$SELECT eventstore.ack('sub-all', %s)$$, eventstore.read_horizon()));
SELECT pg_temp.try($$SELECT eventstore.ack('sub-all', 9223372036854775807)$$);
SELECT pg_temp.try(format($$SELECT eventstore.ack('sub-all', %s, 1)$$, :h0 + 3));
SELECT pg_temp.try(format($$SELECT eventstore.ack('sub-all', %s, -1)$$, :h0 + 3));
SELECT pg_temp.state() = :'before' AS unchanged;
SELECT eventstore.ack('sub-all', :gap);
SELECT checkpoint = :gap AS at_gap FROM eventstore.subscription_partitions WHERE subscription = 'sub-all';
SELECT count(*) FROM eventstore.poll('sub-all');

-- partitions: a stream's events all go to one partition, computed by
-- stream_partition(): hash_bytes of the id's bytes (hashtext with the
-- default collation) modulo the number of partitions
SELECT bool_and(eventstore.stream_partition(s, n) = ((hashtext(s)::bigint & 4294967295) % n)::int)
	   AS as_documented,
	   min(eventstore.stream_partition(s, n)) AS lowest,
	   bool_and(eventstore.stream_partition(s, n) < n) AS in_range,
	   count(DISTINCT eventstore.stream_partition(s, n)) FILTER (WHERE n = 7) AS all_of_7
FROM generate_series(1, 2000) i, unnest('{1,2,7,1024}'::int[]) n,
	 LATERAL (SELECT 'stream-' || i || repeat('é', i % 5) AS s) x;
SELECT eventstore.stream_partition('', 3) BETWEEN 0 AND 2 AS empty_id;
SELECT eventstore.stream_partition('subpart-1', 1) AS one_partition;
SELECT eventstore.read_horizon() - 1 AS p0 \gset
SELECT eventstore.create_subscription('sub-parts', 'subpart', partitions => 4, start_position => NULL);
SELECT subscription, partition, checkpoint = :p0 AS at_start FROM eventstore.subscription_partitions
WHERE subscription = 'sub-parts' ORDER BY partition;
SELECT count(*) FROM (SELECT eventstore.append('subpart-' || i, 0,
	jsonb_build_object('type', 'A', 'data', i)) FROM generate_series(1, 12) i) a;
SELECT count(*) FROM (SELECT eventstore.append('subpart-' || i, 1,
	jsonb_build_object('type', 'B', 'data', i)) FROM generate_series(1, 12) i) a;
-- each partition returns its own streams' events, in position order
CREATE TEMP TABLE polled (p integer, n bigint, pos bigint, stream_id text);
INSERT INTO polled SELECT 0, ordinality, global_position, stream_id
FROM eventstore.poll('sub-parts', 100, '0', 0) WITH ORDINALITY;
INSERT INTO polled SELECT 1, ordinality, global_position, stream_id
FROM eventstore.poll('sub-parts', 100, '0', 1) WITH ORDINALITY;
INSERT INTO polled SELECT 2, ordinality, global_position, stream_id
FROM eventstore.poll('sub-parts', 100, '0', 2) WITH ORDINALITY;
INSERT INTO polled SELECT 3, ordinality, global_position, stream_id
FROM eventstore.poll('sub-parts', 100, '0', 3) WITH ORDINALITY;
SELECT p, count(*) AS events, count(DISTINCT stream_id) AS streams FROM polled GROUP BY p ORDER BY p;
SELECT count(*) = 24 AS all_events, count(DISTINCT pos) = 24 AS each_once,
	   bool_and(p = eventstore.stream_partition(stream_id, 4)) AS right_partition,
	   bool_and(stream_id LIKE 'subpart-%') AS only_category
FROM polled;
SELECT bool_and(ordered) AS in_order FROM (
	SELECT pos > lag(pos, 1, 0::bigint) OVER (PARTITION BY p ORDER BY n) AS ordered FROM polled) o;
-- the same numbers, from the events themselves
SELECT eventstore.stream_partition(stream_id, 4) AS p, count(*) AS events
FROM eventstore.events WHERE category = 'subpart' GROUP BY 1 ORDER BY 1;

-- partition NULL: the transaction claims one partition with events to
-- deliver and holds its lease (pg_locks) until it ends; it keeps using it.
-- (It also shares a lock on the whole subscription, which a drop waits for.)
SELECT id AS parts_id FROM eventstore.subscriptions WHERE name = 'sub-parts' \gset
BEGIN;
CREATE TEMP TABLE got ON COMMIT DROP AS
SELECT ordinality AS n, global_position, stream_id FROM eventstore.poll('sub-parts', 3) WITH ORDINALITY;
SELECT count(*) > 0 AS events, count(DISTINCT eventstore.stream_partition(stream_id, 4)) AS partitions
FROM got;
SELECT DISTINCT eventstore.stream_partition(stream_id, 4) AS claimed FROM got \gset
SELECT count(*) AS claimed_events FROM eventstore.events
WHERE category = 'subpart' AND eventstore.stream_partition(stream_id, 4) = :claimed \gset
SELECT count(*) = least(3, :claimed_events) AS up_to_max_count FROM got;
SELECT locktype, classid = :parts_id AS sub_id, objid = :claimed AS partition, objsubid, mode, granted
FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' AND objsubid = 17747
ORDER BY mode;
SELECT partition = :claimed AS claimed, pid = pg_backend_pid() AS mine
FROM eventstore.subscription_lag WHERE subscription = 'sub-parts' AND pid IS NOT NULL;
-- again: the same partition, the same first events (nothing acked yet)
SELECT bool_and(eventstore.stream_partition(stream_id, 4) = :claimed) AS same_partition,
	   count(*) = :claimed_events AS all_of_it
FROM eventstore.poll('sub-parts', 100);
SELECT global_position = (SELECT global_position FROM got WHERE n = 1) AS same_first
FROM eventstore.poll('sub-parts', 1);
-- ack with partition NULL: the partition of the event at that position
SELECT max(global_position) AS last FROM got \gset
SELECT eventstore.ack('sub-parts', :last);
SELECT partition = :claimed AS claimed, checkpoint = :last AS acked
FROM eventstore.subscription_partitions WHERE subscription = 'sub-parts' AND checkpoint <> :p0;
COMMIT;
SELECT count(*) AS leases FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 17747;
SELECT count(*) FILTER (WHERE checkpoint = :p0) AS untouched, count(*) FILTER (WHERE checkpoint = :last) AS acked
FROM eventstore.subscription_partitions WHERE subscription = 'sub-parts';
-- the claimed partition goes on after the checkpoint
SELECT bool_and(global_position > :last) AS after_ack,
	   bool_and(eventstore.stream_partition(stream_id, 4) = :claimed) AS same_partition
FROM eventstore.poll('sub-parts', 100, '0', :claimed);
-- ack with partition NULL of a position without an event: 22023 with
-- several partitions; an explicit partition works
BEGIN;
SELECT eventstore.append('subgap-1', 0, '{"type": "A", "data": 1}');
ROLLBACK;
SELECT eventstore.read_horizon() - 1 AS gap2 \gset
SELECT pg_temp.state() AS before \gset
SELECT pg_temp.try(format($$SELECT eventstore.ack('sub-parts', %s)$$, :gap2));
SELECT pg_temp.try(format($$SELECT eventstore.ack('sub-parts', %s, 4)$$, :last));
SELECT pg_temp.state() = :'before' AS unchanged;
SELECT eventstore.ack('sub-parts', :gap2, 0);
SELECT checkpoint = :gap2 AS at_gap FROM eventstore.subscription_partitions
WHERE subscription = 'sub-parts' AND partition = 0;

-- nack: retries with backoff, then dead letters, with the relay's settings
-- at their defaults (no ALTER SYSTEM: the reloads it needs coincided with
-- processes of the test server dying of SIGSEGV on the machine this was
-- written on): backoff 1 s doubling up to 32 s, with jitter (between half
-- and all of it); the tenth failure is the last.  fail() reads the
-- settings, so only the number of failures depends on them.
SHOW eventstore.retry_backoff_initial;
SHOW eventstore.retry_backoff_max;
SHOW eventstore.max_attempts;

-- events of each partition of a two-partition subscription
SELECT eventstore.create_subscription('sub-two', 'subtwo', partitions => 2, start_position => NULL);
SELECT count(*) FROM (SELECT eventstore.append('subtwo-' || i, 0,
	jsonb_build_object('type', 'A', 'data', i)) FROM generate_series(1, 8) i) a;
SELECT min(global_position) AS in_0 FROM eventstore.events
WHERE category = 'subtwo' AND eventstore.stream_partition(stream_id, 2) = 0 \gset
SELECT min(global_position) AS in_1 FROM eventstore.events
WHERE category = 'subtwo' AND eventstore.stream_partition(stream_id, 2) = 1 \gset

-- skip mode: positions r1 .. r3
SELECT eventstore.read_horizon() - 1 AS h1 \gset
SELECT eventstore.create_subscription('sub-retry', 'subretry', start_position => NULL);
SELECT eventstore.append('subretry-1', 0, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}]');
SELECT eventstore.append('subretry-2', 0, '{"type": "C", "data": 3}');
SELECT global_position - :h1 AS r FROM eventstore.poll('sub-retry');
-- a failed first event: the partition waits for its retry, and an ack at
-- or past it clears the retry
SELECT * FROM pg_temp.fail('sub-retry', :h1 + 1, 'first');
SELECT * FROM pg_temp.parts('sub-retry', :h1);
SELECT count(*) FROM eventstore.poll('sub-retry');
SELECT eventstore.ack('sub-retry', :h1 + 1);
SELECT * FROM pg_temp.parts('sub-retry', :h1);
-- r2 fails: the events before it count as acknowledged
SELECT global_position - :h1 AS r FROM eventstore.poll('sub-retry');
SELECT * FROM pg_temp.fail('sub-retry', :h1 + 2, 'boom 1');
SELECT * FROM pg_temp.parts('sub-retry', :h1);
SELECT count(*) FROM eventstore.poll('sub-retry');
-- a position without an event
BEGIN;
SELECT eventstore.append('subretry-9', 0, '{"type": "A", "data": 1}');
ROLLBACK;
SELECT eventstore.read_horizon() - 1 AS gap3 \gset
-- bad nacks: at or behind the checkpoint, ahead of the head, no event
-- there, an event of another partition or out of range, NULL error
SELECT pg_temp.state() AS before \gset
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-retry', %s, 'e')$$, :h1 + 1));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-retry', %s, 'e')$$, :h1));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-retry', %s, 'e')$$, eventstore.read_horizon()));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-retry', %s, 'e', 1)$$, :h1 + 2));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-retry', %s, NULL)$$, :h1 + 2));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-retry', %s, 'e')$$, :gap3));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-two', %s, 'e', 1)$$, :in_0));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-two', %s, 'e', 0)$$, :in_1));
SELECT pg_temp.try(format($$SELECT eventstore.nack('sub-two', %s, 'e', 2)$$, :in_0));
SELECT pg_temp.state() = :'before' AS unchanged;
-- the retry falls due: r2 comes first again; second failure, capped backoff
SELECT pg_temp.due('sub-retry');
SELECT global_position - :h1 AS r FROM eventstore.poll('sub-retry');
SELECT * FROM pg_temp.fail('sub-retry', :h1 + 2, 'boom 2');
SELECT * FROM pg_temp.parts('sub-retry', :h1);
-- failures 3 to 10 (the backoff reaches its cap at the sixth); the tenth
-- makes it a dead letter, and skip mode moves on past it
SELECT i, f.* FROM generate_series(3, 10) i, LATERAL pg_temp.fail('sub-retry', :h1 + 2, 'boom ' || i) f;
SELECT * FROM pg_temp.parts('sub-retry', :h1);
SELECT * FROM pg_temp.dead('sub-retry', :h1);
SELECT global_position - :h1 AS r FROM eventstore.poll('sub-retry');
SELECT eventstore.ack('sub-retry', :h1 + 3);
-- requeue (skip mode): offered again before the partition's next events,
-- and gone once acknowledged
SELECT eventstore.append('subretry-2', 1, '{"type": "D", "data": 4}');
SELECT global_position AS d FROM eventstore.events WHERE stream_id = 'subretry-2' AND event_type = 'D' \gset
SELECT eventstore.requeue_subscription_dead_letters('sub-retry');
SELECT * FROM pg_temp.dead('sub-retry', :h1);
SELECT global_position - :h1 AS r, event_type FROM eventstore.poll('sub-retry');
SELECT * FROM pg_temp.dead('sub-retry', :h1);
SELECT eventstore.ack('sub-retry', :d);
SELECT * FROM pg_temp.dead('sub-retry', :h1);
SELECT checkpoint = :d AS at_d FROM eventstore.subscription_partitions WHERE subscription = 'sub-retry';
SELECT count(*) FROM eventstore.poll('sub-retry');

-- park mode: the partition holds at a dead letter until it is requeued or
-- discarded.  Positions k1 .. k3
SELECT eventstore.read_horizon() - 1 AS h2 \gset
SELECT eventstore.create_subscription('sub-park', 'subpark', start_position => NULL, on_failure => 'park');
SELECT eventstore.append('subpark-1', 0, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}]');
SELECT eventstore.append('subpark-2', 0, '{"type": "C", "data": 3}');
SELECT global_position - :h2 AS k FROM eventstore.poll('sub-park');
SELECT * FROM pg_temp.fail('sub-park', :h2 + 2, 'bad 1');
SELECT pg_temp.due('sub-park');
SELECT global_position - :h2 AS k FROM eventstore.poll('sub-park');
SELECT i, f.* FROM generate_series(2, 10) i, LATERAL pg_temp.fail('sub-park', :h2 + 2, 'bad ' || i) f;
SELECT * FROM pg_temp.parts('sub-park', :h2);
SELECT * FROM pg_temp.dead('sub-park', :h2);
SELECT count(*) FROM eventstore.poll('sub-park');
-- requeue: the partition resumes at it, attempts reset
SELECT eventstore.requeue_subscription_dead_letters('sub-park', ARRAY(
	SELECT id FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-park'));
SELECT * FROM pg_temp.parts('sub-park', :h2);
SELECT global_position - :h2 AS k FROM eventstore.poll('sub-park');
SELECT eventstore.ack('sub-park', :h2 + 3);
SELECT * FROM pg_temp.dead('sub-park', :h2);
-- fails again until it is a dead letter; discard moves the partition past it
SELECT eventstore.append('subpark-2', 1, '[{"type": "D", "data": 4}, {"type": "E", "data": 5}]');
SELECT count(*) AS failures FROM generate_series(1, 10) i,
	LATERAL pg_temp.fail('sub-park', :h2 + 4, 'bad again ' || i) f;
SELECT * FROM pg_temp.parts('sub-park', :h2);
SELECT count(*) FROM eventstore.poll('sub-park');
-- ids of another subscription, or none, change nothing
SELECT eventstore.discard_subscription_dead_letters('sub-retry', ARRAY(
	SELECT id FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-park'));
SELECT eventstore.discard_subscription_dead_letters('sub-park', '{}');
SELECT eventstore.discard_subscription_dead_letters('sub-park', ARRAY(
	SELECT id FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-park'));
SELECT * FROM pg_temp.dead('sub-park', :h2);
SELECT * FROM pg_temp.parts('sub-park', :h2);
SELECT global_position - :h2 AS k FROM eventstore.poll('sub-park');

-- a filter that fails on an event (total is a string): no error for the
-- appender; the event is a dead letter of the subscription.  Positions f1 .. f4
SELECT eventstore.read_horizon() - 1 AS h3 \gset
SELECT eventstore.create_subscription('sub-fskip', 'subfail', filter => '$.data.total >= 1000',
	start_position => NULL);
SELECT eventstore.create_subscription('sub-fpark', 'subfail', filter => '$.data.total >= 1000',
	start_position => NULL, on_failure => 'park');
SELECT eventstore.append('subfail-1', 0, '[{"type": "A", "data": {"total": 1500}},
	{"type": "A", "data": {"total": "lots"}}, {"type": "A", "data": {"total": 2000}},
	{"type": "A", "data": {"total": 5}}]');
-- skip: poll goes on past it
SELECT global_position - :h3 AS f, data FROM eventstore.poll('sub-fskip');
SELECT part, pos, stream_id, requeued, delivered FROM pg_temp.dead('sub-fskip', :h3);
-- discard while events before it are not acknowledged: 55000
SELECT pg_temp.try($$SELECT eventstore.discard_subscription_dead_letters('sub-fskip', ARRAY(
	SELECT id FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-fskip'))$$);
-- requeued, it is offered again in order after the checkpoint, without the
-- filter, and marked delivered
SELECT eventstore.requeue_subscription_dead_letters('sub-fskip', NULL);
SELECT part, pos, stream_id, requeued, delivered FROM pg_temp.dead('sub-fskip', :h3);
SELECT global_position - :h3 AS f, data FROM eventstore.poll('sub-fskip');
SELECT part, pos, stream_id, requeued, delivered FROM pg_temp.dead('sub-fskip', :h3);
-- a nack of a requeued dead letter puts it straight back; skip mode goes on
SELECT eventstore.nack('sub-fskip', :h3 + 2, 'still bad');
SELECT part, pos, attempts, last_error, requeued, delivered FROM pg_temp.dead('sub-fskip', :h3);
SELECT * FROM pg_temp.parts('sub-fskip', :h3);
SELECT global_position - :h3 AS f, data FROM eventstore.poll('sub-fskip');
SELECT eventstore.ack('sub-fskip', :h3 + 4);
-- discard (skip mode): the row goes, the checkpoint stays
SELECT eventstore.discard_subscription_dead_letters('sub-fskip', ARRAY(
	SELECT id FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-fskip'));
SELECT count(*) FROM pg_temp.dead('sub-fskip', :h3);
SELECT * FROM pg_temp.parts('sub-fskip', :h3);
-- park: poll stops before it
SELECT global_position - :h3 AS f, data FROM eventstore.poll('sub-fpark');
SELECT part, pos, stream_id, requeued, delivered FROM pg_temp.dead('sub-fpark', :h3);
SELECT * FROM pg_temp.parts('sub-fpark', :h3);
SELECT eventstore.ack('sub-fpark', :h3 + 1);
SELECT count(*) FROM eventstore.poll('sub-fpark');
SELECT eventstore.discard_subscription_dead_letters('sub-fpark', ARRAY(
	SELECT id FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-fpark'));
SELECT global_position - :h3 AS f, data FROM eventstore.poll('sub-fpark');

-- discard needs ids (22004); NULL ids and two-dimensional arrays match
-- nothing (as with the outbox's requeue_dead_letters)
SELECT pg_temp.state() AS before \gset
SELECT pg_temp.try($$SELECT eventstore.discard_subscription_dead_letters('sub-park', NULL)$$);
SELECT eventstore.requeue_subscription_dead_letters('sub-park', '{NULL}');
SELECT eventstore.requeue_subscription_dead_letters('sub-park', '{{1},{2}}');
SELECT eventstore.discard_subscription_dead_letters('sub-park', '{NULL}');
SELECT pg_temp.state() = :'before' AS unchanged;

-- subscription_lag: per partition, the checkpoint, the head, the matching
-- events after the checkpoint and how old the oldest is, who holds the lease
SELECT subscription, partition, checkpoint - :h0 AS checkpoint,
	   head = (SELECT max(global_position) FROM eventstore.events) AS head, behind,
	   oldest_age >= '0' AS aged, pid, acked_at IS NOT NULL AS acked, attempts
FROM eventstore.subscription_lag WHERE subscription IN ('sub-all', 'sub-types', 'sub-retry',
	'sub-park', 'sub-fskip', 'sub-fpark') ORDER BY subscription, partition;
BEGIN;
SELECT count(*) FROM eventstore.poll('sub-types');
SELECT subscription, pid = pg_backend_pid() AS mine FROM eventstore.subscription_lag WHERE pid IS NOT NULL;
COMMIT;
SELECT count(*) AS leased FROM eventstore.subscription_lag WHERE pid IS NOT NULL;

-- wait: with nothing to deliver, poll comes back empty when wait runs out
SELECT count(*) FROM eventstore.poll('sub-retry', 10, '20 ms');

-- a partition with nothing to deliver and 1000+ positions behind the head
-- jumps to the head (nothing matched); less than 1000 behind, it stays
SELECT eventstore.read_horizon() - 1 AS h4 \gset
SELECT eventstore.create_subscription('sub-far', 'subnone', start_position => :h4);
SELECT eventstore.append('subbulk-1', 0, (SELECT jsonb_agg(jsonb_build_object('type', 'A', 'data', i))
	FROM generate_series(1, 1100) i));
SELECT eventstore.create_subscription('sub-near', 'subnone', start_position => eventstore.read_horizon() - 999);
SELECT count(*) FROM eventstore.poll('sub-far');
SELECT count(*) FROM eventstore.poll('sub-near');
SELECT subscription, checkpoint = eventstore.read_horizon() - 1 AS at_head,
	   checkpoint - :h4 AS checkpoint
FROM eventstore.subscription_partitions WHERE subscription IN ('sub-far', 'sub-near') ORDER BY 1;

-- drop: the subscription, its partitions and its dead letters go
SELECT eventstore.create_subscription('sub-drop', 'subdrop', filter => '$.data.total > 0',
	partitions => 3, start_position => NULL);
SELECT eventstore.append('subdrop-1', 0, '{"type": "A", "data": {"total": "x"}}');
SELECT count(*) FROM eventstore.poll('sub-drop', 10, '0', eventstore.stream_partition('subdrop-1', 3));
SELECT count(*) AS dead FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-drop';
SELECT eventstore.drop_subscription('sub-drop');
SELECT (SELECT count(*) FROM eventstore.subscriptions WHERE name = 'sub-drop') AS subs,
	   (SELECT count(*) FROM eventstore.subscription_partitions WHERE subscription = 'sub-drop') AS parts,
	   (SELECT count(*) FROM eventstore.subscription_dead_letters WHERE subscription = 'sub-drop') AS dead;
SELECT pg_temp.try($$SELECT eventstore.drop_subscription('sub-drop')$$);
-- the name can be used again
SELECT eventstore.create_subscription('sub-drop', start_position => NULL);

-- clean up: every subscription
SELECT count(*) FROM (SELECT eventstore.drop_subscription(name) FROM eventstore.subscriptions) d;
SELECT (SELECT count(*) FROM eventstore.subscription_partitions) AS parts,
	   (SELECT count(*) FROM eventstore.subscription_dead_letters) AS dead;
