#!/usr/bin/env bash
# Outbox hygiene: relay N routed events (default 1,000,000) appended by 8
# clients while the relay runs; report the outbox's largest and final size.
cd "$(dirname "$0")/.."
. test/tools/sandbox.sh
n=${1:-1000000}

bench_start_mock
bench_start_pg "$bootstrap" <<CONF
shared_buffers = 1GB
max_wal_size = 8GB
CONF
bench_psql -c "SELECT eventstore.add_route('order', 'orders')"
cat > "$work/append.sql" <<'SQL'
SELECT eventstore.append('order-' || :client_id || '-' || (random() * 1000)::int, NULL,
	'{"type": "Placed", "data": {"total": 1, "note": "a benchmark event of a realistic size, about two hundred bytes of payload"}}');
SQL
chown postgres "$work/append.sql"
per_client=$((n / 8))
start=$(date +%s)
bench_pgbench -n -c 8 -j 2 -t "$per_client" -f "$work/append.sql" > "$work/pgbench.out" 2>&1 &
load=$!
max_size=0; max_rows=0
while kill -0 $load 2>/dev/null || [ "$(bench_psql -Atc 'SELECT count(*) FROM eventstore.outbox')" != 0 ]; do
	read -r size rows < <(bench_psql -Atc "SELECT pg_total_relation_size('eventstore.outbox'), count(*) FROM eventstore.outbox" | tr '|' ' ')
	[ "$size" -gt "$max_size" ] && max_size=$size
	[ "$rows" -gt "$max_rows" ] && max_rows=$rows
	sleep 1
done
wait $load
end=$(date +%s)
sent=$(bench_psql -Atc "SELECT sent_total FROM eventstore.relay_status() WHERE sink = 'kafka'")
final=$(bench_psql -Atc "SELECT pg_size_pretty(pg_total_relation_size('eventstore.outbox'))")
vacuums=$(bench_psql -Atc "SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'eventstore.outbox'::regclass")
echo "relayed $sent messages in $((end - start)) s (appended by 8 clients)"
echo "outbox: largest $(numfmt --to=iec "$max_size") / $max_rows rows pending; after draining $final; autovacuum runs $vacuums"
