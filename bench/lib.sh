# Sourced by bench/run and its parts: measuring with pgbench, alternating
# a baseline with eventstore, and recording results.  Expects
# test/tools/sandbox.sh to be sourced and its server running.

# Seconds per pgbench run, and how many baseline/eventstore pairs to
# alternate (bench/run sets them; --quick lowers them)
: "${BENCH_SECS:=10}"
: "${BENCH_PAIRS:=3}"

# Write a pgbench script $work/<name>.sql from stdin
bench_script() {
	cat > "$work/$1.sql"
	chown postgres "$work/$1.sql"
}

# The tps figure of pgbench's output on stdin
bench_tps_of() {
	sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

# One value of the line bench/produce_only and bench/commit_to_consume print
# (name=value ...): bench_field <name> <line>
bench_field() {
	sed -n "s/.*\b$1=\([0-9.-]*\).*/\1/p" <<<"$2"
}

# Transactions per second of a pgbench run: bench_tps <script> [pgbench options]
bench_tps() {
	local s=$1
	shift
	bench_pgbench -n -M prepared -c 8 -j 2 -T "$BENCH_SECS" "$@" -f "$work/$s.sql" 2>"$work/pgbench.err" |
		bench_tps_of | grep . || { cat "$work/pgbench.err" >&2; return 1; }
}

# The median of the numbers on stdin, one per line
bench_median() {
	sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# A number with a fixed count of decimals: bench_fmt <decimals> <number>
bench_fmt() {
	LC_ALL=C printf "%.${1}f" "$2"
}

# a / b
bench_div() {
	echo "$1 / $2" | bc -l
}

# Alternate a baseline and eventstore BENCH_PAIRS times, so both share the
# machine's drift; sets $tps_base and $tps_es (medians) and $ratio (the
# median of the pairs' ratios).  bench_alternate <baseline> <eventstore> [pgbench options]
bench_alternate() {
	local base=$1 es=$2 i b e
	shift 2
	: > "$work/alt.base"; : > "$work/alt.es"; : > "$work/alt.ratio"
	for i in $(seq "$BENCH_PAIRS"); do
		b=$(bench_tps "$base" "$@")
		e=$(bench_tps "$es" "$@")
		echo "$b" >> "$work/alt.base"
		echo "$e" >> "$work/alt.es"
		bench_div "$e" "$b" >> "$work/alt.ratio"
	done
	tps_base=$(bench_median < "$work/alt.base")
	tps_es=$(bench_median < "$work/alt.es")
	ratio=$(bench_median < "$work/alt.ratio")
}

# Per-call latencies of one client running a script for BENCH_SECS: sets
# $lat_p50 and $lat_p99 (ms) from pgbench's per-transaction log
bench_latency() {
	local s=$1
	rm -f "$work"/lat.log*
	shift
	bench_pgbench -n -M prepared -c 1 -T "$BENCH_SECS" -l --log-prefix="$work/lat.log" "$@" \
		-f "$work/$s.sql" >/dev/null 2>"$work/pgbench.err" || { cat "$work/pgbench.err" >&2; return 1; }
	awk '{ print $3 / 1000 }' "$work"/lat.log* | sort -g > "$work/lat.sorted"
	lat_p50=$(bench_median < "$work/lat.sorted")
	lat_p99=$(awk '{ v[NR] = $1 } END { i = int(NR * 0.99); if (i < NR * 0.99) i++; print v[i] }' "$work/lat.sorted")
}

# Whether a ratio meets a target: bench_verdict <value> <op> <target>
bench_verdict() {
	if [ "$(echo "$1 $2 $3" | bc -l)" = 1 ]; then echo met; else echo MISSED; fi
}

# Record one line of the results table:
# bench_result <benchmark> <eventstore> <baseline> <ratio> <target> <verdict>
bench_result() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$results"
	printf '  %-58s %s | %s | %s | %s %s\n' "$@" >&2
}

# Run SQL and print the single value it returns
bench_value() {
	bench_psql -Atc "$1"
}

# Turn the relay on (brokers = the mock cluster) or off ('') and wait until
# relay_status() shows it
bench_relay() {
	bench_psql -c "ALTER SYSTEM SET eventstore.kafka_brokers = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
	# The Kafka sink's row, when it shows (a sink that is off and has nothing
	# waiting shows none while another sink is on)
	local want="NOT EXISTS"
	[ -n "$1" ] && want="EXISTS"
	for _ in $(seq 100); do
		[ "$(bench_value "SELECT $want (SELECT FROM eventstore.relay_status()
			WHERE sink = 'kafka' AND state <> 'disabled')")" = t ] && return 0
		sleep 0.1
	done
	echo "bench: the relay did not follow eventstore.kafka_brokers = '$1'" >&2
	return 1
}

# Start a part on a quiet server, as pgbench vacuums before a run: the
# previous part's dead rows and dirty pages are cleaned up now, not by
# autovacuum and the checkpointer in the middle of the next part's figures
bench_settle() {
	bench_psql -c 'VACUUM ANALYZE' -c 'CHECKPOINT' >/dev/null
}

# Wait until the outbox is empty (at most $1 seconds, default 600)
bench_wait_drained() {
	local i
	for i in $(seq $((${1:-600} * 10))); do
		[ "$(bench_value 'SELECT NOT EXISTS (SELECT FROM eventstore.outbox)')" = t ] && return 0
		sleep 0.1
	done
	echo "bench: the outbox did not drain" >&2
	return 1
}
