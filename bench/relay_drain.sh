# Part of bench/run: relay drain.  200,000 routed events (2,000 streams of
# 100) are committed in one transaction while the relay is connected and
# idle; the time from that commit until the relay has recorded every one as
# acknowledged by the broker is compared with the two limits of the job,
# measured in the same run on the same messages:
#  (a) the database: draining the same outbox rows with a plain batched
#      DELETE ... RETURNING (1,000 a transaction, joined with their events,
#      as a relay must read them), no Kafka;
#  (b) the producer: producing the same messages (key, value, CloudEvents
#      headers) with librdkafka alone (bench/produce_only), no database.
# The relay keeps producing while acknowledgements are pending, so the
# database work is its limit: the target is at least 0.75 of (a)'s rate.
# Last, the peer: the same rows, copied into an outbox table of their own,
# drained to a topic of their own by the relay most teams write by hand
# (bench/peer_relay.py: Python, psycopg2 and confluent-kafka; a round
# selects 1,000 rows FOR UPDATE SKIP LOCKED joined with their events,
# produces them, flushes, deletes them and commits); eventstore's relay
# should drain at least twice as fast.

bench_relay_drain() {
	local streams=${1:-2000} n relay commit db producer ratio out peer
	n=$((streams * 100))
	bench_psql >/dev/null <<'SQL'
CREATE OR REPLACE PROCEDURE bench_drain(streams int, per_stream int,
	INOUT commit_seconds float8 DEFAULT NULL, INOUT drain_seconds float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
	events jsonb := (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded',
		'data', jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3))) FROM generate_series(1, per_stream) i);
	t0 timestamptz := clock_timestamp();
	t1 timestamptz;
BEGIN
	PERFORM eventstore.append('drain-' || i, 0, events) FROM generate_series(1, streams) i;
	COMMIT;
	t1 := clock_timestamp();
	commit_seconds := extract(epoch FROM t1 - t0);
	-- Done when the relay has deleted every row as acknowledged (the moment
	-- it counts them in sent_total).  relay_status() would count the whole
	-- outbox at each look: 30 ms a look, a core's worth at this pace.
	WHILE EXISTS (SELECT FROM eventstore.outbox) LOOP
		PERFORM pg_sleep(0.005);
	END LOOP;
	drain_seconds := extract(epoch FROM clock_timestamp() - t1);
END
$$;
SELECT eventstore.add_route('drain', 'drain');
SQL
	# The relay connected and idle, as in production
	bench_relay "$bootstrap"
	bench_psql -c "SELECT eventstore.publish('drain', 'warm-up', '{}')" >/dev/null
	bench_wait_drained 60

	out=$(bench_value "CALL bench_drain($streams, 100)")
	commit=${out%|*}
	relay=${out#*|}

	# (b) the same messages through librdkafka alone, to a topic of their own
	bench_value "SELECT json_build_object('topic', 'drain-producer', 'key', e.stream_id,
		'value', e.data::text, 'headers', eventstore.cloudevent_headers(e, '/eventstore/postgres'))
		FROM eventstore.events e WHERE category = 'drain' ORDER BY global_position" > "$work/drain.jsonl"
	out=$(bench/produce_only --brokers "$bootstrap" --input "$work/drain.jsonl")
	producer=$(bench_field seconds "$out")
	rm -f "$work/drain.jsonl"

	# (a) the same rows drained by plain SQL, the relay off
	bench_relay ''
	bench_psql >/dev/null <<'SQL'
CREATE TABLE plain_outbox (LIKE eventstore.outbox INCLUDING ALL);
INSERT INTO plain_outbox (topic, message_key, event_position)
	SELECT 'drain', stream_id, global_position FROM eventstore.events
	WHERE category = 'drain' ORDER BY global_position;
SQL
	bench_script drain <<'SQL'
WITH batch AS (
	DELETE FROM plain_outbox WHERE id IN (SELECT id FROM plain_outbox ORDER BY id LIMIT 1000)
	RETURNING id, topic, message_key, event_position)
SELECT b.id, b.topic, b.message_key, e.* FROM batch b
JOIN eventstore.events e ON e.global_position = b.event_position ORDER BY b.id;
SQL
	out=$(bench_pgbench -n -M prepared -c 1 -t $((n / 1000)) -f "$work/drain.sql" 2>&1)
	db=$(bench_div $((n / 1000)) "$(bench_tps_of <<<"$out")")
	[ "$(bench_value 'SELECT count(*) FROM plain_outbox')" = 0 ] || { echo "bench: plain drain left rows" >&2; return 1; }
	bench_psql -c 'DROP TABLE plain_outbox' >/dev/null

	# The peer: the same rows drained by a hand-written relay, the relay off
	bench_psql >/dev/null <<'SQL'
CREATE TABLE peer_outbox (LIKE eventstore.outbox INCLUDING ALL);
INSERT INTO peer_outbox (topic, message_key, event_position)
	SELECT 'drain-peer', stream_id, global_position FROM eventstore.events
	WHERE category = 'drain' ORDER BY global_position;
ANALYZE peer_outbox;
SQL
	out=$(bench/peer_relay.py "host=$work port=$port user=postgres dbname=postgres" "$bootstrap" \
		peer_outbox drain-peer)
	echo "  peer: $out" >&2
	peer=$(bench_field seconds "$out")
	[ "$(bench_field messages "$out")" = "$n" ] || { echo "bench: the peer relay sent $out" >&2; return 1; }
	[ "$(bench_value 'SELECT count(*) FROM peer_outbox')" = 0 ] || { echo "bench: the peer relay left rows" >&2; return 1; }
	bench_psql -c 'DROP TABLE peer_outbox' >/dev/null

	ratio=$(bench_div "$db" "$relay")
	bench_result "relay drain of $n committed events (messages/s)" "$(bench_fmt 0 "$(bench_div $n "$relay")")" \
		"$(bench_fmt 0 "$(bench_div $n "$db")") database limit (a)" "$(bench_fmt 2 "$ratio")" ">= 0.75" \
		"$(bench_verdict "$ratio" '>=' 0.75)"
	bench_result "  relay: commit -> all acknowledged (s)" "$(bench_fmt 2 "$relay")" "" "" "" ""
	bench_result "  (a) database limit: batched DELETE ... RETURNING (s)" "$(bench_fmt 2 "$db")" "" "" "" ""
	bench_result "  (b) producer limit: librdkafka alone (s)" "$(bench_fmt 2 "$producer")" "" "" "" ""
	bench_result "  appending them in one transaction (s)" "$(bench_fmt 2 "$commit")" "" "" "" ""
	ratio=$(bench_div "$peer" "$relay")
	bench_result "relay drain vs a hand-written relay (messages/s)" "$(bench_fmt 0 "$(bench_div $n "$relay")")" \
		"$(bench_fmt 0 "$(bench_div $n "$peer")") peer relay" "$(bench_fmt 2 "$ratio")" ">= 2x" \
		"$(bench_verdict "$ratio" '>=' 2)"
}
