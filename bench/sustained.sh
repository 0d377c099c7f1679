# Part of bench/run: sustained load.  8 clients append routed one-event
# transactions as fast as they can for 60 seconds while the relay runs;
# once a second the outbox backlog (rows and the age of the oldest) is
# sampled.  The backlog is bounded when it does not grow: its largest value
# in the second half of the run is no larger than in the first half (or
# stays within two relay batches).

bench_sustained() {
	local secs=${1:-60} load sent0 sent1 tps half max1 max2 maxage verdict drain_start drain_end
	bench_relay "$bootstrap"
	bench_psql -c "SELECT eventstore.add_route('sus', 'sustained')" >/dev/null
	bench_script sus <<'SQL'
SELECT eventstore.append('sus-' || :client_id || '-' || random(), 0,
	'{"type": "Placed", "data": {"total": 30, "currency": "EUR", "note": "a sustained-load event"}}');
SQL
	sent0=$(bench_value "SELECT sent_total FROM eventstore.relay_status() WHERE sink = 'kafka'")
	bench_pgbench -n -M prepared -c 8 -j 2 -T "$secs" -f "$work/sus.sql" > "$work/sus.out" 2>&1 &
	load=$!
	: > "$work/backlog"
	sleep 0.5
	while kill -0 "$load" 2>/dev/null; do
		bench_value "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
			FROM eventstore.outbox" | tr '|' ' ' >> "$work/backlog"
		sleep 1
	done
	wait "$load"
	drain_start=$(date +%s.%N)
	bench_wait_drained 300
	drain_end=$(date +%s.%N)
	sent1=$(bench_value "SELECT sent_total FROM eventstore.relay_status() WHERE sink = 'kafka'")
	tps=$(bench_tps_of < "$work/sus.out")

	half=$(( $(wc -l < "$work/backlog") / 2 ))
	max1=$(head -n "$half" "$work/backlog" | awk '$1 > m { m = $1 } END { print m + 0 }')
	max2=$(tail -n +$((half + 1)) "$work/backlog" | awk '$1 > m { m = $1 } END { print m + 0 }')
	maxage=$(awk '$2 > m { m = $2 } END { print m + 0 }' "$work/backlog")
	verdict=MISSED
	[ "$max2" -le "$max1" ] || [ "$max2" -le 2000 ] && verdict=met
	bench_result "sustained, 8 clients, ${secs} s: appends/s (relay on)" "$(bench_fmt 0 "$tps")" "" "" "" ""
	bench_result "  relayed/s over the run and its drain" \
		"$(bench_fmt 0 "$(bench_div $((sent1 - sent0)) "$(echo "$secs + $drain_end - $drain_start" | bc -l)")")" "" "" "" ""
	bench_result "  outbox backlog, largest (rows): 1st half / 2nd half" "$max1 / $max2" "" "" "bounded" "$verdict"
	bench_result "  outbox backlog, oldest row's largest age (s)" "$(bench_fmt 2 "$maxage")" "" "" "" ""
	bench_result "  drain after the load stopped (s)" \
		"$(bench_fmt 2 "$(echo "$drain_end - $drain_start" | bc -l)")" "" "" "" ""
	bench_psql -c "SELECT eventstore.remove_route('sus')" >/dev/null
}
