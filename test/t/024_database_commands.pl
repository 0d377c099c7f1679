# Commands that need a database without sessions, on a database a relay
# serves: CREATE DATABASE ... TEMPLATE (a common way to clone one, e.g. for
# tests), ALTER DATABASE ... RENAME and DROP DATABASE.  Found by a review:
# they failed after 5 s ("is being accessed by other users") because the
# relay stays connected.  Now the relay leaves first, and DROP EXTENSION
# leaves the database free too.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('ddl');
$node->init;
$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = ''
));
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', 'CREATE EXTENSION eventstore');
$node->safe_psql('app', q{SELECT eventstore.append_event('order-1', 0, 'Placed', '{}')});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eventstore relay' AND datname = 'app'}),
	'a relay serves app');

my ($rc, $out, $err) = $node->psql('postgres', 'CREATE DATABASE app_copy TEMPLATE app');
is($err, '', 'CREATE DATABASE ... TEMPLATE app succeeds');
($rc, $out, $err) = $node->psql('postgres', 'ALTER DATABASE app RENAME TO app_renamed');
is($err, '', 'ALTER DATABASE app RENAME succeeds');

# "drop the extension first": then DROP DATABASE works without FORCE
my $db = $rc == 0 ? 'app_renamed' : 'app';
$node->safe_psql($db, 'DROP EXTENSION eventstore');
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'eventstore relay' AND datname = '$db'}),
	'after DROP EXTENSION the relay leaves the database');
($rc, $out, $err) = $node->psql('postgres', "DROP DATABASE $db");
is($err, '', 'and DROP DATABASE succeeds');
done_testing();
