# Part of bench/run: contended appends.  8 clients, 4 hot streams, each
# transaction reads a stream's version and appends with it as the expected
# version; a conflict (SE001) is counted, as an application would count a
# reload-and-retry.  No baseline: the figures are the throughput of
# successful appends and the share of attempts that conflicted.

bench_contention() {
	local tps attempts conflicts rate
	bench_relay ''
	bench_psql <<'SQL'
CREATE SEQUENCE IF NOT EXISTS bench_conflicts;
CREATE OR REPLACE FUNCTION bench_hot_append(n int, v bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM eventstore.append_event('hot-' || n, v, 'Bumped', jsonb_build_object('read', v));
EXCEPTION WHEN SQLSTATE 'SE001' THEN
	PERFORM nextval('bench_conflicts');
END
$$;
SQL
	bench_script hot <<'SQL'
\set n random(1, 4)
SELECT eventstore.stream_version('hot-' || :n) AS v \gset
SELECT bench_hot_append(:n, :v);
SQL
	bench_psql -c "SELECT setval('bench_conflicts', 1, false)" >/dev/null
	local before
	before=$(bench_value "SELECT coalesce(sum(version), 0) FROM eventstore.streams WHERE stream_id LIKE 'hot-%'")
	tps=$(bench_tps hot -T $((BENCH_SECS * 3)))
	attempts=$(bench_value "SELECT coalesce(sum(version), 0) - $before FROM eventstore.streams WHERE stream_id LIKE 'hot-%'")
	conflicts=$(bench_value "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM bench_conflicts")
	attempts=$((attempts + conflicts))
	rate=$(bench_div "$conflicts" "$attempts")
	bench_result "contended append, 4 hot streams (attempts/s)" "$(bench_fmt 0 "$tps")" \
		"" "" "(report)" ""
	bench_result "contended append: successful appends/s" \
		"$(bench_fmt 0 "$(bench_div "$tps * (1 - $rate)" 1)")" "" "" "(report)" ""
	bench_result "contended append: conflict rate (SE001 / attempts)" \
		"$(bench_fmt 1 "$(bench_div "$rate * 100" 1)")%" "" "" "(report)" ""
}
