# The relay survives errors while recording deliveries: it reports them in
# relay_status(), keeps the worker, never sends a batch twice, and records
# it once the cause is gone.  Database and role settings (read-only by
# default, tiny timeouts) do not stop it.  A database with the extension that
# the relay does not serve says so.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $mock = start_mock();
my $node = relay_node('errors', $mock->{bootstrap});
my $pid = relay_pid($node);

# 1. Recording fails: a trigger refuses the DELETE of acknowledged rows
$node->safe_psql('postgres', q{
	CREATE FUNCTION public.refuse_delete() RETURNS trigger LANGUAGE plpgsql
	AS $$BEGIN RAISE EXCEPTION 'outbox delete refused by the test'; END$$;
	CREATE TRIGGER refuse_delete BEFORE DELETE ON eventstore.outbox
	FOR EACH ROW EXECUTE FUNCTION public.refuse_delete();
	BEGIN;
	SELECT eventstore.publish('rec', 'k' || i, jsonb_build_object('n', i)) FROM generate_series(1, 3) i;
	COMMIT;
});
ok($node->poll_query_until('postgres',
	q{SELECT state = 'error' AND last_error LIKE '%outbox delete refused by the test%'
	  FROM eventstore.relay_status()}),
	'relay_status shows the error state and the message');
# A few seconds of failing retries of the recording (backoff 100 ms to 1 s)
sleep 4;
my %count;
$count{ $_->{payload} }++ for @{ consume($mock->{bootstrap}, 'rec') };
is_deeply(\%count, +{ map { (qq({"n": $_}), 1) } 1 .. 3 },
	'while recording fails, each message was sent exactly once');
my $failures = () = slurp_file($node->logfile) =~ /outbox delete refused by the test/g;
cmp_ok($failures, '>=', 2, 'the recording was retried');
is(relay_pid($node), $pid, 'the worker did not restart');

$node->safe_psql('postgres', 'DROP TRIGGER refuse_delete ON eventstore.outbox');
ok(wait_drained($node), 'trigger dropped: the outbox drains');
ok($node->poll_query_until('postgres', q{SELECT state = 'idle' FROM eventstore.relay_status()}),
	'state back to idle');
%count = ();
$count{ $_->{payload} }++ for @{ consume($mock->{bootstrap}, 'rec') };
is_deeply(\%count, +{ map { (qq({"n": $_}), 1) } 1 .. 3 }, 'and still each message once');

# 1b. The extension dropped and created again while a sent batch waits to be
# recorded: the kept outcome must not delete the new outbox's rows (their
# ids start again at 1)
$node->safe_psql('postgres', q{
	CREATE TRIGGER refuse_delete BEFORE DELETE ON eventstore.outbox
	FOR EACH ROW EXECUTE FUNCTION public.refuse_delete();
	SELECT eventstore.publish('old', 'k' || i, jsonb_build_object('n', i)) FROM generate_series(1, 3) i;
});
ok($node->poll_query_until('postgres', q{SELECT state = 'error' FROM eventstore.relay_status()}),
	'a sent batch waits to be recorded');
$node->safe_psql('postgres', q{
	BEGIN;
	DROP EXTENSION eventstore CASCADE;
	CREATE EXTENSION eventstore;
	SELECT eventstore.publish('new', 'k' || i, jsonb_build_object('n', i)) FROM generate_series(1, 3) i;
	COMMIT;
	SELECT eventstore.publish('new', 'k4', '{"n": 4}');
});
ok(wait_drained($node), 'the new outbox drains');
%count = ();
$count{ $_->{payload} }++ for @{ consume($mock->{bootstrap}, 'new') };
is(join(',', sort keys %count), '{"n": 1},{"n": 2},{"n": 3},{"n": 4}',
	'every message of the new outbox was delivered');
like(slurp_file($node->logfile), qr/the outcome of sent messages is dropped/,
	'the old outcome was dropped, and the log says so');

# 2. Read-only by default and tiny timeouts for the database and the role
$node->safe_psql('postgres', q{
	ALTER DATABASE postgres SET default_transaction_read_only = on;
	ALTER DATABASE postgres SET lock_timeout = '1ms';
	ALTER ROLE CURRENT_USER SET statement_timeout = '1ms';
	ALTER ROLE CURRENT_USER SET idle_in_transaction_session_timeout = '1ms';
});
{
	local $ENV{PGOPTIONS} = '-c default_transaction_read_only=off -c lock_timeout=0'
	  . ' -c statement_timeout=0 -c idle_in_transaction_session_timeout=0';
	$node->safe_psql('postgres', 'SELECT pg_terminate_backend(pid) FROM eventstore.relay_status()');
	ok($node->poll_query_until('postgres',
		qq{SELECT pid IS NOT NULL AND pid <> $pid FROM eventstore.relay_status()}),
		'the relay came back');
	$node->safe_psql('postgres', q{SELECT eventstore.publish('ro', 'k', '{"ro": 1}')});
	ok(wait_drained($node), 'read-only default and tiny timeouts: still delivered');
	is(scalar @{ consume($mock->{bootstrap}, 'ro') }, 1, 'the message is on the topic');
	$node->safe_psql('postgres', q{
		ALTER DATABASE postgres RESET ALL;
		ALTER ROLE CURRENT_USER RESET ALL;
	});
}

# 3. A database with the extension that the relay does not serve
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION eventstore');
is($node->safe_psql('other', 'SELECT state FROM eventstore.relay_status()'), 'not_served',
	'relay_status in another database: not_served');
is($node->safe_psql('postgres', 'SELECT state FROM eventstore.relay_status()'), 'idle',
	'relay_status in the served database: idle');
my ($ret, $out, $err) = $node->psql('other', q{
	SELECT eventstore.publish('t', 'k', '{}');
	SELECT eventstore.publish('t', 'k', '{}');
});
my @warnings = $err =~ /WARNING:  (.*)/g;
is(scalar @warnings, 1, 'publish warns once per session');
like($warnings[0] // '', qr/"other".*not served|not served.*"other"/, 'the warning names the database');
like($err, qr/"postgres"/, 'it names the served database');
like($err, qr/eventstore\.database/, 'and hints at eventstore.database');
($ret, $out, $err) = $node->psql('other', q{
	SELECT eventstore.add_route('other', 'other-topic');
	SELECT eventstore.add_route('more', 'other-topic');
});
@warnings = $err =~ /WARNING:  (.*)/g;
is(scalar @warnings, 1, 'add_route warns once per session too');
($ret, $out, $err) = $node->psql('postgres', q{
	SELECT eventstore.publish('t', 'k', '{}');
	SELECT eventstore.add_route('served', 'served-topic');
});
unlike($err, qr/WARNING/, 'no warning in the served database');

$node->stop;
stop_mock($mock);
done_testing();
