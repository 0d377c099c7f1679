# Hot-standby reads right after ALTER EXTENSION eventstore UPDATE from
# 0.5.0 (the documented upgrade: new library, restart, update).  The
# primary's relay publishes the read horizon when woken by an append that
# ended, or as it attaches; found by a review: after the update the relay
# already ran and nothing woke it, so the new sequence stayed empty and
# read_all on a standby failed with 55000 until someone appended.  The
# update now has the relay publish.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = ''
));
$primary->start;
# A database at 0.5.0 with events (written by the new library, as between
# the restart and the update)
$primary->safe_psql('postgres', q{CREATE EXTENSION eventstore VERSION '0.5.0'});
$primary->safe_psql('postgres', q{SELECT eventstore.append_event('order-1', 0, 'Placed', '{}')});
$primary->safe_psql('postgres', q{SELECT eventstore.append_event('order-1', 1, 'Paid', '{}')});
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->start;
$primary->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eventstore relay' AND datname = 'postgres'})
  or die 'no relay';

$primary->safe_psql('postgres', 'ALTER EXTENSION eventstore UPDATE');
is($primary->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'eventstore'}),
	'0.6.0', 'updated to 0.6.0');
$primary->wait_for_catchup($standby);

# Far longer than the relay's 20 ms publishing interval and the replay
my $got = '';
my $error = '';
for (1 .. 100)
{
	my ($rc, $out, $err) = $standby->psql('postgres',
		q{SELECT string_agg(stream_version::text, ',' ORDER BY global_position) FROM eventstore.read_all(0, 10)});
	($got, $error) = ($out, $err);
	last if $rc == 0 && $out eq '1,2';
	$primary->wait_for_catchup($standby);
	select(undef, undef, undef, 0.1);
}
is($error, '', 'read_all on the standby after the update: no error');
is($got, '1,2', 'read_all on the standby returns the events appended before the update');
done_testing();
