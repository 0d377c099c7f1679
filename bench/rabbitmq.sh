# Part of bench/run: the RabbitMQ sink (bench/run started rabbitmq-server,
# $amqp_port, and PostgreSQL with eventstore.rabbitmq_url set).
#
# Drain: $1 routed events (streams of 100) committed in one transaction
# while the relay is connected and idle; the time from that commit until
# the outbox is empty (every message confirmed by the broker) is compared
# with RabbitMQ's own limit measured in the same run: the same messages
# (keys, bodies, CloudEvents AMQP headers) published by rabbitmq-c alone,
# the way the sink does (persistent, mandatory, publisher confirms, one
# channel), no database (bench/produce_rabbitmq).  Target: at least 0.5
# of the library's rate (the relay also reads and deletes the outbox rows).
#
# Latency: one-event transactions at 1,000 per second for $2 seconds
# (pgbench --rate), consumed by test/tools/amqp_consume --timestamps; a
# message's latency is its arrival minus its event's recorded_at (the
# append's transaction start, so a little more than commit -> consumer).
# The baseline: the same consumer reading messages published straight to
# the broker by produce_rabbitmq (its floor).  Target: p99 <= 10 ms.

# p50, p99 and max (ms) of arrival - cloudEvents_time over JSON lines on stdin
bench_rabbitmq_latencies() {
	python3 -c '
import json, sys, datetime
lat = []
for line in sys.stdin:
    m = json.loads(line)
    t = m["headers"].get("cloudEvents_time")
    if t is None:
        continue
    sent = datetime.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1e6
    lat.append((m["received_us"] - sent) / 1000.0)
lat.sort()
if not lat:
    print("count=0 p50_ms= p99_ms= max_ms=")
else:
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    print("count=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f" % (len(lat), q(0.5), q(0.99), lat[-1]))
'
}

bench_rabbitmq() {
	local n=${1:-100000} secs=${2:-30} streams out relay commit producer ratio lat p99 floor
	local consumer
	streams=$((n / 100))
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-drain --queue bench-drain-q --setup-only
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-drain-lib --queue bench-drain-lib-q --setup-only
	bench_psql >/dev/null <<'SQL'
CREATE OR REPLACE PROCEDURE bench_rmq_drain(streams int, per_stream int,
	INOUT commit_seconds float8 DEFAULT NULL, INOUT drain_seconds float8 DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
	events jsonb := (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded',
		'data', jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3))) FROM generate_series(1, per_stream) i);
	t0 timestamptz := clock_timestamp();
	t1 timestamptz;
BEGIN
	PERFORM eventstore.append('rmqdrain-' || i, 0, events) FROM generate_series(1, streams) i;
	COMMIT;
	t1 := clock_timestamp();
	commit_seconds := extract(epoch FROM t1 - t0);
	WHILE EXISTS (SELECT FROM eventstore.outbox) LOOP
		PERFORM pg_sleep(0.005);
	END LOOP;
	drain_seconds := extract(epoch FROM clock_timestamp() - t1);
