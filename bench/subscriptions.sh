# Part of bench/run: subscriptions (bench/subscribe does the clients).
#  (a) Consuming a backlog: 100,000 committed events (1,000 streams of 100)
#      read by one consumer in pages of 1,000, one transaction per page
#      (BEGIN; poll; ack of the page's last position; COMMIT), against one
#      client paging through the same events with read_all(last, 1,000,
#      category) until a page is empty; for context, the same pages each
#      in a transaction that also UPDATEs a one-row checkpoint table (what
#      a hand-made subscription writes).  All in C with libpq, prepared
#      statements, every column fetched in text form; a run takes a
#      fraction of a second, so 2 * BENCH_PAIRS + 1 alternating pairs, a
#      new subscription each time; medians.
#  (b) Commit -> poll latency: 4 connections append one-event
#      transactions at a steady 1,000 per second; one consumer loops on
#      poll(..., wait => '1s') and acks each page.  From the moment an
#      append's commit returned to its producer until the poll that
#      returned the event did, in one process on one clock.  The baseline
#      is PostgreSQL's own wake-up at commit: the producers also call
#      pg_notify() in the append's statement, and a LISTENing consumer
#      pages with read_all after each notification.
#  (c) 1, 2 and 4 consumers (partition NULL) on a subscription of 4
#      partitions over the events of (a); medians of 2 * BENCH_PAIRS + 1
#      runs.

bench_subscriptions() {
	local secs=${1:-30} pairs=$((2 * BENCH_PAIRS + 1)) conn i c out base ack es n p99 rate_1
	conn="host=$work port=$port user=postgres dbname=postgres"
	bench_relay ''
	bench_psql >/dev/null <<'SQL'
CREATE TABLE bench_checkpoint (position bigint);
INSERT INTO bench_checkpoint VALUES (0);
DO $$
DECLARE
	events jsonb := (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded',
		'data', jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3))) FROM generate_series(1, 100) i);
BEGIN
	PERFORM eventstore.append('subbench-' || i, 0, events) FROM generate_series(1, 1000) i;
END
$$;
VACUUM ANALYZE;
SQL
	n=$(bench_value "SELECT count(*) FROM eventstore.events WHERE category = 'subbench'")

	# (a) one consumer against read_all
	: > "$work/alt.base"; : > "$work/alt.es"; : > "$work/alt.ratio"; : > "$work/alt.ack"
	: > "$work/alt.ackratio"
	for i in $(seq "$pairs"); do
		out=$(bench/subscribe --conninfo "$conn" --mode read_all --category subbench --page 1000)
		echo "  read_all: $out" >&2
		base=$(bench_field rate "$out")
		out=$(bench/subscribe --conninfo "$conn" --mode read_all_ack --category subbench --page 1000)
		echo "  read_all + UPDATE: $out" >&2
		ack=$(bench_field rate "$out")
		echo "$ack" >> "$work/alt.ack"
		bench_psql -c "SELECT eventstore.create_subscription('bench-a$i', 'subbench')" >/dev/null
		out=$(bench/subscribe --conninfo "$conn" --mode poll --category subbench --subscription "bench-a$i" \
			--page 1000)
		echo "  poll:     $out" >&2
		es=$(bench_field rate "$out")
		bench_psql -c "SELECT eventstore.drop_subscription('bench-a$i')" >/dev/null
		echo "$base" >> "$work/alt.base"
		echo "$es" >> "$work/alt.es"
		bench_div "$es" "$base" >> "$work/alt.ratio"
		bench_div "$es" "$ack" >> "$work/alt.ackratio"
	done
	base=$(bench_median < "$work/alt.base")
	es=$(bench_median < "$work/alt.es")
	ratio=$(bench_median < "$work/alt.ratio")
	bench_result "subscription: consume $n events, pages of 1,000 + ack (events/s)" "$(bench_fmt 0 "$es")" \
		"$(bench_fmt 0 "$base") read_all pages" "$(bench_fmt 2 "$ratio")" ">= 0.80" \
		"$(bench_verdict "$ratio" '>=' 0.80)"
	bench_result "subscription: consume, vs read_all + checkpoint UPDATE per page (events/s)" "$(bench_fmt 0 "$es")" \
		"$(bench_fmt 0 "$(bench_median < "$work/alt.ack")") read_all + UPDATE" \
		"$(bench_fmt 2 "$(bench_median < "$work/alt.ackratio")")" "(context)" ""

	# (c) 1, 2 and 4 consumers on 4 partitions, against (a)'s read_all
	for c in 1 2 4; do
		: > "$work/alt.es"
		for i in $(seq "$pairs"); do
			bench_psql -c "SELECT eventstore.create_subscription('bench-c$c-$i', 'subbench', partitions => 4)" \
				>/dev/null
			out=$(bench/subscribe --conninfo "$conn" --mode poll --category subbench \
				--subscription "bench-c$c-$i" --page 1000 --consumers "$c")
			echo "  $c consumer(s), 4 partitions: $out" >&2
			bench_field rate "$out" >> "$work/alt.es"
			bench_psql -c "SELECT eventstore.drop_subscription('bench-c$c-$i')" >/dev/null
		done
		es=$(bench_median < "$work/alt.es")
		[ "$c" = 1 ] && rate_1=$es
		bench_result "subscription, 4 partitions, $c consumer(s) (events/s)" "$(bench_fmt 0 "$es")" \
			"$(bench_fmt 0 "$base") read_all pages" "$(bench_fmt 2 "$(bench_div "$es" "$base")")" \
			"(report)" ""
	done
	bench_result "  4 consumers vs 1 on 4 partitions" "$(bench_fmt 2 "$(bench_div "$es" "$rate_1")")x" \
		"" "" "(report)" ""

	# (b) commit -> poll latency at 1,000 events/s
	bench_psql -c "SELECT eventstore.create_subscription('bench-lat', 'sublat')" >/dev/null
	out=$(bench/subscribe --conninfo "$conn" --mode latency --category sublat --subscription bench-lat \
		--rate 1000 --seconds "$secs")
	base=$(bench/subscribe --conninfo "$conn" --mode notify --category sublatn --rate 1000 --seconds "$secs")
	echo "  poll:   $out" >&2
	echo "  notify: $base" >&2
	p99=$(bench_field p99_ms "$out")
	bench_result "subscription: commit -> poll, 1,000/s: p50 (ms)" "$(bench_field p50_ms "$out")" \
		"$(bench_field p50_ms "$base") LISTEN + read_all" "" "" ""
	bench_result "subscription: commit -> poll, 1,000/s: p99 (ms)" "$p99" \
		"$(bench_field p99_ms "$base") LISTEN + read_all" "" "<= 5 ms" "$(bench_verdict "$p99" '<=' 5)"
	bench_result "subscription: commit -> poll, 1,000/s: max (ms)" "$(bench_field max_ms "$out")" \
		"$(bench_field max_ms "$base") LISTEN + read_all" "" "" ""
	bench_result "  achieved rate (appends/s), missing, received before the commit returned" \
		"$(bench_field rate "$out"), $(bench_field missing "$out"), $(bench_field negative "$out")" \
		"$(bench_field rate "$base"), $(bench_field missing "$base"), $(bench_field negative "$base")" "" "" ""
	bench_psql -c "SELECT eventstore.drop_subscription('bench-lat')" -c 'DROP TABLE bench_checkpoint' >/dev/null
}
