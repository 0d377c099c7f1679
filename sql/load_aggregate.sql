-- load_aggregate(), save_snapshot() and register_aggregate().

-- no reducer: the snapshot (none yet) and every event, for the caller to fold
SELECT eventstore.append('account-1', 0, '[
	{"id": "44444444-4444-4444-8444-444444444401", "type": "Opened", "data": {"balance": 0}},
	{"id": "44444444-4444-4444-8444-444444444402", "type": "Deposited", "data": {"amount": 5}, "metadata": {"by": "atm"}},
	{"id": "44444444-4444-4444-8444-444444444403", "type": "Deposited", "data": {"amount": 7}}
]');
SELECT stream_id, version, state, snapshot_version,
	   jsonb_path_query_array(events, '$[*].type') AS types,
	   jsonb_path_query_array(events, '$[*].version') AS versions,
	   events -> 1 -> 'id' AS id, events -> 1 -> 'metadata' AS metadata,
	   events -> 1 -> 'data' AS data,
	   (events -> 1 ->> 'position')::bigint > 0 AS has_position,
	   (events -> 1 ->> 'recorded_at')::timestamptz <= now() AS has_recorded_at
FROM eventstore.load_aggregate('account-1');

-- the application folds and saves a snapshot; the next load starts there
SELECT eventstore.save_snapshot('account-1', 2, '{"balance": 5}');
SELECT version, state, snapshot_version, jsonb_path_query_array(events, '$[*].version')
FROM eventstore.load_aggregate('account-1');
-- as_of_version: the stream as it was
SELECT version, state, snapshot_version, jsonb_path_query_array(events, '$[*].version')
FROM eventstore.load_aggregate('account-1', 1);
SELECT version, state, snapshot_version, events FROM eventstore.load_aggregate('account-1', 0);
-- a stream without events
SELECT stream_id, version, state, snapshot_version, events FROM eventstore.load_aggregate('account-404');
-- saving again at the same version replaces the state
SELECT eventstore.save_snapshot('account-1', 2, '{"balance": 5, "fixed": true}');
SELECT state FROM eventstore.load_aggregate('account-1');

-- a reducer, folded in the database
CREATE FUNCTION balance_reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT CASE event.event_type
		WHEN 'Opened' THEN jsonb_build_object('balance', 0, 'events', 1)
		ELSE jsonb_build_object(
			'balance', (state ->> 'balance')::numeric + coalesce((event.data ->> 'amount')::numeric, 0),
			'events', coalesce((state ->> 'events')::int, 0) + 1)
	END
$$;
SELECT eventstore.register_aggregate('account', 'balance_reducer(jsonb, eventstore.events)', 3);
-- the application's snapshot was of revision 0: ignored by revision 1
SELECT version, state, snapshot_version, events FROM eventstore.load_aggregate('account-1');
-- three events folded = snapshot_every: a snapshot was written
SELECT stream_version, state, revision FROM eventstore.snapshots
WHERE stream_id = 'account-1' ORDER BY revision, stream_version;
-- the next load starts from it and folds the new event only
SELECT eventstore.append('account-1', 3, '{"type": "Deposited", "data": {"amount": 1}}');
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('account-1');
SELECT count(*) FROM eventstore.snapshots WHERE stream_id = 'account-1' AND revision = 1;
-- as_of_version uses the newest snapshot at or below it
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('account-1', 2);

-- a new revision ignores the old snapshots
SELECT eventstore.register_aggregate('account', 'balance_reducer(jsonb, eventstore.events)', 100, 2);
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('account-1');
SELECT category, reducer, snapshot_every, revision FROM eventstore.aggregates;

-- a read-only transaction folds but writes no snapshot
SELECT eventstore.register_aggregate('account', 'balance_reducer(jsonb, eventstore.events)', 1, 3);
BEGIN READ ONLY;
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('account-1');
COMMIT;
SELECT count(*) FROM eventstore.snapshots WHERE revision = 3;
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('account-1');
SELECT count(*) FROM eventstore.snapshots WHERE revision = 3;

-- save_snapshot under a reducer writes that revision
SELECT eventstore.save_snapshot('account-1', 4, '{"balance": 99}');
SELECT state, snapshot_version FROM eventstore.load_aggregate('account-1');

-- a reducer that fails: the error reaches the caller
CREATE FUNCTION failing_reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'reducer failed on %', event.event_type; END $$;
SELECT eventstore.append('crash-1', 0, '{"type": "Boom", "data": {}}');
SELECT eventstore.register_aggregate('crash', 'failing_reducer(jsonb, eventstore.events)');
SELECT * FROM eventstore.load_aggregate('crash-1');

-- One snapshot per answer: the version, the snapshot and the folded events
-- agree, also when the stream moved earlier in the same statement, and the
-- snapshot stored is the fold of exactly the reported version
CREATE FUNCTION counting_reducer(state jsonb, event eventstore.events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT to_jsonb(coalesce(state::int, 0) + 1) $$;
SELECT eventstore.register_aggregate('acct', 'counting_reducer(jsonb, eventstore.events)', 1);
SELECT eventstore.append_event('acct-1', 0, 'x', '{}');
SELECT l.version, l.state FROM (SELECT eventstore.append_event('acct-1', NULL, 'x', '{}') v OFFSET 0) a,
	LATERAL eventstore.load_aggregate('acct-1', a.v) l;
SELECT version, state, snapshot_version FROM eventstore.load_aggregate('acct-1');
SELECT stream_version, state FROM eventstore.snapshots WHERE stream_id = 'acct-1' ORDER BY 1;
-- without as_of_version too
SELECT l.version, l.state FROM (SELECT eventstore.append_event('acct-1', NULL, 'x', '{}') v OFFSET 0) a,
	LATERAL eventstore.load_aggregate('acct-1') l;
SELECT bool_and(state::int = stream_version) AS snapshots_match_versions
FROM eventstore.snapshots WHERE stream_id = 'acct-1';
