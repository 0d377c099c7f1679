-- publish(), routes and the outbox rows they write (no relay runs here).
CREATE OR REPLACE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- publish: any message, in the caller's transaction
SELECT eventstore.publish('notifications', 'customer-1', '{"text": "hi"}', '{"x-tenant": "acme"}') AS first_id \gset
SELECT eventstore.publish('notifications', NULL, NULL) = :first_id + 1 AS next_id;
SELECT topic, message_key, payload, headers, event_position, attempts, next_attempt_at
FROM eventstore.outbox ORDER BY id;
BEGIN;
SELECT eventstore.publish('notifications', 'customer-2', '{}') > 0;
ROLLBACK;
SELECT count(*) FROM eventstore.outbox;

-- bad input: clear errors, nothing written
SELECT try($$SELECT eventstore.publish(NULL, 'k', '{}')$$);
SELECT try($$SELECT eventstore.publish('', 'k', '{}')$$);
SELECT try($$SELECT eventstore.publish('bad topic', 'k', '{}')$$);
SELECT left(try($$SELECT eventstore.publish(repeat('t', 250), 'k', '{}')$$), 30);
SELECT try($$SELECT eventstore.publish('t', 'k', '{}', '[]')$$);
SELECT try($$SELECT eventstore.publish('t', 'k', '{}', '{"n": 1}')$$);
SELECT try($$SELECT eventstore.publish('t', 'k', '{}', '{"": "v"}')$$);
SELECT try($$SELECT eventstore.add_route(NULL, 't')$$);
SELECT try($$SELECT eventstore.add_route('', 't')$$);
SELECT try($$SELECT eventstore.add_route('a-b', 't')$$);
SELECT try($$SELECT eventstore.add_route('order', NULL)$$);
SELECT try($$SELECT eventstore.add_route('order', 'no/slash')$$);
SELECT try($$SELECT eventstore.remove_route('order')$$);
SELECT count(*) FROM eventstore.outbox;
SELECT count(*) FROM eventstore.routes;

-- routes: append() enqueues the category's events in its transaction
SELECT eventstore.add_route('order', 'orders');
SELECT eventstore.add_route('*', 'everything');
SELECT eventstore.append('order-1', 0, '[{"type": "Placed", "data": 1}, {"type": "Paid", "data": 2}]');
SELECT eventstore.append('bill-1', 0, '{"type": "Issued", "data": 3}');
SELECT o.topic, o.message_key, e.stream_version, e.event_type, o.payload IS NULL AS built_when_sent
FROM eventstore.outbox o JOIN eventstore.events e ON e.global_position = o.event_position
ORDER BY o.id;
-- a route is replaced; removing '*' leaves other categories unrouted
SELECT eventstore.add_route('order', 'orders-v2');
SELECT eventstore.remove_route('*');
SELECT eventstore.append('order-1', 2, '{"type": "Shipped", "data": 4}');
SELECT eventstore.append('bill-1', 1, '{"type": "Settled", "data": 5}');
SELECT o.topic, e.stream_id, e.event_type
FROM eventstore.outbox o JOIN eventstore.events e ON e.global_position = o.event_position
WHERE e.event_type IN ('Shipped', 'Settled');
SELECT category, topic FROM eventstore.routes;

-- the CloudEvents headers of a routed event
SELECT eventstore.append('parcel-9', 0, '{"id": "66666666-6666-4666-8666-666666666666", "type": "Placed",
	"data": {"total": 5}, "metadata": {"correlation_id": "c-1", "causation_id": "k-1", "traceparent": "00-t-s-01", "other": true}}');
SELECT h - 'ce_time' - 'ce_sequence' AS headers,
	   h ->> 'ce_time' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$' AS rfc3339,
	   h ->> 'ce_sequence' = lpad(e.global_position::text, 19, '0') AS sequence
FROM eventstore.events e, eventstore.cloudevent_headers(e, '/eventstore/test') h
WHERE e.stream_id = 'parcel-9';
-- ce_sequence is the global position in 19 digits: compared as strings, as
-- the CloudEvents sequence extension does, it follows the positions across
-- streams (a stream version restarts per stream and "10" < "9" as strings);
-- the version is ce_streamversion
SELECT p AS global_position, v AS stream_version,
	   h ->> 'ce_sequence' AS ce_sequence, h ->> 'ce_streamversion' AS ce_streamversion
