# Part of bench/run: append throughput against a plain INSERT of the same
# rows into a table of the same shape with the same indexes (pgbench, 8
# clients, prepared statements, new streams), for 1- and 100-event
# transactions; then the cost of a route (an outbox row written too).
# The relay is off here, so that it takes no CPU from the appenders.

bench_append() {
	local events one
	bench_relay ''
	bench_psql <<'SQL'
CREATE TABLE plain_events (LIKE eventstore.events INCLUDING ALL);
CREATE INDEX ON plain_events (category, global_position);
CREATE TABLE plain_streams (LIKE eventstore.streams INCLUDING ALL);
SQL
	# The same input on both sides: the events as JSON, sent as a parameter
	one='{"type": "Placed", "data": {"total": 30, "currency": "EUR"}}'
	events=$(bench_value "SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'data',
		jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3))) FROM generate_series(1, 100) i")

	bench_script es1 <<'SQL'
SELECT eventstore.append('b1-' || :client_id || '-' || random(), 0, :one);
SQL
	bench_script plain1 <<'SQL'
INSERT INTO plain_events (stream_id, stream_version, event_id, event_type, data)
SELECT 'p1-' || :client_id || '-' || random(), 1, gen_random_uuid(), e ->> 'type', e -> 'data'
FROM (SELECT :one::jsonb) AS x(e);
SQL
	bench_script head1 <<'SQL'
WITH head AS (INSERT INTO plain_streams VALUES ('h1-' || :client_id || '-' || random(), 1)
	ON CONFLICT DO NOTHING RETURNING stream_id)
INSERT INTO plain_events (stream_id, stream_version, event_id, event_type, data)
SELECT stream_id, 1, gen_random_uuid(), e ->> 'type', e -> 'data'
FROM head, (SELECT :one::jsonb) AS x(e);
SQL
	bench_script es100 <<'SQL'
SELECT eventstore.append('b100-' || :client_id || '-' || random(), 0, :events);
SQL
	bench_script plain100 <<'SQL'
INSERT INTO plain_events (stream_id, stream_version, event_id, event_type, data)
SELECT 'p100-' || :client_id || '-' || random(), o, gen_random_uuid(), e ->> 'type', e -> 'data'
FROM jsonb_array_elements(:events::jsonb) WITH ORDINALITY AS x(e, o);
SQL
	bench_script routed1 <<'SQL'
SELECT eventstore.append('order-' || :client_id || '-' || random(), 0, :one);
SQL

	bench_alternate plain1 es1 -D one="$one"
	bench_result "append, 1 event per transaction (tps)" "$(bench_fmt 0 "$tps_es")" \
		"$(bench_fmt 0 "$tps_base") INSERT of 1 row" "$(bench_fmt 2 "$ratio")" ">= 0.90" \
		"$(bench_verdict "$ratio" '>=' 0.90)"
	bench_alternate head1 es1 -D one="$one"
	bench_result "append, 1 event: vs INSERT + stream-head upsert (tps)" "$(bench_fmt 0 "$tps_es")" \
		"$(bench_fmt 0 "$tps_base") head + row" "$(bench_fmt 2 "$ratio")" "(context)" ""
	bench_alternate plain100 es100 -D events="$events"
	bench_result "append, 100 events per transaction (tps)" "$(bench_fmt 0 "$tps_es")" \
		"$(bench_fmt 0 "$tps_base") INSERT of 100 rows" "$(bench_fmt 2 "$ratio")" ">= 0.85" \
		"$(bench_verdict "$ratio" '>=' 0.85)"
	bench_psql -c "SELECT eventstore.add_route('order', 'orders')" >/dev/null
	bench_alternate es1 routed1 -D one="$one"
	bench_result "append, 1 event, route active (tps)" "$(bench_fmt 0 "$tps_es")" \
		"$(bench_fmt 0 "$tps_base") same, no route" "$(bench_fmt 2 "$ratio")" "(cost)" ""
	bench_psql -c "SELECT eventstore.remove_route('order')" -c 'TRUNCATE eventstore.outbox' \
		-c 'DROP TABLE plain_events, plain_streams' >/dev/null
}
