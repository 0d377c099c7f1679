# Wake-ups: with eventstore.relay_idle_interval at one hour the relay only
# looks at the outbox when something wakes it, so each delivery below proves
# a wake-up: a commit, the end (commit or rollback) of a transaction that
# held the outbox horizon back, and COMMIT PREPARED.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();
my $node = relay_node('wakeup', $mock->{bootstrap},
	"eventstore.relay_idle_interval = '1h'\nmax_prepared_transactions = 5\n");
$node->poll_query_until('postgres',
	q{SELECT state = 'idle' AND pending = 0 FROM eventstore.relay_status()})
  or die 'relay not idle';

# An open psql session fed through a pipe: returns a handle.
sub session
{
	my $s = { in => '', out => '', err => '' };
	# A timer for each command (run_in restarts it), not for the session
	$s->{timer} = IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default);
	$s->{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$s->{in}, '>', \$s->{out}, '2>', \$s->{err}, $s->{timer});
	return $s;
}

# Run SQL in a session and wait for the line of output that ends it.
sub run_in
{
	my ($s, $sql) = @_;
	$s->{out} = '';
	$s->{in} .= "$sql\nSELECT 'done';\n";
	$s->{timer}->start;
	$s->{h}->pump until $s->{out} =~ /^done$/m || $s->{timer}->is_expired;
	die "psql session: no answer to $sql: $s->{err}" if $s->{timer}->is_expired;
	$s->{timer}->reset;
	return;
}

# Let the relay finish its round and go to sleep on its idle interval (one
# hour): after a round it may wake once more to report its statistics,
# which PostgreSQL defers up to 10 seconds (PGSTAT_IDLE_INTERVAL), and that
# round would find the rows without any wake-up.  Not a timing assertion:
# what is delivered after this, something woke the relay for.
sub settle
{
	sleep 11;
	return;
}

# The payloads that arrived on topic 'wake' (as JSON text).
sub arrived
{
	return { map { $_->{payload} => 1 } @{ consume($mock->{bootstrap}, 'wake') } };
}

# 1. A plain commit
$node->safe_psql('postgres', q{SELECT eventstore.publish('wake', 'k1', '{"n": 1}')});
ok(wait_drained($node), 'commit: delivered');
ok(arrived()->{'{"n": 1}'}, 'commit: the message is on the topic');

# 2. T1 publishes and stays open (holding the horizon), T2 publishes and
# commits, then T1 commits: both are delivered
my $t1 = session();
run_in($t1, q{BEGIN; SELECT eventstore.publish('wake', 'k2', '{"n": 2}');});
$node->safe_psql('postgres', q{SELECT eventstore.publish('wake', 'k3', '{"n": 3}')});
settle();
run_in($t1, 'COMMIT;');
ok(wait_drained($node), 'held back by an open transaction, then commit: delivered');
my $got = arrived();
ok($got->{'{"n": 2}'} && $got->{'{"n": 3}'}, 'both messages are on the topic');

# 3. The same with T1 rolling back: T2's message is delivered
run_in($t1, q{BEGIN; SELECT eventstore.publish('wake', 'k4', '{"n": 4}');});
$node->safe_psql('postgres', q{SELECT eventstore.publish('wake', 'k5', '{"n": 5}')});
settle();
run_in($t1, 'ROLLBACK;');
ok(wait_drained($node), 'held back by an open transaction, then rollback: delivered');
$got = arrived();
ok($got->{'{"n": 5}'} && !$got->{'{"n": 4}'}, 'the committed message arrived, the rolled back one not');

# 4. PREPARE TRANSACTION, then COMMIT PREPARED from another session
run_in($t1, q{BEGIN; SELECT eventstore.publish('wake', 'k6', '{"n": 6}'); PREPARE TRANSACTION 'wake6';});
settle();
$node->safe_psql('postgres', q{COMMIT PREPARED 'wake6'});
ok(wait_drained($node), 'COMMIT PREPARED: delivered');
ok(arrived()->{'{"n": 6}'}, 'the prepared message is on the topic');

# 5. A failed delivery is retried at its backoff (100 ms to 1 s here), not
# at the idle interval; meanwhile the relay says it is backing off
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET eventstore.delivery_timeout = '500ms';
	SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT state = 'idle' FROM eventstore.relay_status()})
  or die 'relay not idle after the reload';
mock_command($mock, 'down all');
$node->safe_psql('postgres', q{SELECT eventstore.publish('wake', 'k7', '{"n": 7}')});
ok($node->poll_query_until('postgres',
		q{SELECT attempts >= 3 FROM eventstore.outbox WHERE message_key = 'k7'}),
	'retried at the backoff, three attempts');
mock_command($mock, 'up all');
ok(wait_drained($node), 'delivered once the brokers are back');

$t1->{in} .= "\\q\n";
$t1->{h}->finish;
$node->stop;
stop_mock($mock);
done_testing();
