#!/usr/bin/env bash
# The one-command demo (`make demo`): builds and installs eventstore, starts a
# throw-away PostgreSQL with the extension preloaded, the mock Kafka cluster
# and real RabbitMQ and NATS servers (as postgres, on loopback), appends a
# few order events (one with a version conflict), publishes a message, and
# shows them arriving in Kafka with their headers; then one event arriving
# in each of Kafka, RabbitMQ and NATS JetStream, routed by category.  Cleans
# up after itself; run it as root (the servers run as postgres).
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

BENCH_PORT=54399
. test/tools/sandbox.sh
bench_start_mock
echo "== mock Kafka cluster at $bootstrap"
bench_start_rabbitmq
echo "== RabbitMQ $(dpkg-query -W -f='${Version}' rabbitmq-server) at 127.0.0.1:$amqp_port"
bench_start_nats
echo "== NATS $(dpkg-query -W -f='${Version}' nats-server) with JetStream at 127.0.0.1:$nats_port"
# Where the events go: an exchange bound to a queue, a stream on the subjects
test/tools/amqp_consume --port "$amqp_port" --exchange invoices --queue invoices-demo --setup-only
test/tools/nats_tool --port "$nats_port" stream-add SHIPMENTS 'shipments.>' >/dev/null
bench_start_pg "$bootstrap" <<CONF
eventstore.rabbitmq_url = '$rabbitmq_url'
eventstore.nats_url = '$nats_url'
CONF
echo "== PostgreSQL $(bench_psql -Atc 'SHOW server_version') with eventstore preloaded"

bench_psql -e <<'SQL'
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
bench_psql -c "SELECT eventstore.append_event('order-42', 2, 'OrderCancelled', '{}')" 2>&1 || true

bench_psql -e <<'SQL'
SELECT stream_version, event_type, data FROM eventstore.read_stream('order-42');
SELECT version, jsonb_array_length(events) AS events_to_fold FROM eventstore.load_aggregate('order-42');
-- a subscription: a consumer gets the payments, in order, and acknowledges them
SELECT eventstore.create_subscription('billing', 'order', event_types => '{OrderPaid}');
BEGIN;
SELECT global_position, stream_id, event_type, data FROM eventstore.poll('billing', wait => '1s');
SELECT eventstore.ack('billing', 3);
COMMIT;
SELECT subscription, partition, checkpoint, behind FROM eventstore.subscription_lag;
-- any message, in the same transaction as your own writes
SELECT eventstore.publish('notifications', 'customer-7', '{"text": "your order is paid"}', '{"x-tenant": "acme"}');
SQL

for _ in $(seq 100); do
	[ "$(bench_psql -Atc 'SELECT count(*) FROM eventstore.outbox')" = 0 ] && break
	sleep 0.1
done
for topic in orders notifications; do
	echo "== what a Kafka consumer (kcat) receives on topic \"$topic\":"
	kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q \
		-f 'partition %p offset %o  key %k\n  value   %s\n  headers %h\n'
done

echo "== one event to each broker, routed by category:"
bench_psql -e <<'SQL'
SELECT eventstore.add_route('invoice', 'invoices', 'rabbitmq');
SELECT eventstore.add_route('shipment', 'shipments', 'nats');
SELECT eventstore.append_event('invoice-42', 0, 'InvoiceIssued', '{"amount": 30}');
SELECT eventstore.append_event('shipment-42', 0, 'ShipmentDispatched', '{"carrier": "post"}');
SQL
for _ in $(seq 100); do
	[ "$(bench_psql -Atc 'SELECT count(*) FROM eventstore.outbox')" = 0 ] && break
	sleep 0.1
done
echo "== Kafka (kcat), topic \"orders\", the first event:"
kcat -C -b "$bootstrap" -t orders -o beginning -c 1 -e -q -f 'key %k  value %s\n  headers %h\n'
echo "== RabbitMQ (an AMQP consumer), exchange \"invoices\":"
test/tools/amqp_consume --port "$amqp_port" --exchange invoices --queue invoices-demo --count 1 --timeout 10
echo "== NATS JetStream (a consumer of stream SHIPMENTS):"
test/tools/nats_tool --port "$nats_port" consume SHIPMENTS --count 1 --timeout 10

echo "== the relay, as an operator sees it (a row per sink):"
bench_psql -x -c "SELECT * FROM eventstore.relay_status()"
bench_psql -c "SELECT pid, backend_type, state, wait_event_type, wait_event, query FROM pg_stat_activity WHERE backend_type = 'eventstore relay'"
echo "== done; everything is cleaned up"
