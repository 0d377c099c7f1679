#!/usr/bin/env bash
# The one-command demo (`make demo`): builds and installs eventstore, starts a
# throw-away PostgreSQL with the extension preloaded and the mock Kafka
# cluster, appends a few order events (one with a version conflict),
# publishes a message, and shows them arriving in Kafka with their headers.
# Cleans up after itself; run it as root (PostgreSQL itself runs as postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run me as root (sudo make demo): I install packages and the extension" >&2
	exit 2
fi
test/tools/install-deps
make -s
make -s -C test/tools
make -s install

bindir=$(pg_config --bindir)
work=$(mktemp -d /tmp/eventstore-demo.XXXXXX)
chown postgres: "$work"
as_pg() { runuser -u postgres -- env PATH="$bindir:$PATH" "$@"; }
cleanup() {
	as_pg pg_ctl -D "$work/data" -m fast stop >/dev/null 2>&1 || true
	[ -n "${mock_pid:-}" ] && kill "$mock_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# The mock Kafka cluster, on loopback
mkfifo "$work/mock.in"
sleep 3600 > "$work/mock.in" &
keep_open=$!
test/tools/mock_kafka --timeout 600 < "$work/mock.in" > "$work/mock.out" 2>&1 &
mock_pid=$!
for _ in $(seq 50); do grep -q '^bootstrap=' "$work/mock.out" && break; sleep 0.1; done
bootstrap=$(sed -n 's/^bootstrap=//p' "$work/mock.out")
echo "== mock Kafka cluster at $bootstrap"

# A throw-away PostgreSQL with the relay preloaded
as_pg initdb -D "$work/data" -A trust -U postgres >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = ''
port = 54399
unix_socket_directories = '$work'
shared_preload_libraries = 'eventstore'
eventstore.database = 'postgres'
eventstore.kafka_brokers = '$bootstrap'
CONF
as_pg pg_ctl -D "$work/data" -l "$work/server.log" -w start >/dev/null
psql_demo() { as_pg psql -X -h "$work" -p 54399 -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
echo "== PostgreSQL $(psql_demo -Atc 'SHOW server_version') with eventstore preloaded"

psql_demo -e <<'SQL'
CREATE EXTENSION eventstore;
SELECT eventstore.add_route('order', 'orders');

-- a new stream: expected version 0
SELECT eventstore.append('order-42', 0, '[
  {"type": "OrderPlaced", "data": {"total": 30}, "metadata": {"correlation_id": "checkout-7"}},
  {"type": "ItemAdded",   "data": {"sku": "tea", "qty": 2}}
]');
-- the next version, as the application saw it
SELECT eventstore.append_event('order-42', 2, 'OrderPaid', '{"amount": 30}');
SQL

echo "== a second writer still believes the order is at version 2:"
psql_demo -c "SELECT eventstore.append_event('order-42', 2, 'OrderCancelled', '{}')" 2>&1 || true

psql_demo -e <<'SQL'
SELECT stream_version, event_type, data FROM eventstore.read_stream('order-42');
SELECT version, jsonb_array_length(events) AS events_to_fold FROM eventstore.load_aggregate('order-42');
-- any message, in the same transaction as your own writes
SELECT eventstore.publish('notifications', 'customer-7', '{"text": "your order is paid"}', '{"x-tenant": "acme"}');
SQL

for _ in $(seq 100); do
	[ "$(psql_demo -Atc 'SELECT count(*) FROM eventstore.outbox')" = 0 ] && break
	sleep 0.1
done
for topic in orders notifications; do
	echo "== what a Kafka consumer (kcat) receives on topic \"$topic\":"
	kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q \
		-f 'partition %p offset %o  key %k\n  value   %s\n  headers %h\n'
done

echo "== the relay, as an operator sees it:"
psql_demo -x -c "SELECT * FROM eventstore.relay_status()"
psql_demo -c "SELECT pid, backend_type, state, wait_event_type, wait_event, query FROM pg_stat_activity WHERE backend_type = 'eventstore relay'"
kill "$keep_open" 2>/dev/null || true
echo "== done; everything is cleaned up"
