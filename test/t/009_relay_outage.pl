# The relay through a broker outage, a shutdown, bad producer settings and a
# non-UTF-8 database: relay_status() keeps saying broker_down for the whole
# outage; a fast shutdown with messages in flight completes and says how many
# were left unacknowledged; invalid kafka_config values never reach the log;
# keys, headers and values of a WIN1252 database go out as UTF-8, and a
# message that cannot be converted is a dead letter.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $mock = start_mock();
# librdkafka reports "all brokers down" again at each failed reconnect; a
# long reconnect backoff is how a long outage looks
my $node = relay_node('outage', $mock->{bootstrap}, "eventstore.delivery_timeout = '2s'\n"
	  . "eventstore.kafka_config = 'reconnect.backoff.ms=10000;reconnect.backoff.max.ms=10000'\n");

# 1. Brokers down with messages pending: broker_down all along
mock_command($mock, 'down all');
$node->safe_psql('postgres',
	q{SELECT eventstore.publish('down', 'k' || i, jsonb_build_object('n', i)) FROM generate_series(1, 5) i});
ok($node->poll_query_until('postgres', q{SELECT state = 'broker_down' FROM eventstore.relay_status()}),
	'the outage shows as broker_down');
my %states;
for (1 .. 20)
{
	$states{ $node->safe_psql('postgres', 'SELECT state FROM eventstore.relay_status()') }++;
	usleep(250_000);
}
is_deeply(\%states, { broker_down => 20 }, 'broker_down in 20 samples over 5 seconds')
  or diag explain \%states;
mock_command($mock, 'up all');
ok(wait_drained($node), 'brokers up: delivered');
ok($node->poll_query_until('postgres', q{SELECT state <> 'broker_down' FROM eventstore.relay_status()}),
	'the state leaves broker_down');

# 1b. One key, two topics whose leaders differ; one leader is down: the
# key's later message (to the other topic) waits for the earlier one
sub leader_of
{
	my ($topic) = @_;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-L', '-b', $mock->{bootstrap}, '-t', $topic ], '>', \$out, '2>', \$err)
	  or die "kcat -L failed: $err";
	$out =~ /partition 0, leader (\d+)/ or die "no leader for $topic: $out";
	return $1;
}
mock_command($mock, 'create_topic order-a 1');
my ($other, $leader_a, $leader_b) = ('', leader_of('order-a'), '');
for my $i (1 .. 6)
{
	mock_command($mock, "create_topic order-b$i 1");
	($other, $leader_b) = ("order-b$i", leader_of("order-b$i"));
	last if $leader_b ne $leader_a;
}
isnt($leader_b, $leader_a, 'two topics with different leaders');
mock_command($mock, "down $leader_a");
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT eventstore.publish('order-a', 'k', '{"n": "A"}');
	SELECT eventstore.publish('$other', 'k', '{"n": "B"}');
	COMMIT;});
ok($node->poll_query_until('postgres',
		q{SELECT attempts >= 1 FROM eventstore.outbox WHERE topic = 'order-a'}),
	'the first message failed once');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM eventstore.outbox WHERE topic = '$other'}),
	'1', 'the key\'s next message, to another topic, was held back');
mock_command($mock, 'up all');
ok(wait_drained($node), 'both delivered once the leader is back');
is(scalar @{ consume($mock->{bootstrap}, $other) }, 1, 'the held-back message arrived');

# 2. A fast shutdown with the brokers down and messages in flight
mock_command($mock, 'down all');
$node->safe_psql('postgres',
	q{SELECT eventstore.publish('shut', 'k' || i, jsonb_build_object('n', i)) FROM generate_series(1, 5) i});
$node->poll_query_until('postgres',
	q{SELECT state = 'broker_down' AND in_flight > 0 FROM eventstore.relay_status()})
  or die 'no outage with messages in flight';
my $offset = -s $node->logfile;
$node->stop('fast');
pass('fast shutdown with messages in flight completed');
like(substr(slurp_file($node->logfile), $offset),
	qr/eventstore relay: \d+ Kafka messages? (was|were) left unacknowledged at shutdown/,
	'the log says how many messages were left unacknowledged');
mock_command($mock, 'up all');
$node->start;
ok(wait_drained($node), 'after a restart with the brokers up: delivered');
my %got = map { $_->{payload} => 1 } @{ consume($mock->{bootstrap}, 'shut') };
is(scalar keys %got, 5, 'every message of the shutdown arrived');

