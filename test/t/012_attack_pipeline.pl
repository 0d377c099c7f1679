# Attacks on the pipelined relay (issue 13 review).  Each part is a finding
# of the review: it fails on the code it was written against.
#
# 1. A retry that falls due while the relay has no revisit scheduled (here:
#    after the worker restarted) is never read again, and the later messages
#    of its key are sent before it.
# 2. Switching eventstore.on_dead_letter from park to continue (a reload)
#    leaves the parked key's held messages below the read position: never
#    sent, and a new message of the key overtakes them.
# 3. A transaction that enqueued and then dropped the extension and made a
#    relation named eventstore.outbox_id_seq that is not a sequence cannot
#    commit: the new PRE_COMMIT callback raises an error.
# 4. Plain broker outages under load (retriable failures only): messages of
#    a key arrive before earlier ones, and rows stay in the outbox for good
#    (retries that fell due below the read position, and the later rows of
#    their keys the read skipped while those retries were pending).
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $mock = start_mock();

# Which parts to run (all by default; ES_ATTACK_PARTS=2,4 while iterating)
my %parts = map { $_ => 1 } split /,/, ($ENV{ES_ATTACK_PARTS} // '1,2,3,4');

# Wait up to $secs seconds for $sql to return 't'
sub wait_for
{
	my ($node, $sql, $secs) = @_;
	for (1 .. $secs * 10)
	{
		return 1 if $node->safe_psql('postgres', $sql) eq 't';
		usleep(100_000);
	}
	return 0;
}

# For key $key on $topic, the "n" of each first copy, in arrival order
sub order_of
{
	my ($topic, $key) = @_;
	my $order = first_seen_order(consume($mock->{bootstrap}, $topic),
		sub { decode_json($_[0]{payload})->{n} });
	return join(',', @{ $order->{$key} // [] });
}

# Set a relay setting and reload
sub set_relay
{
	my ($node, $name, $value) = @_;
	$node->safe_psql('postgres', qq{
		ALTER SYSTEM SET eventstore.$name = '$value';
		SELECT pg_reload_conf();});
	return;
}

# 1. A retry falling due with no revisit scheduled
if ($parts{1})
{
	my $node = relay_node('retry_lost', $mock->{bootstrap}, q{
eventstore.delivery_timeout = '200ms'
eventstore.retry_backoff_initial = '6s'
eventstore.retry_backoff_max = '6s'
eventstore.relay_window_messages = 1
});
	# The first message of key "a" fails (brokers down) and is scheduled
	# for a retry 3 to 6 s later
	mock_command($mock, 'down all');
	$node->safe_psql('postgres', q{SELECT eventstore.publish('lost', 'a', '{"n": 1}')});
	ok(wait_for($node, q{SELECT coalesce(bool_and(attempts >= 1), false) FROM eventstore.outbox}, 60),
		'the first message of key a is waiting for a retry');

	# The relay is switched off and restarts (as after a crash or a server
	# restart): it no longer knows when that retry falls due
	set_relay($node, 'kafka_brokers', '');
	ok(wait_for($node, q{SELECT state = 'disabled' FROM eventstore.relay_status()}, 30),
		'relay disabled');
	my $pid = relay_pid($node);
	$node->safe_psql('postgres', 'SELECT pg_terminate_backend(pid) FROM eventstore.relay_status()');
	ok(wait_for($node,
		qq{SELECT pid IS NOT NULL AND pid <> $pid AND state = 'disabled' FROM eventstore.relay_status()}, 30),
		'the relay restarted');
	mock_command($mock, 'up all');

	# A backlog of other keys, then the second message of key "a"
	$node->safe_psql('postgres', q{
		SELECT eventstore.publish('lost', 'x' || i, jsonb_build_object('n', i)) FROM generate_series(1, 3000) i;
		SELECT eventstore.publish('lost', 'a', '{"n": 2}');});

	# Turn the relay on about a second before the retry falls due: its read
	# passes the retry (not due yet), and the backlog takes longer
	wait_for($node, q{SELECT next_attempt_at - now() < interval '1 s'
		FROM eventstore.outbox WHERE message_key = 'a' AND attempts >= 1}, 30);
	set_relay($node, 'kafka_brokers', $mock->{bootstrap});
	ok(wait_for($node, 'SELECT count(*) = 0 FROM eventstore.outbox', 60),
		'every message is delivered, also the retried one')
	  or diag $node->safe_psql('postgres',
		'SELECT id, message_key, attempts, next_attempt_at, now() FROM eventstore.outbox');
	is(order_of('lost', 'a'), '1,2', 'key a: first copies in outbox order');
	$node->stop;
}

# 2. park, then continue
if ($parts{2})
{
	my $node = relay_node('park_switch', $mock->{bootstrap},
		"eventstore.on_dead_letter = park\n");
	# 2 MB: refused by the producer at once, a permanent failure
	$node->safe_psql('postgres', q{
		BEGIN;
		SELECT eventstore.publish('park', 'p', jsonb_build_object('n', 1, 'blob', repeat('x', 2000000)));
		SELECT eventstore.publish('park', 'p', '{"n": 2}');
		COMMIT;
		SELECT eventstore.publish('park', 'q', '{"n": 1}');});
	ok(wait_for($node, q{SELECT count(*) = 1 FROM eventstore.dead_letters}, 30),
		'the first message of key p is a dead letter');
	ok(wait_for($node, q{SELECT array_agg(message_key) = '{p}' FROM eventstore.outbox}, 30),
		'the second one is parked, key q went on');
	# The relay reads past the parked message
	$node->safe_psql('postgres', q{SELECT eventstore.publish('park', 'q', '{"n": 2}')});
	ok(wait_for($node, q{SELECT array_agg(message_key) = '{p}' FROM eventstore.outbox}, 30),
		'a later message of key q went on too');

	set_relay($node, 'on_dead_letter', 'continue');
	$node->safe_psql('postgres', q{SELECT eventstore.publish('park', 'p', '{"n": 3}')});
	ok(wait_for($node, 'SELECT count(*) = 0 FROM eventstore.outbox', 30),
		'continue: the parked message is sent')
	  or diag $node->safe_psql('postgres', 'SELECT id, message_key, attempts FROM eventstore.outbox');
	is(order_of('park', 'p'), '2,3', 'key p: the parked message before the later one');
	$node->stop;
}

# 3. The commit-time callback must not fail a user's commit
if ($parts{3})
{
	my $node = relay_node('precommit', $mock->{bootstrap});
	my ($ret, $out, $err) = $node->psql('postgres', q{
		BEGIN;
		SELECT eventstore.publish('pc', 'k', '{}');
		DROP EXTENSION eventstore CASCADE;
		CREATE SCHEMA IF NOT EXISTS eventstore;
		CREATE TABLE eventstore.outbox_id_seq (id int);
		COMMIT;});
	unlike($err, qr/ERROR/, 'the commit succeeds');
	is($node->safe_psql('postgres', q{SELECT to_regclass('eventstore.outbox_id_seq') IS NOT NULL}), 't',
		'the transaction committed');
	$node->stop;
}

# 4. Brokers down under load with a short delivery timeout: the turn that
# purges the queue reads and produces newer messages of the purged keys
# before the purge's reports are served; when the brokers come back those
# newer messages arrive before the purged ones are retried
if ($parts{4})
{
	my $node = relay_node('purge_race', $mock->{bootstrap}, q{
eventstore.delivery_timeout = '300ms'
eventstore.relay_batch_size = 1
eventstore.kafka_config = 'reconnect.backoff.ms=10;reconnect.backoff.max.ms=50'
});
	my $sql = q{
		DO $$
		BEGIN
			FOR v IN 1..1500 LOOP
				FOR s IN 1..3 LOOP
					PERFORM eventstore.publish('race', 'k' || s, jsonb_build_object('n', v));
					COMMIT;
				END LOOP;
				PERFORM pg_sleep(0.005);
			END LOOP;
		END
		$$;};
	my ($out, $err) = ('', '');
	my $load = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err);
	sleep 1;
	for (1 .. 5)
	{
		mock_command($mock, 'down all');
		sleep 1;
		mock_command($mock, 'up all');
		sleep 1;
	}
	$load->finish or die "load failed: $err";
	ok(wait_for($node, 'SELECT count(*) = 0 FROM eventstore.outbox', 120), 'drained');
	my $order = first_seen_order(consume($mock->{bootstrap}, 'race'),
		sub { decode_json($_[0]{payload})->{n} });
	for my $k (qw(k1 k2 k3))
	{
		my @got = @{ $order->{$k} // [] };
		my @bad = grep { $got[$_] < $got[ $_ - 1 ] } 1 .. $#got;
		is(scalar @bad, 0, "$k: first copies in outbox order")
		  or diag "$k: " . join(',', map { "$got[$_-1]>$got[$_]" } @bad[0 .. ($#bad < 4 ? $#bad : 4)]);
	}
	$node->stop;
}

stop_mock($mock);
done_testing();
