-- append() and append_event(): versions, the expected-version check,
-- idempotent retries and atomicity.
\set VERBOSITY default

-- a new stream: expected_version 0, several events in one call
SELECT eventstore.append('order-1', 0, '[
	{"type": "OrderPlaced", "data": {"total": 10}, "metadata": {"correlation_id": "c1"}},
	{"type": "OrderPaid", "data": {"amount": 10}}
]');
SELECT eventstore.stream_version('order-1');
SELECT stream_id, stream_version, event_type, data, metadata, category
FROM eventstore.events WHERE stream_id = 'order-1' ORDER BY stream_version;

-- positions follow versions within one call
SELECT bool_and(global_position > lag) FROM (
	SELECT global_position, lag(global_position, 1, 0::bigint) OVER (ORDER BY stream_version)
	FROM eventstore.events WHERE stream_id = 'order-1') s;

-- one object instead of an array; the exact version
SELECT eventstore.append('order-1', 2, '{"type": "OrderShipped", "data": null}');
-- NULL: no check
SELECT eventstore.append('order-1', NULL, '{"type": "Noted", "data": "x"}');

-- a wrong expected version names the stream and both versions
SELECT eventstore.append('order-1', 2, '{"type": "Late", "data": 1}');
SELECT eventstore.append('order-1', 0, '{"type": "Late", "data": 1}');
SELECT eventstore.append('order-404', 5, '{"type": "Late", "data": 1}');
SELECT eventstore.stream_version('order-1'), eventstore.stream_version('order-404');

-- a conflict consumes no position
SELECT max(global_position) AS before FROM eventstore.events \gset
SELECT eventstore.append('order-1', 1, '{"type": "Late", "data": 1}');
SELECT eventstore.append('order-2', 0, '{"type": "OrderPlaced", "data": {}}');
SELECT global_position = :before + 1 AS gapless
FROM eventstore.events WHERE stream_id = 'order-2';

-- idempotent retry: same ids and contents at the versions the call would write
SELECT eventstore.append('cart-1', 0, '[
	{"id": "11111111-1111-4111-8111-111111111111", "type": "Added", "data": {"sku": "a"}},
	{"id": "11111111-1111-4111-8111-111111111112", "type": "Added", "data": {"sku": "b"}}
]');
SELECT eventstore.append('cart-1', 0, '[
	{"id": "11111111-1111-4111-8111-111111111111", "type": "Added", "data": {"sku": "a"}},
	{"id": "11111111-1111-4111-8111-111111111112", "type": "Added", "data": {"sku": "b"}}
]');
-- the retry of a call without a version check is recognised too
SELECT eventstore.append('cart-1', NULL, '[
	{"id": "11111111-1111-4111-8111-111111111111", "type": "Added", "data": {"sku": "a"}},
	{"id": "11111111-1111-4111-8111-111111111112", "type": "Added", "data": {"sku": "b"}}
]');
SELECT count(*) FROM eventstore.events WHERE stream_id = 'cart-1';
-- same ids but other data: not a retry
SELECT eventstore.append('cart-1', 0, '[
	{"id": "11111111-1111-4111-8111-111111111111", "type": "Added", "data": {"sku": "a"}},
	{"id": "11111111-1111-4111-8111-111111111112", "type": "Added", "data": {"sku": "c"}}
]');
-- an id used by another event: SE002, nothing written
SELECT eventstore.append('cart-2', 0, '{"id": "11111111-1111-4111-8111-111111111111", "type": "Added", "data": {"sku": "a"}}');
SELECT eventstore.append('cart-1', 2, '[
	{"id": "22222222-2222-4222-8222-222222222222", "type": "Added", "data": {}},
	{"id": "11111111-1111-4111-8111-111111111112", "type": "Added", "data": {"sku": "b"}}
]');
SELECT eventstore.stream_version('cart-2'), eventstore.stream_version('cart-1');
SELECT count(*) FROM eventstore.events WHERE event_id = '22222222-2222-4222-8222-222222222222';

-- append_event: one event, same semantics
SELECT eventstore.append_event('user-7', 0, 'Registered', '{"name": "Ann"}');
SELECT eventstore.append_event('user-7', 1, 'Renamed', '{"name": "Bo"}', '{"by": "admin"}',
	'33333333-3333-4333-8333-333333333333');
SELECT eventstore.append_event('user-7', 1, 'Renamed', '{"name": "Bo"}', '{"by": "admin"}',
	'33333333-3333-4333-8333-333333333333');
SELECT eventstore.append_event('user-7', 1, 'Renamed', '{"name": "Cy"}');
SELECT stream_version, event_type, data, metadata FROM eventstore.events
WHERE stream_id = 'user-7' ORDER BY stream_version;

-- an event's category is the stream id up to the first '-'
SELECT eventstore.append_event('standalone', NULL, 'Happened', '1');
SELECT eventstore.append_event('a-b-c', NULL, 'Happened', '1');
SELECT stream_id, category FROM eventstore.events
WHERE stream_id IN ('standalone', 'a-b-c') ORDER BY stream_id;

-- appends inside a transaction that rolls back leave nothing
BEGIN;
SELECT eventstore.append('order-9', 0, '{"type": "OrderPlaced", "data": {}}');
ROLLBACK;
SELECT eventstore.stream_version('order-9');

-- savepoints: the rolled-back append is gone, the next one takes its version
BEGIN;
SELECT eventstore.append('order-10', 0, '{"type": "A", "data": 1}');
SAVEPOINT s;
SELECT eventstore.append('order-10', 1, '{"type": "B", "data": 2}');
ROLLBACK TO s;
SELECT eventstore.append('order-10', 1, '{"type": "C", "data": 3}');
COMMIT;
SELECT stream_version, event_type FROM eventstore.events
WHERE stream_id = 'order-10' ORDER BY stream_version;
