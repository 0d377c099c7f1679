-- read_stream(), read_all() and the horizon.
SELECT eventstore.append('invoice-1', 0, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}, {"type": "C", "data": 3}]');
SELECT eventstore.append('invoice-2', 0, '[{"type": "A", "data": 4}]');
SELECT eventstore.append('receipt-1', 0, '[{"type": "R", "data": 5}]');

SELECT stream_version, event_type, data FROM eventstore.read_stream('invoice-1');
SELECT stream_version, event_type FROM eventstore.read_stream('invoice-1', 2);
SELECT stream_version, event_type FROM eventstore.read_stream('invoice-1', 1, 2);
SELECT stream_version, event_type FROM eventstore.read_stream('invoice-1', 1, 0);
SELECT count(*) FROM eventstore.read_stream('invoice-404');

-- read_all pages by position, in position order, optionally by category
SELECT min(global_position) - 1 AS start FROM eventstore.events
WHERE stream_id = 'invoice-1' \gset
SELECT stream_id, stream_version, event_type
FROM eventstore.read_all(:start) WHERE stream_id IN ('invoice-1', 'invoice-2', 'receipt-1');
SELECT stream_id, stream_version FROM eventstore.read_all(:start, 2);
SELECT stream_id, stream_version FROM eventstore.read_all(:start, 100, 'receipt');
SELECT bool_and(global_position > :start) AND count(*) = 5 AS ordered_and_complete
FROM eventstore.read_all(:start);

-- nothing is open: the horizon is past the last position
SELECT eventstore.read_horizon() = max(global_position) + 1 FROM eventstore.events;
SELECT count(*) FROM eventstore.horizon_holders;

-- our own open write holds the horizon at the first position it may take
BEGIN;
SELECT eventstore.append('invoice-3', 0, '{"type": "A", "data": 6}');
SELECT holds_from_position = (SELECT global_position FROM eventstore.events WHERE stream_id = 'invoice-3')
FROM eventstore.horizon_holders WHERE pid = pg_backend_pid();
SELECT count(*) FROM eventstore.read_all(:start) WHERE stream_id = 'invoice-3';
COMMIT;
SELECT count(*) FROM eventstore.read_all(:start) WHERE stream_id = 'invoice-3';

-- read_all needs READ COMMITTED
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM eventstore.read_all();
ROLLBACK;

-- events are immutable
UPDATE eventstore.events SET data = '0' WHERE stream_id = 'invoice-1';
DELETE FROM eventstore.events WHERE stream_id = 'invoice-1';
TRUNCATE eventstore.events;
SELECT count(*) FROM eventstore.events WHERE stream_id = 'invoice-1';