END
$$;
SELECT eventstore.add_route('rmqdrain', 'bench-drain', 'rabbitmq');
SQL
	bench_psql -c "SELECT eventstore.publish('bench-drain', 'warm-up', '{}', NULL, 'rabbitmq')" >/dev/null
	bench_wait_drained 60
	out=$(bench_value "CALL bench_rmq_drain($streams, 100)")
	commit=${out%|*}
	relay=${out#*|}

	# The same messages through rabbitmq-c alone, to an exchange of their own
	bench_value "SELECT json_build_object('topic', 'bench-drain-lib', 'key', e.stream_id,
		'value', e.data::text, 'headers', eventstore.cloudevent_headers(e, '/eventstore/postgres'))
		FROM eventstore.events e WHERE category = 'rmqdrain' ORDER BY global_position" > "$work/rmq.jsonl"
	out=$(bench/produce_rabbitmq --port "$amqp_port" --input "$work/rmq.jsonl")
	echo "  rabbitmq-c alone: $out" >&2
	producer=$(bench_field seconds "$out")
	rm -f "$work/rmq.jsonl"
	# Empty the queues (the broker's memory and disk are not the relay's figures)
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-drain --queue bench-drain-q \
		--count "$((n + 1))" --timeout 120 >/dev/null || true
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-drain-lib --queue bench-drain-lib-q \
		--count "$n" --timeout 120 >/dev/null || true

	ratio=$(bench_div "$producer" "$relay")
	bench_result "RabbitMQ drain of $n committed events (messages/s)" "$(bench_fmt 0 "$(bench_div $n "$relay")")" \
		"$(bench_fmt 0 "$(bench_div $n "$producer")") rabbitmq-c alone" "$(bench_fmt 2 "$ratio")" ">= 0.5" \
		"$(bench_verdict "$ratio" '>=' 0.5)"
	bench_result "  appending them in one transaction (s)" "$(bench_fmt 2 "$commit")" "" "" "" ""

	# Latency at 1,000 events/s
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-lat --queue bench-lat-q --setup-only
	bench_psql -c "SELECT eventstore.add_route('rmqlat', 'bench-lat', 'rabbitmq')" >/dev/null
	bench_script rmqlat <<'SQL'
\set s random(1, 1000)
SELECT eventstore.append_event('rmqlat-' || :s, NULL, 'Tick', '{"x": 1}');
SQL
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-lat --queue bench-lat-q \
		--count "$((secs * 1000))" --timeout "$((secs + 30))" --timestamps > "$work/rmqlat.out" &
	consumer=$!
	sleep 0.5
	bench_pgbench -n -c 4 -j 2 -R 1000 -T "$secs" -f "$work/rmqlat.sql" >/dev/null 2>&1
	wait "$consumer" || true
	lat=$(bench_rabbitmq_latencies < "$work/rmqlat.out")
	echo "  relay: $lat" >&2

	# The floor: the broker alone, same consumer, same rate
	bench_value "SELECT json_build_object('topic', 'bench-lat-floor', 'key', 'k' || i,
		'value', '{\"x\": 1}', 'headers', json_build_object('ce_id', 'f' || i,
		'ce_time', 'now')) FROM generate_series(1, $((secs * 1000))) i" > "$work/rmqfloor.jsonl"
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-lat-floor --queue bench-lat-floor-q --setup-only
	test/tools/amqp_consume --port "$amqp_port" --exchange bench-lat-floor --queue bench-lat-floor-q \
		--count "$((secs * 1000))" --timeout "$((secs + 30))" --timestamps > "$work/rmqfloor.out" &
	consumer=$!
	sleep 0.5
	bench/produce_rabbitmq --port "$amqp_port" --input "$work/rmqfloor.jsonl" --rate 1000 >/dev/null
	wait "$consumer" || true
	floor=$(bench_rabbitmq_latencies < "$work/rmqfloor.out")
	echo "  floor: $floor" >&2
	rm -f "$work/rmqlat.out" "$work/rmqfloor.out" "$work/rmqfloor.jsonl"

	p99=$(bench_field p99_ms "$lat")
	bench_result "RabbitMQ latency commit -> consumer, 1,000/s: p50 (ms)" "$(bench_field p50_ms "$lat")" \
		"$(bench_field p50_ms "$floor") broker floor" "" "" ""
	bench_result "RabbitMQ latency commit -> consumer, 1,000/s: p99 (ms)" "$p99" \
		"$(bench_field p99_ms "$floor") broker floor" "" "<= 10 ms" "$(bench_verdict "${p99:-1e9}" '<=' 10)"
	bench_result "  messages measured" "$(bench_field count "$lat") of $((secs * 1000))" "" "" "" ""
	bench_psql -c "SELECT eventstore.remove_route('rmqdrain')" -c "SELECT eventstore.remove_route('rmqlat')" >/dev/null
}
