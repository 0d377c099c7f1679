# Sourced by the demo and the bench/ scripts: a throw-away PostgreSQL with
# eventstore preloaded, the mock Kafka cluster, and real RabbitMQ and NATS
# servers (test/tools/brokers.sh), all cleaned up on exit.  Run as root
# from the source tree after `make install`.
set -euo pipefail

bindir=$(pg_config --bindir)
work=$(mktemp -d /tmp/eventstore-sandbox.XXXXXX)
chown postgres: "$work"
port=${BENCH_PORT:-54398}
as_pg() { runuser -u postgres -- env PATH="$bindir:$PATH" "$@"; }
bench_psql() { as_pg psql -X -q -h "$work" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
bench_pgbench() { as_pg pgbench -h "$work" -p "$port" -U postgres "$@" postgres; }

bench_cleanup() {
	[ -d "$work/standby" ] && { as_pg pg_ctl -D "$work/standby" -m immediate stop >/dev/null 2>&1 || true; }
	as_pg pg_ctl -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
	test/tools/brokers.sh rabbitmq-stop "$work/rabbitmq" || true
	test/tools/brokers.sh nats-stop "$work/nats" || true
	[ -n "${mock_pid:-}" ] && kill "$mock_pid" "$keep_open" 2>/dev/null || true
	rm -rf "$work"
}
trap bench_cleanup EXIT

# Start the mock cluster; sets $bootstrap
bench_start_mock() {
	mkfifo "$work/mock.in"
	sleep 7200 > "$work/mock.in" &
	keep_open=$!
	test/tools/mock_kafka --timeout 7200 < "$work/mock.in" > "$work/mock.out" 2>&1 &
	mock_pid=$!
	for _ in $(seq 50); do grep -q '^bootstrap=' "$work/mock.out" && break; sleep 0.1; done
	bootstrap=$(sed -n 's/^bootstrap=//p' "$work/mock.out")
}

# Start a RabbitMQ server; sets $amqp_port and $rabbitmq_url
bench_start_rabbitmq() {
	amqp_port=$(test/tools/brokers.sh rabbitmq-start "$work/rabbitmq")
	rabbitmq_url="amqp://guest:guest@127.0.0.1:$amqp_port"
}

# Start a NATS server with JetStream; sets $nats_port and $nats_url
bench_start_nats() {
	nats_port=$(test/tools/brokers.sh nats-start "$work/nats")
	nats_url="nats://127.0.0.1:$nats_port"
}

# Start PostgreSQL and create the extension; $1: brokers ('' turns the relay
# off); more postgresql.conf lines on stdin
bench_start_pg() {
	as_pg initdb -D "$work/data" -A trust -U postgres >/dev/null
	{
		echo "listen_addresses = ''"
		echo "port = $port"
		echo "unix_socket_directories = '$work'"
		echo "shared_preload_libraries = 'eventstore'"
		echo "eventstore.kafka_brokers = '$1'"
		echo "eventstore.database = 'postgres'"
		cat
	} >> "$work/data/postgresql.conf"
	as_pg pg_ctl -D "$work/data" -l "$work/server.log" -w start >/dev/null
	bench_psql -c 'CREATE EXTENSION eventstore'
}

# Start a streaming hot standby of the server in $work/standby (a base
# backup with a replication slot, eventstore preloaded, the server's other
# settings) on the next port; sets $standby_port.  bench_standby_psql runs
# psql there; bench_standby stop / start stop and restart it.
bench_start_standby() {
	standby_port=$((port + 1))
	as_pg pg_basebackup -h "$work" -p "$port" -U postgres -D "$work/standby" -R -X stream -c fast \
		-C -S bench_standby
	{
		echo "port = $standby_port"
		echo "hot_standby = on"
		echo "shared_preload_libraries = 'eventstore'"
	} >> "$work/standby/postgresql.conf"
	bench_standby start
}
bench_standby_psql() {
	as_pg psql -X -q -h "$work" -p "$standby_port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}
bench_standby() {
	as_pg pg_ctl -D "$work/standby" -l "$work/standby.log" -w "$1" >/dev/null
}

# Wait until the standby has replayed everything the server has written
# (at most $1 seconds, default 600)
bench_standby_catch_up() {
	local lsn
	lsn=$(bench_psql -Atc 'SELECT pg_current_wal_lsn()')
	for _ in $(seq $((${1:-600} * 20))); do
		[ "$(bench_standby_psql -Atc "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ] && return 0
		sleep 0.05
	done
	echo "bench: the standby did not catch up with $lsn" >&2
	return 1
}
