-- (Named zz_ so that it runs last: it leaves events in the shared test database.)
-- Defects found by the attack review of subscriptions (branch sub-attack).
-- Each block states the contract and shows what poll returns; the expected
-- output is the contract's answer, so this test fails until they are fixed.

-- 1. skip mode: an event the filter fails on is a dead letter and "poll goes
--    on past it".  It must not hold the partition once the poll that
--    dead-lettered it committed without an ack.
SELECT eventstore.create_subscription('atk_skip', 'atk1', filter => '$.data.total > 10');
SELECT eventstore.append_event('atk1-1', NULL, 'Placed', '{"total": 50}') AS v;
SELECT eventstore.append_event('atk1-2', NULL, 'Placed', '{"total": "x"}') AS v;
SELECT stream_id FROM eventstore.poll('atk_skip', 10);	-- atk1-1; atk1-2 is a dead letter
SELECT eventstore.ack('atk_skip', (SELECT global_position FROM eventstore.events WHERE stream_id = 'atk1-1'));
SELECT stream_id, attempts FROM eventstore.subscription_dead_letters WHERE subscription = 'atk_skip';
SELECT eventstore.append_event('atk1-3', NULL, 'Placed', '{"total": 99}') AS v;
-- contract: atk1-3 (skip mode goes on past the dead letter)
SELECT stream_id FROM eventstore.poll('atk_skip', 10);

-- 2. skip mode: a requeued dead letter "is offered again by poll before the
--    partition's next events (without the filter)".
SELECT eventstore.create_subscription('atk_req', 'atk2', filter => '$.data.total > 10');
SELECT eventstore.append_event('atk2-1', NULL, 'Placed', '{"total": "x"}') AS v;
SELECT count(*) FROM eventstore.poll('atk_req', 10);	-- 0: atk2-1 is a dead letter
SELECT eventstore.requeue_subscription_dead_letters('atk_req');
-- contract: atk2-1, offered without the filter
SELECT stream_id FROM eventstore.poll('atk_req', 10);
SELECT stream_id, requeued_at IS NOT NULL AS requeued, delivered_at IS NOT NULL AS delivered
FROM eventstore.subscription_dead_letters WHERE subscription = 'atk_req';

-- 3. "a filter that fails on an event ... must not make poll error": an
--    appender's deeply nested (but valid) data made a recursive filter
--    raise 'stack depth limit exceeded' in every poll of the subscription
--    (and in every read of subscription_lag), and the consumer could not get
--    past it.  An unbounded .** is refused now; a bounded one stops above
--    the depth that matters, so the deep event is no match and poll returns
--    atk3-2.
SELECT eventstore.create_subscription('atk_deep', 'atk3', filter => 'exists($.data.** ? (@ == 1))');
SELECT eventstore.create_subscription('atk_deep', 'atk3', filter => 'exists($.data.**{1 to 64} ? (@ == 1))');
SELECT eventstore.append_event('atk3-1', NULL, 'Placed',
	(repeat('[', 13000) || '1' || repeat(']', 13000))::jsonb) AS v;
SELECT eventstore.append_event('atk3-2', NULL, 'Placed', '{"x": 1}') AS v;
SELECT stream_id FROM eventstore.poll('atk_deep', 10);
SELECT stream_id FROM eventstore.subscription_dead_letters WHERE subscription = 'atk_deep';

SELECT eventstore.drop_subscription(s) FROM unnest(ARRAY['atk_skip', 'atk_req', 'atk_deep']) s;
