-- Every bad input: a clear error with a proper SQLSTATE, and nothing written.
-- try(sql) runs one statement and shows its SQLSTATE and message.
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE sql;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;
SELECT count(*) AS events_before FROM eventstore.events \gset
SELECT count(*) AS streams_before FROM eventstore.streams \gset

-- stream id
SELECT try($$SELECT eventstore.append(NULL, 0, '{"type": "A", "data": 1}')$$);
SELECT try($$SELECT eventstore.append('', 0, '{"type": "A", "data": 1}')$$);
-- events: NULL, scalar, empty array, array of non-objects
SELECT try($$SELECT eventstore.append('bad-1', 0, NULL)$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '42')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '"x"')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '[]')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '[1]')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '[{"type": "A", "data": 1}, null]')$$);
-- event fields
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"data": 1}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A"}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "", "data": 1}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": 7, "data": 1}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A", "data": 1, "id": "not-a-uuid"}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A", "data": 1, "id": 12}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A", "data": 1, "metadata": [1]}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A", "data": 1, "metadata": "m"}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A", "data": 1, "metadata": null}')$$);
SELECT try($$SELECT eventstore.append('bad-1', 0, '{"type": "A", "data": 1, "payload": 1}')$$);
-- the first events are fine, a later one is not: nothing is written
SELECT try($$SELECT eventstore.append('bad-1', 0, '[{"type": "A", "data": 1}, {"type": "B"}]')$$);
-- the same id twice in one call
SELECT try($$SELECT eventstore.append('bad-1', 0, '[
	{"id": "55555555-5555-4555-8555-555555555555", "type": "A", "data": 1},
	{"id": "55555555-5555-4555-8555-555555555555", "type": "B", "data": 2}]')$$);
-- expected_version
SELECT try($$SELECT eventstore.append('bad-1', -1, '{"type": "A", "data": 1}')$$);
SELECT try($$SELECT eventstore.append_event('bad-1', -5, 'A', '1')$$);
-- append_event arguments
SELECT try($$SELECT eventstore.append_event(NULL, 0, 'A', '1')$$);
SELECT try($$SELECT eventstore.append_event('', 0, 'A', '1')$$);
SELECT try($$SELECT eventstore.append_event('bad-1', 0, NULL, '1')$$);
SELECT try($$SELECT eventstore.append_event('bad-1', 0, '', '1')$$);
SELECT try($$SELECT eventstore.append_event('bad-1', 0, 'A', NULL)$$);
SELECT try($$SELECT eventstore.append_event('bad-1', 0, 'A', '1', '[]')$$);
SELECT try($$SELECT eventstore.append_event('bad-1', 0, 'A', '1', '3')$$);
SELECT try($$SELECT eventstore.append_event('bad-1', 0, 'A', '1', NULL, 'zzz')$$);

-- reads
SELECT try($$SELECT * FROM eventstore.read_stream(NULL)$$);
SELECT try($$SELECT * FROM eventstore.read_stream('bad-1', 1, -1)$$);
SELECT try($$SELECT * FROM eventstore.read_all(0, -1)$$);
SELECT try($$SELECT * FROM eventstore.load_aggregate(NULL)$$);
SELECT try($$SELECT * FROM eventstore.load_aggregate('')$$);
SELECT try($$SELECT * FROM eventstore.load_aggregate('bad-1', -1)$$);
SELECT try($$SELECT * FROM eventstore.load_aggregate('bad-1', 3)$$);

-- snapshots
SELECT try($$SELECT eventstore.save_snapshot(NULL, 1, '{}')$$);
SELECT try($$SELECT eventstore.save_snapshot('bad-1', NULL, '{}')$$);
SELECT try($$SELECT eventstore.save_snapshot('bad-1', 1, NULL)$$);
SELECT try($$SELECT eventstore.save_snapshot('bad-1', 0, '{}')$$);
SELECT try($$SELECT eventstore.save_snapshot('bad-1', 1, '{}')$$);

-- reducers with the wrong signature, and other registration errors
CREATE FUNCTION wrong_args(state jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION wrong_event(state jsonb, event jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION wrong_return(state jsonb, event eventstore.events) RETURNS text LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION wrong_strict(state jsonb, event eventstore.events) RETURNS jsonb
	LANGUAGE sql STRICT AS 'SELECT state';
CREATE FUNCTION good_reducer(state jsonb, event eventstore.events) RETURNS jsonb
	LANGUAGE sql AS 'SELECT state';
SELECT try($$SELECT eventstore.register_aggregate('bad', 'wrong_args(jsonb)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'wrong_event(jsonb, jsonb)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'wrong_return(jsonb, eventstore.events)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'wrong_strict(jsonb, eventstore.events)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'no_such_function(jsonb, eventstore.events)')$$);
SELECT try($$SELECT eventstore.register_aggregate(NULL, 'good_reducer(jsonb, eventstore.events)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', NULL)$$);
SELECT try($$SELECT eventstore.register_aggregate('', 'good_reducer(jsonb, eventstore.events)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad-x', 'good_reducer(jsonb, eventstore.events)')$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'good_reducer(jsonb, eventstore.events)', 0)$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'good_reducer(jsonb, eventstore.events)', 10, 0)$$);
SELECT try($$SELECT eventstore.register_aggregate('bad', 'good_reducer(jsonb, eventstore.events)', NULL)$$);

-- nothing was written by any of the above
SELECT count(*) = :events_before AS no_events, (SELECT count(*) FROM eventstore.streams) = :streams_before AS no_streams,
	   (SELECT count(*) FROM eventstore.aggregates WHERE category = 'bad') AS no_aggregate,
	   (SELECT count(*) FROM eventstore.snapshots WHERE stream_id = 'bad-1') AS no_snapshot
FROM eventstore.events;

-- an expected version whose next versions would overflow
SELECT eventstore.append_event('overflow-1', 9223372036854775807, 'A', '{}');
SELECT eventstore.append('overflow-1', 9223372036854775806, '[{"type": "A", "data": 1}, {"type": "B", "data": 2}]');
SELECT eventstore.append_event('overflow-1', 9223372036854775806, 'A', '{}');
