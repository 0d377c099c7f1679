# Part of bench/run: latency from commit to consumer.  One-event
# transactions at a steady 1,000 per second for 30 seconds
# (bench/commit_to_consume: 4 connections, each append timed from the
# moment its commit returned until a Kafka consumer on the test broker
# received the message).  The baseline is the test broker's own floor:
# the same messages produced straight to it with librdkafka and consumed
# the same way, no database.
#
# Then a sparse load: one event per second for 60 seconds, each commit
# waking an idle relay (the wake-up after the committing transaction
# released its locks); its max is the wake-up's worst case.

bench_latency_part() {
	local secs=${1:-30} out floor p99
	bench_relay "$bootstrap"
	echo "create_topic latency 4" > "$work/mock.in"
	echo "create_topic latency-floor 4" > "$work/mock.in"
	bench_psql -c "SELECT eventstore.add_route('lat', 'latency')" >/dev/null
	sleep 1

	out=$(bench/commit_to_consume --conninfo "host=$work port=$port user=postgres dbname=postgres" \
		--brokers "$bootstrap" --topic latency --category lat --rate 1000 --seconds "$secs")
	floor=$(bench/commit_to_consume --brokers "$bootstrap" --topic latency-floor --category floor \
		--rate 1000 --seconds "$secs" --calibrate)
	echo "  relay: $out" >&2
	echo "  floor: $floor" >&2
	p99=$(bench_field p99_ms "$out")
	bench_result "latency commit -> consumer, 1,000/s: p50 (ms)" "$(bench_field p50_ms "$out")" \
		"$(bench_field p50_ms "$floor") broker floor" "" "" ""
	bench_result "latency commit -> consumer, 1,000/s: p99 (ms)" "$p99" \
		"$(bench_field p99_ms "$floor") broker floor" "" "<= 10 ms" "$(bench_verdict "$p99" '<=' 10)"
	bench_result "latency commit -> consumer, 1,000/s: max (ms)" "$(bench_field max_ms "$out")" \
		"$(bench_field max_ms "$floor") broker floor" "" "" ""
	bench_result "  achieved rate (appends/s), missing messages" \
		"$(bench_field rate "$out"), $(bench_field missing "$out") missing" "" "" "" ""
	bench_sparse_latency
	bench_psql -c "SELECT eventstore.remove_route('lat')" >/dev/null
}

# One event per second for $1 seconds (default 60): p50 and max
bench_sparse_latency() {
	local secs=${1:-60} out max
	echo "create_topic latency-sparse 4" > "$work/mock.in"
	bench_psql -c "SELECT eventstore.add_route('sparse', 'latency-sparse')" >/dev/null
	sleep 1
	out=$(bench/commit_to_consume --conninfo "host=$work port=$port user=postgres dbname=postgres" \
		--brokers "$bootstrap" --topic latency-sparse --category sparse --rate 1 --seconds "$secs" \
		--connections 1)
	echo "  sparse: $out" >&2
	max=$(bench_field max_ms "$out")
	bench_result "latency commit -> consumer, 1/s for ${secs} s: p50 (ms)" "$(bench_field p50_ms "$out")" \
		"" "" "" ""
	bench_result "latency commit -> consumer, 1/s for ${secs} s: max (ms)" "$max" \
		"" "" "<= 20 ms" "$(bench_verdict "$max" '<=' 20)"
	bench_psql -c "SELECT eventstore.remove_route('sparse')" >/dev/null
}
