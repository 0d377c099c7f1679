# Part of bench/run, not in the default run (it takes about 15 minutes):
# `bench/run scaling`.  One store grown in steps to 10 million events
# (SCALING_STEPS, default 1, 2, 5 and 10 million) in SCALING_STREAMS
# streams (default 100,000) of category `scale`, each event's data a jsonb
# object of about 200 bytes; the events are appended by two sessions with
# eventstore.append(), one call per stream and step (10 to 50 events), a
# commit every 1,000 calls.  At each step, each figure next to the same
# figure on a small store measured in the same minute: a fresh database
# of the same server with the extension and SCALING_SMALL events (default
# a tenth of the first step), rebuilt at each step:
#  - append throughput: one-event appends to new streams, pgbench with 8
#    clients as in bench/append.sh, alternating big and small store;
#  - size: bytes of eventstore.events (pg_table_size) and of its indexes
#    (pg_indexes_size), and of eventstore.streams, per million events;
#  - a read_all page: read_all(random position, 100), median of
#    SCALING_CALLS calls (pgbench, one client, prepared), and the shared
#    buffers its query touches (EXPLAIN (ANALYZE, BUFFERS) of read_all's
#    own SELECT at random positions, median);
#  - the B-tree levels of the position and the stream indexes (pageinspect);
#  - load_aggregate of a stream of 100 events (no reducer): 100 streams
#    `agg-N` appended one event at a time in turn, so that each stream's
#    events lie on 100 different pages; median of SCALING_CALLS calls and
#    the buffers of the call (EXPLAIN of the function scan).
# Prints a table of the steps at the end (to stderr, with the rest), and
# leaves it in $work/scaling.md, notes in $work/scaling-notes.md (bench/run
# writes them into docs/scaling.md).

: "${SCALING_STEPS:=1000000 2000000 5000000 10000000}"
: "${SCALING_STREAMS:=100000}"
: "${SCALING_CALLS:=200}"

# pgbench against database $1 (the rest: pgbench's options), on the server
# at port $scaling_port (default: the bench server)
scaling_pgbench() {
	local db=$1
	shift
	as_pg pgbench -h "$work" -p "${scaling_port:-$port}" -U postgres "$@" "$db"
}

# psql on database $1, on the server at port $scaling_port (default: the
# bench server)
scaling_psql() {
	local db=$1
	shift
	as_pg psql -X -q -h "$work" -p "${scaling_port:-$port}" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"
}

# Transactions per second of script $2 on database $1, 8 clients
scaling_tps() {
	scaling_pgbench "$1" -n -M prepared -c 8 -j 2 -T "$BENCH_SECS" -f "$work/$2.sql" "${@:3}" \
		2>"$work/pgbench.err" | bench_tps_of | grep . || { cat "$work/pgbench.err" >&2; return 1; }
}

# Median latency (ms) of SCALING_CALLS runs of script $2 on database $1,
# one client (the rest: pgbench's options)
scaling_median_ms() {
	rm -f "$work"/scl.log*
	scaling_pgbench "$1" -n -M prepared -c 1 -t "$SCALING_CALLS" -l --log-prefix="$work/scl.log" \
		-f "$work/$2.sql" "${@:3}" >/dev/null 2>"$work/pgbench.err" || { cat "$work/pgbench.err" >&2; return 1; }
	awk '{ print $3 / 1000 }' "$work"/scl.log* | bench_median
}

# The functions and the 100 streams of 100 events every store of the part
# gets, on database $1 (bench/standby.sh uses them too)
scaling_prepare_db() {
	scaling_psql "$1" >/dev/null <<'SQL'
-- One call of append per stream prefix-N, N in [first, last], with
-- per_stream events of about 200 bytes of data each; a commit every 1,000
-- calls
CREATE OR REPLACE PROCEDURE scaling_fill(prefix text, first_stream int, last_stream int, per_stream int)
LANGUAGE plpgsql AS $$
DECLARE
	batch jsonb := (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded',
		'data', jsonb_build_object('sku', 'sku-' || i, 'qty', 1 + i % 3, 'price', 1999,
			'currency', 'EUR', 'note', repeat('x', 120)))) FROM generate_series(1, per_stream) i);
BEGIN
	FOR s IN first_stream .. last_stream LOOP
		PERFORM eventstore.append(prefix || '-' || s, NULL, batch);
		IF s % 1000 = 0 THEN
			COMMIT;
		END IF;
	END LOOP;
