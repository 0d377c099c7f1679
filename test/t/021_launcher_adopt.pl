# The launcher adopts, as it starts, the slots of relays a previous launcher
# started (EsLauncherAdopt).  A relay that the previous launcher registered
# but that dies before it attaches -- here it waits in InitPostgres for the
# lock of a database being renamed, and the database no longer accepts
# connections when it gets the lock -- never marks its slot.  Found by a
# review: the new launcher took such a slot for a running relay, and the
# database never got a relay again until a server restart.  Now a new
# launcher frees every slot whose relay has not attached (a late relay finds
# its claim over and ends), and starts a relay again.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('adopt');
$node->init;
$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = ''
));
$node->start;

sub launcher_pid
{
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstore launcher'});
}

sub relays_in
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstore relay' AND datname = '$db'});
}

$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eventstore launcher'})
  or die 'no launcher';
$node->safe_psql('postgres', 'CREATE DATABASE x');
my $xoid = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'x'});

# A session renames x and closes it to connections, in a transaction left open
my ($in, $out, $err) = ('', '', '');
my $a = IPC::Run::start([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<', \$in, '>', \$out, '2>', \$err, IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
$in .= "BEGIN; ALTER DATABASE x RENAME TO x2; ALTER DATABASE x2 ALLOW_CONNECTIONS false; SELECT 'held';\n";
$a->pump until $out =~ /held/;

# Wake the launcher (a committed CREATE DATABASE): it starts a relay for x,
# which waits for the rename's lock on the database
$node->safe_psql('postgres', 'CREATE DATABASE z');
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'object' AND NOT granted
		   AND classid = 'pg_database'::regclass AND objid = $xoid}),
	"a relay for x waits for the database's lock");

# The launcher ends (pg_terminate_backend, or an ERROR): the postmaster
# starts another, which adopts the waiting relay's slot
my $old = launcher_pid();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eventstore launcher' AND pid <> $old}),
	'a new launcher started');
sleep 1;

# The rename commits: the waiting relay gets the lock and ends (FATAL: not
# accepting connections) before attaching to its slot
$in .= "COMMIT; SELECT 'committed';\n";
$a->pump until $out =~ /committed/;
$in .= "\\q\n";
$a->finish;
ok($node->poll_query_until('postgres',
		qq{SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'object' AND NOT granted
		   AND classid = 'pg_database'::regclass AND objid = $xoid}),
	'the waiting relay is gone');

# x2 accepts connections again and gets the extension: a relay must start
$node->safe_psql('postgres', 'ALTER DATABASE x2 ALLOW_CONNECTIONS true');
$node->safe_psql('x2', 'CREATE EXTENSION eventstore');
# For comparison: z gets one
$node->safe_psql('z', 'CREATE EXTENSION eventstore');
my $ok_z = 0;
my $ok_x2 = 0;
# The launcher reads pg_database every 10 s; 40 s is far more than it needs
for (1 .. 400)
{
	$ok_z ||= relays_in('z') == 1;
	$ok_x2 ||= relays_in('x2') == 1;
	last if $ok_z && $ok_x2;
	usleep(100_000);
}
ok($ok_z, 'database z got a relay');
ok($ok_x2, 'database x2 (renamed, had a relay that died unattached) got a relay');
done_testing();
