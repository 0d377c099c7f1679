#!/usr/bin/env bash
# Real RabbitMQ and NATS servers for eventstore's tests, benchmarks and
# demo: started as the postgres OS user (never root), listening on loopback
# only, on free ports, with all their state in one directory, and stopped
# again.  One implementation for every caller: the TAP tests run it through
# test/perl/EventstoreTest.pm, the demo and bench/run source it.
#
#   test/tools/brokers.sh rabbitmq-start DIR   prints the AMQP port when ready
#   test/tools/brokers.sh rabbitmq-stop DIR
#   test/tools/brokers.sh nats-start DIR [MAX_PAYLOAD]
#                                              prints the client port when ready
#   test/tools/brokers.sh nats-stop DIR
#
# A start waits at most 60 s and fails (exit 1, with the server's output)
# if the server is not up by then.  Stopping a server that is not running
# does nothing.  DIR is created (owned by postgres) if missing; a stop
# keeps it, so a restart finds the same data (the tests stop and start a
# broker under load).  The ports are kept in DIR, and a restart reuses them.
set -euo pipefail

# As postgres: through runuser when root, as is when already postgres (TAP)
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
own() {
	if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$@"; fi
}

# A TCP port nothing listens on, from the kernel
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The port named NAME in DIR, chosen once
port_of() {
	local dir=$1 name=$2
	[ -s "$dir/$name.port" ] || free_port > "$dir/$name.port"
	cat "$dir/$name.port"
}

prepare_dir() {
	mkdir -p "$1"
	own "$1"
}

# The environment RabbitMQ's scripts run with: everything under DIR
rabbitmq_env() {
	local dir=$1
	echo "HOME=$dir"
	echo "RABBITMQ_NODENAME=eventstore-$(port_of "$dir" amqp)@localhost"
	echo "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
	echo "RABBITMQ_NODE_PORT=$(port_of "$dir" amqp)"
	echo "RABBITMQ_DIST_PORT=$(port_of "$dir" dist)"
	echo "ERL_EPMD_PORT=$(port_of "$dir" epmd)"
	echo "ERL_EPMD_ADDRESS=127.0.0.1"
	echo "RABBITMQ_MNESIA_BASE=$dir/mnesia"
	echo "RABBITMQ_LOG_BASE=$dir/log"
	echo "RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf"
	echo "RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins"
	echo "RABBITMQ_PID_FILE=$dir/rabbitmq.pid"
	echo "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbitmq_start() {
	local dir=$1 port i
	prepare_dir "$dir"
	port=$(port_of "$dir" amqp)
	# guest may only connect from loopback, which is all we listen on
	[ -f "$dir/rabbitmq.conf" ] || cat > "$dir/rabbitmq.conf" <<-EOF
		listeners.tcp.default = 127.0.0.1:$port
		loopback_users.guest = true
		log.console = false
	EOF
	[ -f "$dir/enabled_plugins" ] || echo '[].' > "$dir/enabled_plugins"
	own "$dir"
	mapfile -t env < <(rabbitmq_env "$dir")
	as_pg env "${env[@]}" setsid /usr/lib/rabbitmq/bin/rabbitmq-server \
		>> "$dir/server.out" 2>&1 < /dev/null &
	for i in $(seq 120); do
		if as_pg env "${env[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -n "eventstore-$port@localhost" \
			await_startup -t 1 >/dev/null 2>&1; then
			echo "$port"
			return 0
		fi
		sleep 0.5
	done
	echo "rabbitmq-server did not start within 60 s:" >&2
	tail -n 30 "$dir/server.out" >&2
	return 1
}

rabbitmq_stop() {
	local dir=$1 port pid
	[ -s "$dir/amqp.port" ] || return 0
	port=$(cat "$dir/amqp.port")
	mapfile -t env < <(rabbitmq_env "$dir")
	as_pg env "${env[@]}" timeout 30 /usr/lib/rabbitmq/bin/rabbitmqctl -n "eventstore-$port@localhost" \
		stop >/dev/null 2>&1 || true
	# Whatever is left of it (and its epmd) goes too
	if [ -s "$dir/rabbitmq.pid" ]; then
		pid=$(cat "$dir/rabbitmq.pid")
		kill -9 "$pid" 2>/dev/null || true
		rm -f "$dir/rabbitmq.pid"
	fi
	as_pg env "${env[@]}" epmd -kill >/dev/null 2>&1 || true
}

nats_start() {
	local dir=$1 max_payload=${2:-1048576} port i
	prepare_dir "$dir"
	port=$(port_of "$dir" nats)
	cat > "$dir/nats.conf" <<-EOF
		listen: 127.0.0.1:$port
		max_payload: $max_payload
		jetstream {
			store_dir: "$dir/jetstream"
		}
	EOF
	own "$dir"
	as_pg setsid nats-server -c "$dir/nats.conf" -P "$dir/nats.pid" \
		>> "$dir/server.out" 2>&1 < /dev/null &
	for i in $(seq 120); do
		if grep -q "Server is ready" "$dir/server.out" 2>/dev/null &&
			(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
		sleep 0.5
	done
	echo "nats-server did not start within 60 s:" >&2
	tail -n 30 "$dir/server.out" >&2
	return 1
}

nats_stop() {
	local dir=$1 pid i
	[ -s "$dir/nats.pid" ] || return 0
	pid=$(cat "$dir/nats.pid")
	kill "$pid" 2>/dev/null || true
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$dir/nats.pid"
	# The next start must wait for its own "ready" line
	[ -f "$dir/server.out" ] && mv "$dir/server.out" "$dir/server.out.old"
	return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	cmd=${1:-}
	shift || true
	case $cmd in
		rabbitmq-start) rabbitmq_start "$@" ;;
		rabbitmq-stop) rabbitmq_stop "$@" ;;
		nats-start) nats_start "$@" ;;
		nats-stop) nats_stop "$@" ;;
		*) echo "usage: $0 rabbitmq-start|rabbitmq-stop|nats-start|nats-stop DIR [MAX_PAYLOAD]" >&2; exit 2 ;;
	esac
fi
