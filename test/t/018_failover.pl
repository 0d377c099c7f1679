# Failover: a primary and a synchronous streaming standby relay to the same
# (mock) Kafka.  Routed events are appended on the primary while its relay
# delivers; one broker is down, so the outbox holds a backlog, when the
# primary stops with -m immediate.  While that broker is down, the standby's
# read_all still gets every event (the primary's relay still publishes its
# horizon).  On the standby no relay or launcher ran before the promotion
# (relay_status() said 'standby'); after it, a relay starts there
# and delivers every event the new primary has: each one at least once, per
# key the first copies in version order, and nothing that is not in its
# events table.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $streams = 200;

my $mock = start_mock();
mock_command($mock, 'create_topic orders 4');

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
# small batches and window: the relay is mid-way for longer
$primary->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.database = 'postgres'
eventstore.kafka_brokers = '$mock->{bootstrap}'
eventstore.retry_backoff_initial = '100ms'
eventstore.retry_backoff_max = '1s'
eventstore.relay_batch_size = 20
eventstore.relay_window_messages = 50
));
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION eventstore;
	SELECT eventstore.add_route('order', 'orders');
});

# The standby has the same settings (copied with the backup)
$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->start;

# Synchronous replication: every commit the primary's sessions (and relay)
# can see is on the standby
$primary->append_conf('postgresql.conf', qq(
synchronous_standby_names = '@{[ $standby->name ]}'
synchronous_commit = on
));
$primary->reload;
ok($primary->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_replication WHERE sync_state = 'sync'}),
	'the standby replicates synchronously');

my $workers_q = q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type IN ('eventstore relay', 'eventstore launcher')};
my $launcher_q = q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'eventstore launcher'};
is($primary->safe_psql('postgres', $launcher_q), '1', 'the primary runs a launcher');
is($standby->safe_psql('postgres', $workers_q), '0', 'no relay on the standby');
is($standby->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE state = 'standby' AND pid IS NULL) || '/' || count(*)
	  FROM eventstore.relay_status()}),
	'1/1', "relay_status() on the standby: 'standby'");

# The load: pgbench clients append to random streams, one or three events
# per transaction (several transactions per stream, so per-key order
# matters), rate-limited, 1200 transactions
my $dir = $primary->basedir;
my $script = "$dir/load.sql";
append_to_file($script, qq{\\set n random(1, $streams)
\\set k random(1, 3)
SELECT eventstore.append('order-' || :n, NULL,
	(SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i)))
	 FROM generate_series(1, :k) i));
});
my $load_h = IPC::Run::start(
	[ 'pgbench', '--no-vacuum', '--client=4', '--jobs=2', '--rate=200', '--transactions=300',
		'-f', $script, $primary->connstr('postgres') ],
	'>', "$dir/load.out", '2>', "$dir/load.err",
	IPC::Run::timeout(120));

my $events_q = 'SELECT count(*) FROM eventstore.events';
ok($primary->poll_query_until('postgres', "SELECT ($events_q) >= 1000"),
	'1000 events appended');
# The leader of partition 0 goes down, for the rest of the primary's life:
# the keys of the partitions it leads wait in the outbox, the others are
# delivered (the mock spreads leaders at random: take one that leads some)
my ($meta, $meta_err) = ('', '');
IPC::Run::run([ 'kcat', '-L', '-b', $mock->{bootstrap}, '-t', 'orders' ],
	'>', \$meta, '2>', \$meta_err, IPC::Run::timeout(60))
  or die "kcat -L failed: $meta_err";
$meta =~ /partition 0, leader (\d+)/ or die "no leader for orders: $meta";
my $down = $1;
mock_command($mock, "down $down");
ok($load_h->finish, 'the load ran');
my $appended = $primary->safe_psql('postgres', $events_q);
# The horizon the primary's relay publishes still moves while it cannot
# deliver: read_all on the standby gets every event
ok($standby->poll_query_until('postgres',
	"SELECT count(*) = $appended FROM eventstore.read_all(0, 100000)"),
	'with a broker down, the standby reads every event');
# (what the relay recorded as acknowledged: a consumer cannot read the topic
# while one of its partitions has no leader)
my $delivered_before = $primary->safe_psql('postgres',
	q{SELECT sent_total FROM eventstore.relay_status() WHERE sink = 'kafka'});
my $pending = $primary->safe_psql('postgres', 'SELECT count(*) FROM eventstore.outbox');
cmp_ok($pending, '>', 0, 'messages wait in the outbox when the primary stops');
cmp_ok($delivered_before, '>', 0, 'and some were delivered');
note "before the stop: $delivered_before messages delivered, $pending in the outbox";
$primary->stop('immediate');

mock_command($mock, "up $down");
is($standby->safe_psql('postgres', $workers_q), '0',
	'still no relay on the standby after the primary stopped');
$standby->promote;
ok($standby->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity
	  WHERE backend_type = 'eventstore relay' AND datname = 'postgres'}),
	'a relay starts after the promotion');
is($standby->safe_psql('postgres', $launcher_q), '1', 'and a launcher');
ok(wait_drained($standby), 'the new primary drains its outbox');
is($standby->safe_psql('postgres',
	q{SELECT count(*) FROM eventstore.relay_status() WHERE state = 'standby'}),
	'0', "relay_status() no longer says 'standby'");

# What arrived against the events the new primary has
my %events = map { my ($id, $s, $v) = split /\|/; ($id => "$s/$v") }
  split /\n/, $standby->safe_psql('postgres',
	q{SELECT event_id, stream_id, stream_version FROM eventstore.events});
my %versions = map { split /\|/ } split /\n/, $standby->safe_psql('postgres',
	q{SELECT stream_id, version FROM eventstore.streams});
my $msgs = consume($mock->{bootstrap}, 'orders');
my %arrived;
my @strangers;
for my $m (@$msgs)
{
	my $id = $m->{headers}{ce_id} // '';
	my $e = $events{$id};
	if ($e && $e eq "$m->{key}/$m->{headers}{ce_streamversion}")
	{
		$arrived{$id}++;
	}
	else
	{
		push @strangers, $m;
	}
}
my @missing = grep { !$arrived{$_} } keys %events;
is(scalar keys %events, $appended, 'the new primary has the events');
is(scalar @missing, 0, 'every event of the new primary arrived in Kafka')
  or diag scalar(@missing) . ' missing, e.g. ' . join(', ', map { $events{$_} } grep { defined } @missing[ 0 .. 4 ]);
is(scalar @strangers, 0, 'nothing arrived that is not in its events table')
  or diag explain [ @strangers[ 0 .. 2 ] ];
note scalar(@$msgs) . ' messages for ' . scalar(keys %events) . ' events ('
  . scalar(grep { $arrived{$_} > 1 } keys %arrived) . ' sent more than once)';

my $order = first_seen_order($msgs, sub { $_[0]{headers}{ce_streamversion} });
my @disorder = grep { join(',', @{ $order->{$_} }) ne join(',', 1 .. $versions{$_}) }
  keys %versions;
is(scalar @disorder, 0, 'per key, first copies arrive in version order 1..N')
  or diag "$disorder[0]: " . join(',', @{ $order->{ $disorder[0] } // [] });

$standby->stop;
stop_mock($mock);
done_testing();