FROM (VALUES (9::bigint, 10::bigint), (10, 9), (100, 1), (9223372036854775807, 2)) AS r(p, v),
	 eventstore.cloudevent_headers(ROW(p, 'x-1', v, '11111111-1111-4111-8111-111111111111',
		't', '{}', '{}', now(), 'x'), 'src') h
ORDER BY h ->> 'ce_sequence' COLLATE "C";
-- ce_time is recorded_at in UTC (this session's time zone is not UTC)
SELECT current_setting('TimeZone') <> 'UTC' AS not_utc,
	   h ->> 'ce_time' = to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS ce_time
FROM eventstore.events e, eventstore.cloudevent_headers(e, 'src') h
WHERE e.stream_id = 'parcel-9';
-- metadata values as ->> gives them: numbers and objects as JSON text, null left out
SELECT eventstore.append_event('parcel-10', 0, 'Placed', 'null',
	'{"correlation_id": 42, "causation_id": null, "traceparent": {"v": [1, "x"]}}');
SELECT h - 'ce_time' - 'ce_sequence' - 'ce_id' AS headers
FROM eventstore.events e, eventstore.cloudevent_headers(e, NULL) h
WHERE e.stream_id = 'parcel-10';
-- bad input
SELECT eventstore.cloudevent_headers(NULL, 'src') IS NULL AS null_event;
SELECT try($$SELECT eventstore.cloudevent_headers(ROW(1, 's-1', 1, NULL, 't', '1', '{}', now(), 's')::eventstore.events, 'src')$$);
-- metadata that is not an object (this crashed the server), an empty type
SELECT try($$SELECT eventstore.cloudevent_headers(ROW(1,'x-1',1,gen_random_uuid(),'t','{}','["zzzzzzzz","xxxxxxxxxxxxco","rrelation_id"]',now(),'x')::eventstore.events, NULL)$$);
SELECT try($$SELECT eventstore.cloudevent_headers(ROW(1, 's-1', 1, gen_random_uuid(), '', '1', '{}', now(), 's')::eventstore.events, 'src')$$);
SELECT try($$SELECT eventstore.cloudevent_headers(ROW(1, 's-1', 1, gen_random_uuid(), 't', '1', '{}', now(), 's')::eventstore.events, 'my source')$$);

-- dead letters and replay: bad input
SELECT try($$SELECT eventstore.discard_dead_letters(NULL)$$);
SELECT try($$SELECT eventstore.replay(NULL)$$);
SELECT try($$SELECT eventstore.replay('bad topic')$$);
SELECT try($$SELECT eventstore.replay('t', NULL, -1)$$);
SELECT try($$SELECT eventstore.replay('t', NULL, 10, 5)$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT try($$SELECT eventstore.replay('t')$$);
ROLLBACK;

-- replay enqueues stored events in global order, bounded by the window
DELETE FROM eventstore.outbox;
SELECT eventstore.replay('rebuild', 'order') AS replayed \gset
SELECT :replayed = count(*) FROM eventstore.events WHERE category = 'order';
SELECT bool_and(o.event_position > prev) FROM (
	SELECT event_position, lag(event_position, 1, 0::bigint) OVER (ORDER BY id) AS prev
	FROM eventstore.outbox o) o;
SELECT eventstore.replay('rebuild', NULL, 1, 3);

-- requeue: dead letters go back in their original order, before the later
-- outbox rows of their keys; discard removes them
DELETE FROM eventstore.outbox;
INSERT INTO eventstore.dead_letters (outbox_id, topic, message_key, payload, headers,
	created_at, attempts, last_error, first_failed_at, last_failed_at)
VALUES (20, 't', 'k1', '2', '{}', now(), 3, 'x', now(), now()),
	   (10, 't', 'k1', '1', '{}', now(), 3, 'x', now(), now()),
	   (30, 't', 'k2', '9', '{}', now(), 1, 'x', now(), now());
SELECT eventstore.publish('t', 'k1', '3') > 0;
SELECT eventstore.publish('t', 'other', '0') > 0;
SELECT eventstore.requeue_dead_letters(ARRAY(SELECT id FROM eventstore.dead_letters WHERE message_key = 'k1'));
SELECT message_key, payload, attempts FROM eventstore.outbox ORDER BY id;
SELECT eventstore.discard_dead_letters(ARRAY(SELECT id FROM eventstore.dead_letters));
SELECT count(*) FROM eventstore.dead_letters;
DELETE FROM eventstore.outbox;