END
$$;
-- The shared buffers (hit + read) read_all's SELECT touches for a page of
-- n events after position pos (the horizon taken first, as read_all does)
CREATE OR REPLACE FUNCTION scaling_read_all_buffers(pos bigint, n int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	horizon bigint := eventstore.read_horizon();
	plan json;
BEGIN
	EXECUTE format('EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT e.* FROM eventstore.events e
		WHERE e.global_position > %s AND e.global_position < %s ORDER BY e.global_position LIMIT %s',
		pos, horizon, n) INTO plan;
	RETURN (plan -> 0 -> 'Plan' ->> 'Shared Hit Blocks')::bigint
		+ (plan -> 0 -> 'Plan' ->> 'Shared Read Blocks')::bigint;
END
$$;
-- The same for load_aggregate(stream): the function scan's buffers (what
-- the function's own queries touched)
CREATE OR REPLACE FUNCTION scaling_load_buffers(stream text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	plan json;
BEGIN
	EXECUTE format('EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM eventstore.load_aggregate(%L)',
		stream) INTO plan;
	RETURN (plan -> 0 -> 'Plan' ->> 'Shared Hit Blocks')::bigint
		+ (plan -> 0 -> 'Plan' ->> 'Shared Read Blocks')::bigint;
END
$$;
-- 100 streams of 100 events, appended one event at a time in turn (once)
DO $$
BEGIN
	IF eventstore.stream_version('agg-1') > 0 THEN
		RETURN;
	END IF;
	FOR r IN 1 .. 100 LOOP
		FOR s IN 1 .. 100 LOOP
			PERFORM eventstore.append('agg-' || s, NULL, jsonb_build_array(jsonb_build_object(
				'type', 'ItemAdded', 'data', jsonb_build_object('sku', 'sku-' || r, 'qty', 1 + r % 3,
					'price', 1999, 'currency', 'EUR', 'note', repeat('x', 120)))));
		END LOOP;
	END LOOP;
END
$$;
SQL
}

# Append per_stream ($3) events to each of streams scale-N, N in [$1, $2],
# of database $4, in two sessions; $5: the streams' prefix (default scale)
scaling_fill() {
	local first=$1 last=$2 per=$3 db=$4 prefix=${5:-scale} mid pid
	mid=$(( (first + last) / 2 ))
	scaling_psql "$db" -c "CALL scaling_fill('$prefix', $first, $mid, $per)" &
	pid=$!
	scaling_psql "$db" -c "CALL scaling_fill('$prefix', $((mid + 1)), $last, $per)"
	wait "$pid"
}

# (Re)create the small store: database scaling_small with $1 events
scaling_small_store() {
	local n=$1 streams
	bench_psql -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS scaling_small WITH (FORCE)' \
		-c 'CREATE DATABASE scaling_small' >/dev/null
	scaling_psql scaling_small -c 'CREATE EXTENSION eventstore' >/dev/null
	scaling_prepare_db scaling_small
	streams=$(( n / 10 ))
	[ "$streams" -ge 1 ] && scaling_fill 1 "$streams" 10 scaling_small
	scaling_psql scaling_small -c 'VACUUM ANALYZE' >/dev/null
}

# Medians on database $1: sets $read_ms, $read_buf, $load_ms, $load_buf
scaling_reads() {
	local db=$1 max
	max=$(scaling_psql "$db" -Atc 'SELECT max(global_position) FROM eventstore.events')
	read_ms=$(scaling_median_ms "$db" scl_read -D maxpos="$((max - 100))")
	load_ms=$(scaling_median_ms "$db" scl_load)
	read_buf=$(scaling_psql "$db" -Atc "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY
		scaling_read_all_buffers((random() * $((max - 100)))::bigint, 100)) FROM generate_series(1, 51)")
	load_buf=$(scaling_psql "$db" -Atc "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY
		scaling_load_buffers('agg-' || (1 + i % 100))) FROM generate_series(1, 51) i")
}

bench_scaling() {
	local target filled=0 per i b e n secs rate events heap idx streams per_m small levels
	local -a steps
	read -r -a steps <<<"$SCALING_STEPS"
	small=${SCALING_SMALL:-$(( steps[0] / 10 ))}
	bench_relay ''
	bench_psql -c 'CREATE EXTENSION IF NOT EXISTS pageinspect' >/dev/null
	scaling_prepare_db postgres

	bench_script scl_append <<'SQL'
SELECT eventstore.append('b1-' || :client_id || '-' || random(), 0, :one);
SQL
	bench_script scl_read <<'SQL'
\set pos random(1, :maxpos)
SELECT * FROM eventstore.read_all(:pos, 100);
SQL
	bench_script scl_load <<'SQL'
\set n random(1, 100)
SELECT * FROM eventstore.load_aggregate('agg-' || :n);
SQL

	echo "| events | fill: events/s | append tps: big / small | table + indexes GB | table MB per M events | indexes MB per M | streams MB | read_all page ms: big / small | its buffers: big / small | load_aggregate 100 ms: big / small | its buffers: big / small | B-tree levels: position / stream |" \
		> "$work/scaling.md"
	echo "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|" >> "$work/scaling.md"
	for target in "${steps[@]}"; do
		per=$(( (target - filled) / SCALING_STREAMS ))
		echo "  filling to $target events ($per per stream)" >&2
		secs=$(date +%s.%N)
		scaling_fill 1 "$SCALING_STREAMS" "$per" postgres
		secs=$(bench_div "$(date +%s.%N) - $secs" 1)
		rate=$(bench_div "$((per * SCALING_STREAMS))" "$secs")
		filled=$(( filled + per * SCALING_STREAMS ))
		bench_settle
		scaling_small_store "$small"

		# Append: alternate big and small store
		: > "$work/alt.base"; : > "$work/alt.es"; : > "$work/alt.ratio"
		for i in $(seq "$BENCH_PAIRS"); do
			b=$(scaling_tps scaling_small scl_append -D one='{"type": "Placed", "data": {"total": 30}}')
			e=$(scaling_tps postgres scl_append -D one='{"type": "Placed", "data": {"total": 30}}')
			echo "$b" >> "$work/alt.base"
			echo "$e" >> "$work/alt.es"
			bench_div "$e" "$b" >> "$work/alt.ratio"
		done
		tps_base=$(bench_median < "$work/alt.base")
		tps_es=$(bench_median < "$work/alt.es")
		ratio=$(bench_median < "$work/alt.ratio")

		# Sizes, after the appends
		bench_psql -c 'VACUUM ANALYZE eventstore.events' >/dev/null
		events=$(bench_value 'SELECT count(*) FROM eventstore.events')
		heap=$(bench_value "SELECT pg_table_size('eventstore.events')")
		idx=$(bench_value "SELECT pg_indexes_size('eventstore.events')")
		streams=$(bench_value "SELECT pg_total_relation_size('eventstore.streams')")
		per_m=$(bench_div 1000000 "$events")
		levels=$(bench_value "SELECT (SELECT level + 1 FROM bt_metap('eventstore.events_pkey')) || ' / ' ||
			(SELECT level + 1 FROM bt_metap('eventstore.events_stream_id_stream_version_key'))")

		# Reads: small store, then big
		scaling_reads scaling_small
		local s_read_ms=$read_ms s_read_buf=$read_buf s_load_ms=$load_ms s_load_buf=$load_buf
		scaling_reads postgres

		n=$(awk -v t="$target" 'BEGIN { printf "%gM", t / 1000000 }')
		bench_result "scaling, $n events: append 1 event (tps)" "$(bench_fmt 0 "$tps_es")" \
			"$(bench_fmt 0 "$tps_base") small store" "$(bench_fmt 2 "$ratio")" "(report)" ""
		bench_result "scaling, $n events: table / indexes (MB per M events)" \
			"$(bench_fmt 0 "$(bench_div "$heap * $per_m" 1048576)") / $(bench_fmt 0 "$(bench_div "$idx * $per_m" 1048576)")" \
			"" "" "(report)" ""
		bench_result "scaling, $n events: read_all page of 100 (ms)" "$(bench_fmt 3 "$read_ms")" \
			"$(bench_fmt 3 "$s_read_ms") small store" "$(bench_fmt 2 "$(bench_div "$s_read_ms" "$read_ms")")" \
			"(report)" ""
		bench_result "scaling, $n events: load_aggregate, 100 events (ms)" "$(bench_fmt 3 "$load_ms")" \
			"$(bench_fmt 3 "$s_load_ms") small store" "$(bench_fmt 2 "$(bench_div "$s_load_ms" "$load_ms")")" \
			"(report)" ""
		printf '| %s | %s | %s / %s | %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s / %s | %s |\n' \
			"$events" "$(bench_fmt 0 "$rate")" "$(bench_fmt 0 "$tps_es")" "$(bench_fmt 0 "$tps_base")" \
			"$(bench_fmt 2 "$(bench_div "($heap + $idx)" 1073741824)")" \
			"$(bench_fmt 1 "$(bench_div "$heap * $per_m" 1048576)")" \
			"$(bench_fmt 1 "$(bench_div "$idx * $per_m" 1048576)")" \
			"$(bench_fmt 1 "$(bench_div "$streams" 1048576)")" \
			"$(bench_fmt 3 "$read_ms")" "$(bench_fmt 3 "$s_read_ms")" "$read_buf" "$s_read_buf" \
			"$(bench_fmt 3 "$load_ms")" "$(bench_fmt 3 "$s_load_ms")" "$load_buf" "$s_load_buf" "$levels" \
			>> "$work/scaling.md"
	done
	bench_psql -c 'DROP DATABASE scaling_small WITH (FORCE)' -c 'DROP EXTENSION pageinspect' >/dev/null
	{
		echo "- steps: $SCALING_STEPS events (fill), in $SCALING_STREAMS streams of category scale"
		echo "- small store: $small events in $(( small / 10 )) streams of 10, the 100 streams of"
		echo "  agg-N, and the events of the append runs (one per new stream)"
		echo "- data per event: $(bench_value "SELECT round(avg(pg_column_size(data)))
			FROM (SELECT data FROM eventstore.events WHERE category = 'scale' LIMIT 10000) d") bytes"
		echo "  (pg_column_size of the jsonb, average)"
		bench_value "SELECT string_agg(format('%s %s MB', indexrelid::regclass,
			round(pg_relation_size(indexrelid) / 1048576.0)), ', ')
			FROM pg_index WHERE indrelid = 'eventstore.events'::regclass" | sed 's/^/- indexes at the end: /'
	} > "$work/scaling-notes.md"
	{
		echo
		cat "$work/scaling-notes.md"
		echo
		cat "$work/scaling.md"
		echo
	} >&2
}
