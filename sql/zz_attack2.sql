-- (Named zz_ so that it runs last: it leaves events in the shared test database.)
-- Defects found by the second attack review of subscriptions (branch
-- sub-attack2).  Each block states the contract; the expected output is the
-- contract's answer, so this test fails until they are fixed.

-- A. An ack of a position BEFORE a requeued dead letter that poll delivered
--    ahead of the checkpoint must not settle it (ack: "every event of the
--    partition up to position" is done; the requeued one is after it).
--    EsAckRequeued deletes every delivered requeued one whatever 'position'
--    is, so the operator's requeue is undone: the next poll dead-letters the
--    event again instead of delivering it.
SELECT eventstore.create_subscription('atk2_a', 'atkA', filter => '$.data.x > 0');
SELECT eventstore.append('atkA-1', NULL,
	'[{"type":"T","data":{"x":1}},{"type":"T","data":{"x":"bad"}},{"type":"T","data":{"x":1}}]');
SELECT stream_version FROM eventstore.poll('atk2_a', 10);	-- 1, 3; version 2 is a dead letter (not acked)
SELECT eventstore.requeue_subscription_dead_letters('atk2_a');
BEGIN;
SELECT stream_version FROM eventstore.poll('atk2_a', 10);	-- 1, 2 (requeued), 3
SELECT eventstore.ack('atk2_a', (SELECT global_position FROM eventstore.events
	WHERE stream_id = 'atkA-1' AND stream_version = 1));	-- only version 1 processed
COMMIT;
-- contract: the requeued dead letter is still there, and comes next
SELECT requeued_at IS NOT NULL AS requeued FROM eventstore.subscription_dead_letters
WHERE subscription = 'atk2_a';
SELECT stream_version FROM eventstore.poll('atk2_a', 10);	-- contract: 2, 3

-- B. "nack: the events before it are acknowledged".  A requeued dead letter
--    that poll delivered before the nacked event is not settled by the nack:
--    it is delivered again although its work committed with the nack, so
--    its effect happens twice ("exactly once for effects in the same
--    database" breaks).  Shown with two requeued dead letters behind the
--    checkpoint: the first is processed, the second nacked.
CREATE TABLE atk2_effects (v bigint);
SELECT eventstore.create_subscription('atk2_b', 'atkB', filter => '$.data.x > 0');
SELECT eventstore.append('atkB-1', NULL,
	'[{"type":"T","data":{"x":"bad"}},{"type":"T","data":{"x":"bad"}},{"type":"T","data":{"x":1}}]');
BEGIN;
SELECT stream_version FROM eventstore.poll('atk2_b', 10);	-- 3; 1 and 2 are dead letters
SELECT eventstore.ack('atk2_b', (SELECT global_position FROM eventstore.events
	WHERE stream_id = 'atkB-1' AND stream_version = 3));
COMMIT;
SELECT eventstore.requeue_subscription_dead_letters('atk2_b');
BEGIN;
SELECT stream_version FROM eventstore.poll('atk2_b', 10);	-- 1, 2 (both requeued, behind the checkpoint)
INSERT INTO atk2_effects VALUES (1);	-- version 1 processed
SELECT eventstore.nack('atk2_b', (SELECT global_position FROM eventstore.events
	WHERE stream_id = 'atkB-1' AND stream_version = 2), 'boom');	-- version 2 failed
COMMIT;
-- contract: only version 2 is left (a dead letter again); version 1 is done
SELECT e.stream_version, d.requeued_at IS NOT NULL AS requeued
FROM eventstore.subscription_dead_letters d JOIN eventstore.events e ON e.global_position = d.event_position
WHERE d.subscription = 'atk2_b' ORDER BY 1;
SELECT stream_version FROM eventstore.poll('atk2_b', 10);	-- contract: nothing

-- C. A poll's work is bounded by max_count: in skip mode each event the
--    filter fails on costs a statement, a dead letter and about 3 kB of
--    memory kept until the poll ends, and poll goes on until it has
--    max_count good events or reaches the horizon.  poll(s, 1) over 180,000
--    such events took 32 s and 600 MB; with statement_timeout (or out of
--    memory) it fails and rolls back its dead letters, so the partition
--    never gets past them.  Contract: poll(s, 1) over 2,000 failing events
--    stops well before it has handled them all.
SELECT eventstore.create_subscription('atk2_c', 'atkC', filter => '$.data.x > 0');
SELECT eventstore.append('atkC-1', NULL,
	(SELECT jsonb_agg(jsonb_build_object('type', 'T', 'data', jsonb_build_object('x', 'bad')))
	 FROM generate_series(1, 2000)));
BEGIN;
SELECT count(*) FROM eventstore.poll('atk2_c', 1);
SELECT count(*) < 2000 AS bounded FROM eventstore.subscription_dead_letters
WHERE subscription = 'atk2_c';
ROLLBACK;

-- Bad input to the partition functions: 22023, never a crash.
SELECT eventstore.in_partition('a', 0, 0);
SELECT eventstore.in_partition('a', -2147483648, 0);
SELECT eventstore.in_partition('a', 1025, 0);
SELECT eventstore.in_partition('a', 1024, -1), eventstore.in_partition('a', 1024, -2147483648),
	eventstore.in_partition(NULL, 1, 0), eventstore.in_partition('a', 1, NULL);
SELECT eventstore.stream_partition('a', 0);
SELECT eventstore.stream_partition('a', -2147483648);
SELECT eventstore.stream_partition(NULL, 4), eventstore.stream_partition('a', NULL);
SELECT * FROM eventstore.poll('atk2_a', 1, '0', -2147483648);
SELECT eventstore.ack('atk2_a', 0, 1025);
SELECT eventstore.nack('atk2_a', -9223372036854775808, 'e', -1);

DROP TABLE atk2_effects;
SELECT eventstore.drop_subscription(s) FROM unnest(ARRAY['atk2_a', 'atk2_b', 'atk2_c']) s;

-- 6. A transaction that holds a lease cannot be prepared: its partition
--    would stay leased with no backend behind it (0A000, and nothing stays
--    locked).
SELECT eventstore.create_subscription('atk2_prep');
BEGIN;
SELECT count(*) >= 0 AS polled FROM eventstore.poll('atk2_prep', 1);
PREPARE TRANSACTION 'atk2_prep';
SELECT count(*) AS leases_left FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 17747;
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid = 'atk2_prep';
SELECT eventstore.drop_subscription('atk2_prep');
