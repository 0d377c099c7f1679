# Part of bench/run: latency from commit to consumer.  One-event
# transactions at a steady 1,000 per second for 30 seconds
# (bench/commit_to_consume: 4 connections, each append timed from the
# moment its commit returned until a Kafka consumer on the test broker
# received the message).  The baseline is the test broker's own floor:
# the same messages produced straight to it with librdkafka and consumed
# the same way, no database.
#
# The same at 5,000 per second (16 connections, so that the load generator
# keeps its schedule on two cores), to topics of their own: p99 and
# whether any message went missing.
#
# Then a sparse load: one event per second for 60 seconds, each commit
# waking an idle relay (the wake-up after the committing transaction
# released its locks); its max is the wake-up's worst case.
#
# Last, the first messages to a topic the relay's producer has not seen:
# with the relay connected and idle, a route to a brand-new topic, then 10
# one-event transactions at 100 per second (commit_to_consume --cold warms
# its consumer up with messages of its own, so only the relay meets the
# topic for the first time): the latency of the first and the max of the 10.

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
	bench_psql -c "SELECT eventstore.remove_route('lat')" >/dev/null
	bench_latency_5000 "$secs"
	bench_sparse_latency
	bench_cold_topic_latency
}

# 5,000 one-event transactions per second for $1 seconds: p99 and missing
bench_latency_5000() {
	local secs=$1 out floor p99 missing
	echo "create_topic latency-5000 4" > "$work/mock.in"
	echo "create_topic latency-5000-floor 4" > "$work/mock.in"
	bench_psql -c "SELECT eventstore.add_route('lat5k', 'latency-5000')" >/dev/null
	sleep 1
	# Exits 1 when messages are missing: that is a figure here
	out=$(bench/commit_to_consume --conninfo "host=$work port=$port user=postgres dbname=postgres" \
		--brokers "$bootstrap" --topic latency-5000 --category lat5k --rate 5000 --seconds "$secs" \
		--connections 16) || true
	floor=$(bench/commit_to_consume --brokers "$bootstrap" --topic latency-5000-floor --category floor5k \
		--rate 5000 --seconds "$secs" --connections 16 --calibrate) || true
	echo "  relay 5,000/s: $out" >&2
	echo "  floor 5,000/s: $floor" >&2
	p99=$(bench_field p99_ms "$out")
	missing=$(bench_field missing "$out")
	[ -n "$p99" ] && [ -n "$missing" ] || { echo "bench: commit_to_consume failed at 5,000/s" >&2; return 1; }
	bench_result "latency commit -> consumer, 5,000/s: p99 (ms)" "$p99" \
		"$(bench_field p99_ms "$floor") broker floor" "" "<= 25 ms" "$(bench_verdict "$p99" '<=' 25)"
	bench_result "  achieved rate (appends/s), missing messages" \
		"$(bench_field rate "$out"), $missing missing" "" "" "none missing" \
		"$(bench_verdict "$missing" '==' 0)"
	bench_psql -c "SELECT eventstore.remove_route('lat5k')" >/dev/null
}

# With the relay connected and idle, the first 10 messages to a topic its
# producer has not seen: the first one's latency and the max
bench_cold_topic_latency() {
	local out
	echo "create_topic latency-cold 4" > "$work/mock.in"
	bench_psql -c "SELECT eventstore.add_route('cold', 'latency-cold')" >/dev/null
	sleep 1
	out=$(bench/commit_to_consume --conninfo "host=$work port=$port user=postgres dbname=postgres" \
		--brokers "$bootstrap" --topic latency-cold --category cold --rate 100 --count 10 \
		--connections 1 --cold)
	echo "  new topic: $out" >&2
	bench_result "first messages to a new topic: the first's latency (ms)" "$(bench_field first_ms "$out")" \
		"" "" "" ""
	bench_result "first messages to a new topic: max of 10 (ms)" "$(bench_field max_ms "$out")" \
		"" "" "" ""
	bench_psql -c "SELECT eventstore.remove_route('cold')" >/dev/null
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
