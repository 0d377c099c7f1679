# A waiting poll on a hot standby.  The poll keeps its statement's snapshot
# for the whole wait, so without hot_standby_feedback the primary's cleanup
# (a VACUUM, HOT pruning) conflicts with it: replay stops behind that record
# (the event waited for never arrives) and the poll is cancelled after
# max_standby_streaming_delay.  Found by a review; now such a poll is refused
# at once with 55000, and with hot_standby_feedback on it waits and returns
# the event appended on the primary meanwhile, whatever the primary cleans.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = ''
autovacuum = off
));
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION eventstore;
	CREATE TABLE busy (x int);
	SELECT eventstore.create_subscription('s', category => 'order');
});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
# Short, so that a conflict would show within the test's time
$standby->append_conf('postgresql.conf', "max_standby_streaming_delay = '3s'\n");
$standby->start;

$primary->safe_psql('postgres', q{SELECT eventstore.append_event('other-1', 0, 'X', '{}')});
$primary->wait_for_catchup($standby);
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM eventstore.read_all(0, 10)}),
	'the standby reads below the published horizon');

# Without hot_standby_feedback: refused at once, and nothing waits
my ($ret, $out, $err) = $standby->psql('postgres',
	q{SELECT stream_id FROM eventstore.poll('s', 10, '60 s')});
isnt($ret, 0, 'without hot_standby_feedback a waiting poll on a standby fails');
like($err, qr/poll cannot wait on a hot standby without hot_standby_feedback/,
	'and says why');
($ret, $out, $err) = $standby->psql('postgres',
	q{SELECT stream_id FROM eventstore.poll('s', 10, '0')}, on_error_stop => 0);
is($ret, 0, 'a poll without wait works there');

# With hot_standby_feedback: the consumer waits up to 60 s on the standby
$standby->append_conf('postgresql.conf', "hot_standby_feedback = on\n");
$standby->reload;
$standby->poll_query_until('postgres', q{SELECT current_setting('hot_standby_feedback') = 'on'})
  or die 'hot_standby_feedback not on';
$primary->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_replication WHERE backend_xmin IS NOT NULL})
  or die 'no feedback from the standby';
($out, $err) = ('', '');
my $h = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $standby->connstr('postgres'), '-c',
	  q{SELECT stream_id FROM eventstore.poll('s', 10, '60 s')} ],
	'>', \$out, '2>', \$err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
$standby->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%eventstore.poll%' AND pid <> pg_backend_pid()})
  or die 'the poll did not start';

# The primary: ordinary work in the same database (a row updated, a
# VACUUM), then the event the consumer waits for
$primary->safe_psql('postgres', q{INSERT INTO busy VALUES (1)});
$primary->safe_psql('postgres', q{UPDATE busy SET x = 2});
$primary->safe_psql('postgres', q{VACUUM busy});
$primary->safe_psql('postgres', q{SELECT eventstore.append_event('order-1', 0, 'Placed', '{}')});

$h->finish;
is($err, '', 'with hot_standby_feedback the waiting poll ends without an error');
is($out, "order-1\n", 'and returns the event appended on the primary while it waited');

$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT stream_id FROM eventstore.poll('s', 10, '0')}),
	'order-1', 'a poll without wait finds it too (nothing was acknowledged)');
done_testing();
