# Faults: brokers down under load, injected produce errors, an oversize
# message, the postmaster stopped with -m immediate while relaying, and the
# relay worker killed.  Nothing committed is lost and each key's order holds.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $mock = start_mock();
my $node = relay_node('faults', $mock->{bootstrap},
	"eventstore.delivery_timeout = '3s'\nrestart_after_crash = on\n");
$node->safe_psql('postgres', q{SELECT eventstore.add_route('acct', 'accounts')});

# Append $n events to each of $streams streams acct-1.., one transaction per
# event, sleeping $pause seconds after each round, from a background session;
# returns the session's handle.
sub append_load
{
	my ($streams, $n, $pause) = @_;
	$pause //= 0;
	my $sql = qq{
		DO \$\$
		BEGIN
			FOR v IN 1..$n LOOP
				FOR s IN 1..$streams LOOP
					PERFORM eventstore.append('acct-' || s, NULL,
						jsonb_build_object('type', 'Tick', 'data', jsonb_build_object('n', v)));
					COMMIT;
				END LOOP;
				PERFORM pg_sleep($pause);
			END LOOP;
		END
		\$\$;};
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err);
}

# All events of the acct streams arrived, each key in version order.
sub check_accounts
{
	my ($label) = @_;
	my $msgs = consume($mock->{bootstrap}, 'accounts');
	my %expected = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
		q{SELECT stream_id, version FROM eventstore.streams WHERE stream_id LIKE 'acct-%'});
	my $order = first_seen_order($msgs, sub { $_[0]{headers}{ce_streamversion} });
	my @wrong = grep {
		join(',', @{ $order->{$_} // [] }) ne join(',', 1 .. $expected{$_})
	} keys %expected;
	is(scalar @wrong, 0, "$label: every event arrived, in order per key")
	  or diag "first wrong key $wrong[0]: " . join(',', @{ $order->{ $wrong[0] } // [] });
	return scalar @$msgs;
}

# 1. Brokers down for several seconds under load, then up
my $pid = relay_pid($node);
my $load = append_load(10, 80, 0.1);    # about 8 seconds
sleep 1;
mock_command($mock, 'down all');
sleep 5;
mock_command($mock, 'up all');
$load->finish or die 'load failed';
wait_drained($node) or die 'not drained after the outage';
check_accounts('brokers down');
is(relay_pid($node), $pid, 'the relay rode out the outage without restarting');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventstore.dead_letters'), '0',
	'no dead letters from the outage');

# 2. Injected retriable errors: retried and delivered
mock_command($mock, 'produce_error 4 NOT_ENOUGH_REPLICAS');
$node->safe_psql('postgres', q{SELECT eventstore.append('acct-1', NULL, '{"type": "Retried", "data": {}}')});
wait_drained($node) or die 'not drained after injected errors';
my $retried = consume($mock->{bootstrap}, 'accounts');
ok((grep { $_->{headers}{ce_type} eq 'Retried' } @$retried), 'message delivered despite injected errors');

# 3. An oversize message is dead-lettered; the next one of its key goes on
$node->safe_psql('postgres', q{
	SELECT eventstore.publish('big', 'k-big', jsonb_build_object('blob', repeat('x', 2000000)));
	SELECT eventstore.publish('big', 'k-big', '{"after": true}');
});
wait_drained($node) or die 'not drained after the oversize message';
is($node->safe_psql('postgres',
	q{SELECT topic || ' ' || message_key || ' ' || split_part(last_error, ':', 1) || ' ' || attempts
	  FROM eventstore.dead_letters}),
	'big k-big MSG_SIZE_TOO_LARGE 1', 'oversize message dead-lettered at once');
my $big = consume($mock->{bootstrap}, 'big');
is(scalar @$big, 1, 'only the next message reached the topic');
is($big->[0]{payload}, '{"after": true}', 'the next message of the key was delivered');
ok($node->log_contains('MSG_SIZE_TOO_LARGE'), 'the failure was logged with the Kafka error name');

# 4. The postmaster stopped with -m immediate in the middle of relaying
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET eventstore.relay_batch_size = 50;
	SELECT pg_reload_conf();
});
$node->safe_psql('postgres', q{
	SELECT eventstore.append('acct-' || s, NULL,
		jsonb_build_object('type', 'Bulk', 'data', jsonb_build_object('n', v)))
	FROM generate_series(1, 1000) v, generate_series(1, 20) s ORDER BY v, s});
$node->poll_query_until('postgres',
	q{SELECT count(*) < 19000 AND count(*) > 0 FROM eventstore.outbox}) or die 'relay did not start';
$node->stop('immediate');
$node->start;
wait_drained($node) or die 'not drained after the crash';
check_accounts('immediate stop');

# 5. The relay killed with SIGTERM, then SIGKILL: it comes back
for my $signal ('TERM', 'KILL')
{
	my $old = relay_pid($node);
	$load = append_load(5, 40, 0.02);
	usleep(300_000);
	kill $signal, $old;
	$load->finish;    # SIGKILL restarts every backend; the load may be cut short
	$node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity
		   WHERE backend_type = 'eventstore relay' AND pid <> $old})
	  or die "relay did not come back after SIG$signal";
	wait_drained($node) or die "not drained after SIG$signal";
	check_accounts("relay SIG$signal");
}

$node->stop;
stop_mock($mock);
done_testing();
