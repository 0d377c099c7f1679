# Part of bench/run: reads on a streaming hot standby.  STANDBY_EVENTS
# events (default 1,000,000; bench/run --quick: 100,000) in 100,000
# streams of category `sb`, appended with bench/scaling.sh's scaling_fill,
# then a hot standby of the bench server (test/tools/sandbox.sh's
# bench_start_standby: pg_basebackup -R, a replication slot, eventstore
# preloaded), caught up.  Then, alternating the two servers BENCH_PAIRS
# times, each figure the median of SCALING_CALLS calls (pgbench, one
# client, prepared), after one warm-up pass on each:
#  - a read_all page: read_all(random position, 100) on the standby
#    against the same on the primary;
#  - load_aggregate of a stream of 100 events (bench/scaling.sh's agg-N,
#    no reducer) on the standby against the primary.
# Then what a standby costs the primary's appends: one-event appends to
# new streams (pgbench, 8 clients, as bench/append.sh) with the standby
# streaming against the same with the standby stopped, alternating.
# The same appends with the relay publishing the read horizon against
# the database not served (eventstore.database = 'nosuchdb': no relay, no
# publication; a restart each time), the standby stopped.
# Last, how long after an append's commit its event can be read on the
# standby (bench/standby_lag.py): the row itself (replication alone) and
# through read_all (replication and the read horizon the primary's relay
# publishes); once with the primary quiet between the probe's appends, once
# under a steady load of 500 other appends per second.

: "${STANDBY_EVENTS:=1000000}"

# Median read_all page and load_aggregate (ms) on the server at port $1:
# sets $read_ms and $load_ms
standby_reads() {
	local max
	max=$(scaling_port=$1 scaling_psql postgres -Atc 'SELECT max(global_position) FROM eventstore.events')
	read_ms=$(scaling_port=$1 scaling_median_ms postgres scl_read -D maxpos="$((max - 1000))") || return 1
	load_ms=$(scaling_port=$1 scaling_median_ms postgres scl_load) || return 1
}

# Restart the bench server with eventstore.database = $1 (empty: as in
# postgresql.conf, postgres) and wait until a relay serves database
# postgres, or (another name) none does
standby_serve() {
	local want=t
	if [ -n "$1" ]; then
		bench_psql -c "ALTER SYSTEM SET eventstore.database = '$1'" >/dev/null
	else
		bench_psql -c 'ALTER SYSTEM RESET eventstore.database' >/dev/null
	fi
	as_pg pg_ctl -D "$work/data" -l "$work/server.log" -w -m fast restart >/dev/null
	[ "${1:-postgres}" = postgres ] || want=f
	for _ in $(seq 100); do
		[ "$(bench_value "SELECT EXISTS (SELECT FROM pg_stat_activity
			WHERE backend_type = 'eventstore relay' AND datname = 'postgres')")" = $want ] && return 0
		sleep 0.1
	done
	echo "bench: no relay follows eventstore.database = '$1'" >&2
	return 1
}

# How long after an append's commit its event can be read on the
# standby (bench/standby_lag.py, 100 appends); $1: the primary's load
standby_lag() {
	local out
	out=$(as_pg /usr/bin/python3 bench/standby_lag.py "host=$work port=$port user=postgres dbname=postgres" \
		"host=$work port=$standby_port user=postgres dbname=postgres" 100)
	echo "  lag ($1): $out" >&2
	bench_result "standby: commit -> readable there, $1: p50 / p99 (ms)" \
		"$(bench_field read_all_p50_ms "$out") / $(bench_field read_all_p99_ms "$out") read_all" \
		"$(bench_field plain_p50_ms "$out") / $(bench_field plain_p99_ms "$out") the row" "" "(report)" ""
	bench_result "  events read_all did not return within 5 s (of 100); its errors" \
		"$(bench_field read_all_missed "$out"); $(bench_field read_all_errors "$out")" "" "" "" ""
}

