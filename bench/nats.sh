# Part of bench/run: the NATS JetStream sink, against a real nats-server
# (test/tools/brokers.sh, on loopback) started for this part and stopped
# after it.
#
# Drain: 100 events in each of <streams> streams (1,000: 100,000 events),
# routed to NATS, appended in one transaction while the relay is connected
# and idle; the time from that commit until the relay has recorded every one
# as acknowledged by the stream.  The baseline is NATS's own limit measured in
# the same run: the same messages (subject, data, CloudEvents NATS headers,
# Nats-Msg-Id) published asynchronously by nats.c alone (bench/produce_nats),
# to a stream of their own, no database, at most 10,000 unacknowledged (the
# relay's default window).
#
# Latency: one-event transactions at a steady 1,000 per second (4
# connections) routed to NATS; an ordered JetStream consumer notes when each
# arrives (bench/produce_nats --latency): commit -> consumer p50/p99/max.  The
# baseline is NATS's floor: the same subjects published straight to
# JetStream and consumed the same way.
#
# Appends TSV lines to $results (name, eventstore, baseline, ratio, target,
# verdict) like the other parts.  Usage: bench_nats [streams] [latency seconds]

bench_nats() {
	local streams=${1:-1000} secs=${2:-30} n nport url out relay commit producer ratio p99 floor
	n=$((streams * 100))
	nport=$(test/tools/brokers.sh nats-start "$work/nats")
	url="nats://127.0.0.1:$nport"
	test/tools/nats_tool --port "$nport" stream-add NATS_DRAIN nats-drain 'nats-drain.>'
	test/tools/nats_tool --port "$nport" stream-add NATS_DRAIN_PRODUCER nats-drain-producer 'nats-drain-producer.>'
	test/tools/nats_tool --port "$nport" stream-add NATS_LATENCY nats-latency 'nats-latency.>'
	test/tools/nats_tool --port "$nport" stream-add NATS_LATENCY_FLOOR nats-latency-floor 'nats-latency-floor.>'

	bench_psql >/dev/null <<'SQL'
CREATE OR REPLACE PROCEDURE bench_drain_nats(streams int, per_stream int,
	INOUT commit_seconds float8 DEFAULT NULL, INOUT drain_seconds float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
	events jsonb := (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded',
		'data', jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3))) FROM generate_series(1, per_stream) i);
	t0 timestamptz := clock_timestamp();
	t1 timestamptz;
BEGIN
	PERFORM eventstore.append('ndrain-' || i, 0, events) FROM generate_series(1, streams) i;
	COMMIT;
	t1 := clock_timestamp();
	commit_seconds := extract(epoch FROM t1 - t0);
	WHILE EXISTS (SELECT FROM eventstore.outbox WHERE sink = 'nats') LOOP
		PERFORM pg_sleep(0.005);
	END LOOP;
	drain_seconds := extract(epoch FROM clock_timestamp() - t1);
END
$$;
SELECT eventstore.add_route('ndrain', 'nats-drain', 'nats');
SQL
	bench_psql -c "ALTER SYSTEM SET eventstore.nats_url = '$url'" -c 'SELECT pg_reload_conf()' >/dev/null
	bench_psql -c "SELECT eventstore.publish('nats-drain', 'warm-up', '{}', NULL, 'nats')" >/dev/null
	bench_wait_drained 60

	out=$(bench_value "CALL bench_drain_nats($streams, 100)")
	commit=${out%|*}
	relay=${out#*|}

	# The same messages through nats.c alone, to a stream of their own
	bench_value "SELECT json_build_object('subject', 'nats-drain-producer.' || e.stream_id,
		'data', e.data::text,
		'headers', (SELECT jsonb_object_agg(CASE WHEN k LIKE 'ce\_%' THEN 'ce-' || substr(k, 4) ELSE k END, v)
			FROM jsonb_each_text(eventstore.cloudevent_headers(e, '/eventstore/postgres')) AS h(k, v))
			|| jsonb_build_object('Nats-Msg-Id', e.event_id::text))
		FROM eventstore.events e WHERE category = 'ndrain' ORDER BY global_position" > "$work/nats-drain.jsonl"
	out=$(bench/produce_nats --url "$url" --input "$work/nats-drain.jsonl")
	echo "  nats.c alone: $out" >&2
	producer=$(bench_field seconds "$out")
	rm -f "$work/nats-drain.jsonl"

	ratio=$(bench_div "$producer" "$relay")
	bench_result "NATS: relay drain of $n committed events (messages/s)" "$(bench_fmt 0 "$(bench_div $n "$relay")")" \
		"$(bench_fmt 0 "$(bench_div $n "$producer")") nats.c alone" "$(bench_fmt 2 "$ratio")" ">= 0.5" \
		"$(bench_verdict "$ratio" '>=' 0.5)"
	bench_result "  NATS relay: commit -> all acknowledged (s)" "$(bench_fmt 2 "$relay")" "" "" "" ""
	bench_result "  NATS limit: nats.c publishing alone (s)" "$(bench_fmt 2 "$producer")" "" "" "" ""
	bench_result "  appending them in one transaction (s)" "$(bench_fmt 2 "$commit")" "" "" "" ""

	# Commit -> consumer at 1,000/s, and NATS's own floor
	bench_psql -c "SELECT eventstore.add_route('nlat', 'nats-latency', 'nats')" >/dev/null
	out=$(bench/produce_nats --url "$url" --latency --conninfo "host=$work port=$port user=postgres dbname=postgres" \
		--category nlat --subject-prefix nats-latency --rate 1000 --seconds "$secs") || true
	floor=$(bench/produce_nats --url "$url" --latency --calibrate --subject-prefix nats-latency-floor \
		--rate 1000 --seconds "$secs") || true
	echo "  relay: $out" >&2
	echo "  floor: $floor" >&2
	p99=$(bench_field p99_ms "$out")
	bench_result "NATS: latency commit -> consumer, 1,000/s: p50 (ms)" "$(bench_field p50_ms "$out")" \
		"$(bench_field p50_ms "$floor") NATS floor" "" "" ""
	bench_result "NATS: latency commit -> consumer, 1,000/s: p99 (ms)" "$p99" \
		"$(bench_field p99_ms "$floor") NATS floor" "" "<= 10 ms" "$(bench_verdict "$p99" '<=' 10)"
	bench_result "  NATS: achieved rate (appends/s), missing messages" \
		"$(bench_field rate "$out"), $(bench_field missing "$out") missing" "" "" "" ""

	bench_psql -c "SELECT eventstore.remove_route('nlat')" -c "SELECT eventstore.remove_route('ndrain')" \
		-c 'ALTER SYSTEM RESET eventstore.nats_url' -c 'SELECT pg_reload_conf()' >/dev/null
	test/tools/brokers.sh nats-stop "$work/nats"
}
