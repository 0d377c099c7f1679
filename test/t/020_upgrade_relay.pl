# The relay across ALTER EXTENSION UPDATE.  A database installed at 0.1.0,
# with routed events and a published message in its outbox, served by the
# new library: the relay waits (the old schema has no sink column) and says
# why in the log; after the update it delivers what waited, in order, then
# what is appended next, and publishes the read horizon for hot standbys
# (the sequence the update created).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();
my $node = PostgreSQL::Test::Cluster->new('upgrade_relay');
$node->init;
$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = '$mock->{bootstrap}'
eventstore.retry_backoff_initial = '100ms'
eventstore.retry_backoff_max = '1s'
));
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', q{CREATE EXTENSION eventstore VERSION '0.1.0'});
$node->safe_psql('app', q{
	SELECT eventstore.add_route('order', 'orders');
	SELECT eventstore.append('order-1', 0, '[{"type": "Placed", "data": {"n": 1}}, {"type": "Paid", "data": {"n": 2}}]');
	SELECT eventstore.publish('mail', 'k-1', '{"to": "x"}');
});

# The relay of database app reads the old outbox and waits, saying why
my $log_offset = 0;
ok($node->wait_for_log(qr/ALTER EXTENSION eventstore UPDATE in database "app"/,
		$log_offset), 'before the update the relay waits and names the command to run');
is($node->safe_psql('app', 'SELECT count(*) FROM eventstore.outbox'), '3',
	'nothing was sent from the 0.1.0 outbox');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstore relay' AND datname = 'app'}),
	'1', 'one relay serves the database');

$node->safe_psql('app', 'ALTER EXTENSION eventstore UPDATE');
is($node->safe_psql('app', q{SELECT extversion FROM pg_extension WHERE extname = 'eventstore'}),
	'0.6.0', 'updated to 0.6.0');
$node->safe_psql('app', q{SELECT eventstore.append('order-1', 2, '{"type": "Shipped", "data": {"n": 3}}')});
ok(wait_drained_in($node, 'app'), 'after the update the outbox drains');

my $orders = consume($mock->{bootstrap}, 'orders');
is_deeply(first_seen_order($orders, sub { $_[0]{headers}{ce_type} })->{'order-1'},
	[ 'Placed', 'Paid', 'Shipped' ],
	'the events that waited arrive, then the new one, in order');
my $mail = consume($mock->{bootstrap}, 'mail');
is(scalar(@$mail), 1, 'the message published on 0.1.0 arrives');
is($mail->[0]{key}, 'k-1', 'with its key');

# The relay publishes the read horizon into the sequence the update created
ok($node->poll_query_until('app',
		q{SELECT is_called AND last_value = eventstore.read_horizon() FROM eventstore.events_published_horizon}),
	'the relay publishes the read horizon after the update');
is($node->safe_psql('app', 'SELECT eventstore.read_horizon()'), '4',
	'and it is the primary horizon: every position up to 3 is readable');

$node->stop;
stop_mock($mock);
done_testing();

# Wait until database $db's outbox is empty
sub wait_drained_in
{
	my ($n, $db) = @_;
	return $n->poll_query_until($db, 'SELECT count(*) = 0 FROM eventstore.outbox');
}