bench_standby_part() {
	local streams=100000 i p_read p_load s_read s_load b e
	bench_relay ''
	[ "$STANDBY_EVENTS" -lt "$streams" ] && streams=$STANDBY_EVENTS
	scaling_prepare_db postgres
	scaling_fill 1 "$streams" $((STANDBY_EVENTS / streams)) postgres sb
	bench_settle
	bench_start_standby
	bench_standby_catch_up

	bench_script scl_read <<'SQL'
\set pos random(1, :maxpos)
SELECT * FROM eventstore.read_all(:pos, 100);
SQL
	bench_script scl_load <<'SQL'
\set n random(1, 100)
SELECT * FROM eventstore.load_aggregate('agg-' || :n);
SQL
	bench_script sb_append <<'SQL'
SELECT eventstore.append('b1-' || :client_id || '-' || random(), 0, :one);
SQL

	# Reads: a warm-up pass on each, then alternate
	standby_reads "$port"
	standby_reads "$standby_port" || true
	: > "$work/sb.p_read"; : > "$work/sb.p_load"; : > "$work/sb.s_read"; : > "$work/sb.s_load"
	for i in $(seq "$BENCH_PAIRS"); do
		standby_reads "$port"
		echo "$read_ms" >> "$work/sb.p_read"
		echo "$load_ms" >> "$work/sb.p_load"
		if standby_reads "$standby_port"; then
			echo "$read_ms" >> "$work/sb.s_read"
			echo "$load_ms" >> "$work/sb.s_load"
		fi
	done
	p_read=$(bench_median < "$work/sb.p_read")
	p_load=$(bench_median < "$work/sb.p_load")
	if s_read=$(bench_median < "$work/sb.s_read"); then
		s_load=$(bench_median < "$work/sb.s_load")
		bench_result "standby: read_all page of 100 (ms)" "$(bench_fmt 3 "$s_read")" \
			"$(bench_fmt 3 "$p_read") primary" "$(bench_fmt 2 "$(bench_div "$p_read" "$s_read")")" "(report)" ""
		bench_result "standby: load_aggregate, 100 events (ms)" "$(bench_fmt 3 "$s_load")" \
			"$(bench_fmt 3 "$p_load") primary" "$(bench_fmt 2 "$(bench_div "$p_load" "$s_load")")" "(report)" ""
	else
		bench_result "standby: read_all page of 100 (ms)" "failed" \
			"$(bench_fmt 3 "$p_read") primary" "" "(report)" ""
	fi

	# Appends on the primary: the standby streaming, or stopped
	: > "$work/alt.base"; : > "$work/alt.es"; : > "$work/alt.ratio"
	for i in $(seq "$BENCH_PAIRS"); do
		bench_standby stop
		b=$(bench_tps sb_append -D one='{"type": "Placed", "data": {"total": 30}}')
		bench_standby start
		bench_standby_catch_up
		e=$(bench_tps sb_append -D one='{"type": "Placed", "data": {"total": 30}}')
		echo "$b" >> "$work/alt.base"
		echo "$e" >> "$work/alt.es"
		bench_div "$e" "$b" >> "$work/alt.ratio"
	done
	bench_result "append, 1 event, a hot standby streaming (tps)" "$(bench_fmt 0 "$(bench_median < "$work/alt.es")")" \
		"$(bench_fmt 0 "$(bench_median < "$work/alt.base")") no standby" \
		"$(bench_fmt 2 "$(bench_median < "$work/alt.ratio")")" "(cost)" ""
	bench_standby_catch_up

	# Appends on the primary (no standby): the relay publishing the read
	# horizon, or the database not served (no relay, nothing published)
	bench_standby stop
	: > "$work/alt.base"; : > "$work/alt.es"; : > "$work/alt.ratio"
	for i in $(seq "$BENCH_PAIRS"); do
		standby_serve nosuchdb
		b=$(bench_tps sb_append -D one='{"type": "Placed", "data": {"total": 30}}')
		standby_serve ''
		e=$(bench_tps sb_append -D one='{"type": "Placed", "data": {"total": 30}}')
		echo "$b" >> "$work/alt.base"
		echo "$e" >> "$work/alt.es"
		bench_div "$e" "$b" >> "$work/alt.ratio"
	done
	bench_result "append, 1 event, the relay publishing the read horizon (tps)" \
		"$(bench_fmt 0 "$(bench_median < "$work/alt.es")")" \
		"$(bench_fmt 0 "$(bench_median < "$work/alt.base")") not published" \
		"$(bench_fmt 2 "$(bench_median < "$work/alt.ratio")")" "(cost)" ""
	bench_standby start
	bench_standby_catch_up

	# Commit on the primary -> readable on the standby: the primary quiet
	# between the probe's appends, then under a steady load of 500
	# appends/s (pgbench, 2 clients, for about as long as the probe takes)
	standby_lag quiet
	bench_pgbench -n -M prepared -c 2 -j 1 -R 500 -T 10 -D one='{"type": "Placed", "data": {"total": 30}}' \
		-f "$work/sb_append.sql" >/dev/null 2>&1 &
	local load=$!
	sleep 1
	standby_lag "500 appends/s"
	wait "$load"

	bench_standby stop
	bench_psql -c "SELECT pg_drop_replication_slot('bench_standby')" >/dev/null
	rm -rf "$work/standby"
}