# 3. Invalid kafka_config values never reach the log
sub relay_log_since
{
	my ($from) = @_;
	# PostgreSQL itself logs the test's statements and a reloaded setting's
	# new value: not ours
	return join "\n", grep { !/parameter "eventstore\.kafka_config" changed to|statement: / }
	  split /\n/, substr(slurp_file($node->logfile), $from);
}
my $conffile = $node->data_dir . '/kafka.properties';
my @cases = (
	[ 'inline', 'security.protocol=SECRETVALUE123', 'SECRETVALUE123', 'security.protocol' ],
	[ '@file', "\@$conffile", 'SECRETVALUE456', 'security.protocol' ],
	# librdkafka's rd_kafka_new error quotes this path
	[ 'path', 'security.protocol=ssl;ssl.keystore.location=/nonexistent/SECRETPATH789/relay.p12;'
		  . 'ssl.keystore.password=SECRETPASS321',
		'SECRETPATH789', 'could not create the Kafka producer' ]);
append_to_file($conffile, "security.protocol = SECRETVALUE456\n");
for my $case (@cases)
{
	my ($label, $config, $secret, $expect) = @$case;
	$offset = -s $node->logfile;
	$node->safe_psql('postgres', qq{
		ALTER SYSTEM SET eventstore.kafka_config = '$config';
		SELECT pg_reload_conf();});
	ok($node->poll_query_until('postgres',
		q{SELECT last_error LIKE 'invalid Kafka settings%' AND state = 'connecting'
		  FROM eventstore.relay_status()}), "$label: the settings are refused");
	$node->safe_psql('postgres', q{
		ALTER SYSTEM RESET eventstore.kafka_config;
		SELECT pg_reload_conf();});
	$node->poll_query_until('postgres',
		q{SELECT state NOT IN ('connecting') FROM eventstore.relay_status()}) or die 'no recovery';
	my $log = relay_log_since($offset);
	like($log, qr/\Q$expect\E/, "$label: the log names $expect");
	unlike($log, qr/\Q$secret\E/, "$label: the log does not contain the value");
}

# 4. A WIN1252 database: key, ce_subject and value arrive as UTF-8
$node->safe_psql('postgres', q{
	CREATE DATABASE latin TEMPLATE template0 ENCODING 'WIN1252' LC_COLLATE 'C' LC_CTYPE 'C'});
$node->safe_psql('latin', 'CREATE EXTENSION eventstore');
$node->append_conf('postgresql.conf', "eventstore.database = 'latin'\n");
$node->restart;
# UTF-8 bytes from here, converted by the server to WIN1252
$node->safe_psql('latin', qq{
	SET client_encoding = 'UTF8';
	SELECT eventstore.add_route('caf\xc3\xa9', 'latin');
	SELECT eventstore.append('caf\xc3\xa9-1', NULL,
		'{"type": "Ordered", "data": {"drink": "caf\xc3\xa9 cr\xc3\xa8me"}}');
});
ok($node->poll_query_until('latin', 'SELECT count(*) = 0 FROM eventstore.outbox'),
	'WIN1252 database: delivered');
my ($out, $err);
IPC::Run::run([ 'kcat', '-C', '-b', $mock->{bootstrap}, '-t', 'latin', '-o', 'beginning',
		'-e', '-q', '-f', '%k\n%h\n%s\n' ], '>', \$out, '2>', \$err)
  or die "kcat failed: $err";
like($out, qr/^caf\xc3\xa9-1\n/, 'the key is UTF-8');
like($out, qr/ce_subject=caf\xc3\xa9-1(,|\n)/, 'ce_subject is UTF-8');
like($out, qr/"drink": "caf\xc3\xa9 cr\xc3\xa8me"/, 'the value is UTF-8');

# A character without a UTF-8 equivalent (0x81 in WIN1252): that message is
# a dead letter, the next one goes out
$node->safe_psql('latin', q{
	SELECT eventstore.publish('latin', 'bad', to_jsonb(convert_from('\x4181'::bytea, 'WIN1252')));
	SELECT eventstore.publish('latin', 'good', '{"ok": 1}');});
ok($node->poll_query_until('latin', 'SELECT count(*) = 0 FROM eventstore.outbox'),
	'the outbox drains past an unconvertible message');
like($node->safe_psql('latin', q{SELECT last_error FROM eventstore.dead_letters WHERE message_key = 'bad'}),
	qr/not convertible to UTF-8/, 'the unconvertible message is a dead letter that says why');
is($node->safe_psql('latin', q{SELECT state FROM eventstore.relay_status()}), 'idle',
	'the relay is not stuck in an error');

$node->stop;
stop_mock($mock);
done_testing();
