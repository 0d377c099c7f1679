# Part of bench/run: load_aggregate.  A reducer registered with
# snapshot_every 100, streams of 10, 1,000 and 100,000 events: the first
# load of each (it folds every event and stores a snapshot) and the median
# of the loads after it (one client, pgbench).  Then the worst case between
# snapshots (99 events past the last one), and load_aggregate without a
# reducer for 1,000 events against a plain SELECT ... ORDER BY
# stream_version of the same rows.

bench_load_aggregate() {
	local n first p50_1k p50_100k ratio
	bench_relay ''
	bench_psql >/dev/null <<'SQL'
CREATE FUNCTION bench_cart(state jsonb, e eventstore.events) RETURNS jsonb
LANGUAGE sql AS $$
	SELECT jsonb_build_object('items', coalesce((state ->> 'items')::int, 0) + (e.data ->> 'qty')::int,
		'last_sku', e.data -> 'sku')
$$;
SELECT eventstore.register_aggregate('agg', 'bench_cart(jsonb, eventstore.events)', snapshot_every => 100);
CREATE FUNCTION bench_fill(stream text, n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	FOR chunk IN 0 .. (n - 1) / 1000 LOOP
		PERFORM eventstore.append(stream, NULL, (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded',
			'data', jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3)))
			FROM generate_series(chunk * 1000 + 1, least(n, chunk * 1000 + 1000)) i));
	END LOOP;
END
$$;
CREATE FUNCTION bench_first_load(stream text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
	PERFORM * FROM eventstore.load_aggregate(stream);
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END
$$;
SELECT bench_fill('agg-10', 10), bench_fill('agg-1000', 1000), bench_fill('agg-100000', 100000),
	bench_fill('raw-1000', 1000);
VACUUM ANALYZE eventstore.events;
SQL
	bench_script load <<'SQL'
SELECT * FROM eventstore.load_aggregate(:stream);
SQL
	for n in 10 1000 100000; do
		first=$(bench_value "SELECT bench_first_load('agg-$n')")
		bench_latency load -D stream="agg-$n"
		bench_result "load_aggregate, reducer, $n events: first load (ms)" "$(bench_fmt 2 "$first")" "" "" "" ""
		bench_result "load_aggregate, reducer, $n events: later loads, median (ms)" "$(bench_fmt 3 "$lat_p50")" \
			"" "" "" ""
		[ "$n" = 1000 ] && p50_1k=$lat_p50
		[ "$n" = 100000 ] && p50_100k=$lat_p50
	done
	ratio=$(bench_div "$p50_100k" "$p50_1k")
	bench_result "load_aggregate: 100,000 vs 1,000 events after first load" "$(bench_fmt 3 "$p50_100k") ms" \
		"$(bench_fmt 3 "$p50_1k") ms" "$(bench_fmt 2 "$ratio")" "<= 2.00" "$(bench_verdict "$ratio" '<=' 2)"

	bench_value "SELECT bench_fill('agg-100000', 99)" >/dev/null
	bench_latency load -D stream="agg-100000"
	bench_result "load_aggregate: 99 events past the snapshot, median (ms)" "$(bench_fmt 3 "$lat_p50")" \
		"" "" "(worst case)" ""

	bench_script plain_read <<'SQL'
SELECT * FROM eventstore.events WHERE stream_id = :stream ORDER BY stream_version;
SQL
	bench_latency plain_read -D stream=raw-1000
	p50_1k=$lat_p50
	bench_latency load -D stream=raw-1000
	ratio=$(bench_div "$p50_1k" "$lat_p50")
	bench_result "load_aggregate, no reducer, 1,000 events, median (ms)" "$(bench_fmt 3 "$lat_p50")" \
		"$(bench_fmt 3 "$p50_1k") SELECT" "$(bench_fmt 2 "$ratio")" "(report)" ""
}
