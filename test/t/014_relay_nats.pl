# The relay's NATS JetStream sink against a real nats-server (started as the
# test user on loopback by test/tools/brokers.sh), read back with
# test/tools/nats_tool: subjects and CloudEvents NATS headers; a missing
# stream is a retriable error shown in relay_status; 20,000 routed events
# over 200 streams delivered once each, in order per key; the server stopped
# under load and started again; a message over the server's max_payload
# dead-lettered while the next of its key goes on; PostgreSQL stopped with
# -m immediate mid-relay; the URL's secrets never logged.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use MIME::Base64 qw(encode_base64url);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $tmp = PostgreSQL::Test::Utils::tempdir('nats');
my $ndir = "$tmp/server";
my $port = start_broker('nats', $ndir, max_payload => 65536);
my $url = "nats://127.0.0.1:$port";

# Run nats_tool; its output (dies on failure unless $may_fail)
sub tool
{
	my (@args) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$ENV{TESTDIR}/test/tools/nats_tool", '--port', $port, @args ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default + 30))
	  or die "nats_tool @args failed: $err";
	return $out;
}

# A stream for a topic: subjects "topic" and "topic.>", a 10 minute duplicate window
sub stream_for
{
	my ($name, $topic) = @_;
	tool('stream-add', $name, $topic, "$topic.>", '--duplicates', 600);
	return;
}

# Every message of a stream, in stream order
sub stream_msgs
{
	my ($name, $count) = @_;
	my @args = ('consume', $name);
	push @args, '--count', $count, '--timeout', 60 if defined $count;
	return [ map { decode_json($_) } split /\n/, tool(@args) ];
}

# The subject a message of $topic and $key goes to (docs/relay.md)
sub subject_of
{
	my ($topic, $key) = @_;
	return $topic unless defined $key;
	return "$topic.$key" if $key =~ /^[A-Za-z0-9_-]+$/;
	return "$topic.~" . encode_base64url($key);
}

stream_for('ORDERS', 'orders');
my $node = relay_node('nats', '', qq(
eventstore.nats_url = '$url'
eventstore.delivery_timeout = '5s'
eventstore.relay_idle_interval = '1h'
));
my $status = q{SELECT state, last_error FROM eventstore.relay_status() WHERE sink = 'nats'};

# 1. Subjects and headers: plain keys as they are, other keys "~" +
# base64url, no key: the topic alone; ce_X as ce-X, Nats-Msg-Id = ce_id
$node->safe_psql('postgres', q{
	SELECT eventstore.add_route('order', 'orders', 'nats');
	SELECT eventstore.append_event('order-1', NULL, 'Placed', '{"total": 5}',
		'{"correlation_id": "c-1"}', 'a81bc81b-dead-4e5d-abff-90865d1e13b1');
	SELECT eventstore.publish('orders', 'a b.c*>', '{"n": 1}', '{"x-trace": "t1"}', 'nats');
	SELECT eventstore.publish('orders', NULL, '{"n": 2}', NULL, 'nats');
	SELECT eventstore.publish('orders', 'Key_with-dash9', NULL, '{"ce_id": "p-1"}', 'nats');
});
ok(wait_drained($node), 'four messages delivered to NATS');
my $m = stream_msgs('ORDERS');
is_deeply([ map { $_->{subject} } @$m ],
	[ 'orders.order-1', subject_of('orders', 'a b.c*>'), 'orders', 'orders.Key_with-dash9' ],
	'subjects: plain key, encoded key, no key, plain key');
is($m->[1]{subject}, 'orders.~YSBiLmMqPg', 'the encoded key is "~" + base64url without padding');
my $h = $m->[0]{headers};
is_deeply(
	{ map { $_ => $h->{$_} } qw(ce-specversion ce-id ce-type ce-subject content-type ce-streamversion ce-correlationid Nats-Msg-Id) },
	{
		'ce-specversion' => '1.0',
		'ce-id' => 'a81bc81b-dead-4e5d-abff-90865d1e13b1',
		'ce-type' => 'Placed',
		'ce-subject' => 'order-1',
		'content-type' => 'application/json',
		'ce-streamversion' => '1',
		'ce-correlationid' => 'c-1',
		'Nats-Msg-Id' => 'a81bc81b-dead-4e5d-abff-90865d1e13b1',
	},
	'a routed event: CloudEvents NATS binding headers, Nats-Msg-Id = ce_id');
ok(!grep(/^ce_/, keys %$h), 'no header keeps the Kafka binding\'s ce_ prefix');
is($m->[0]{data}, '{"total": 5}', 'the body is the event data');
is($m->[1]{headers}{'x-trace'}, 't1', 'published headers pass through');
ok(!exists $m->[1]{headers}{'Nats-Msg-Id'}, 'no ce_id: no Nats-Msg-Id');
is($m->[3]{headers}{'Nats-Msg-Id'}, 'p-1', 'a published ce_id is the Nats-Msg-Id');
is($m->[3]{data}, '', 'a NULL payload is an empty body');

# 2. No stream for a topic: a retriable error in relay_status, delivered
# once the stream exists
$node->safe_psql('postgres', q{SELECT eventstore.publish('later', 'k', '{"n": 1}', NULL, 'nats')});
ok($node->poll_query_until('postgres',
		q{SELECT last_error LIKE 'NATS_NO_STREAM%' FROM eventstore.relay_status() WHERE sink = 'nats'}),
	'a missing stream shows in relay_status');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eventstore.dead_letters}), '0',
	'and is no dead letter');
stream_for('LATER', 'later');
ok(wait_drained($node), 'delivered once the stream exists');
is(scalar @{ stream_msgs('LATER') }, 1, 'one message in the new stream');

# 3. 20,000 routed events over 200 streams: every event once, in order per key
stream_for('ACCOUNTS', 'accounts');
$node->safe_psql('postgres', q{SELECT eventstore.add_route('acct', 'accounts', 'nats')});
my $pid = relay_pid($node);
for my $round (0 .. 9)
{
	my ($from, $to) = ($round * 10 + 1, $round * 10 + 10);
	$node->safe_psql('postgres', qq{
		SELECT count(eventstore.append_event('acct-' || s, NULL, 'Deposited',
			jsonb_build_object('s', s, 'v', v)))
		FROM generate_series($from, $to) v, generate_series(1, 200) s});
}
ok(wait_drained($node), '20,000 events drained');

# Check a stream's messages: each expected event exactly once, per subject
# in stream version order, headers right
sub check_accounts
{
	my ($what, $topic, $category, $msgs, $nstreams, $nversions) = @_;
	my (%ids, %order, $bad_headers);
	for my $msg (@$msgs)
	{
		my $hd = $msg->{headers};
		$ids{ $hd->{'ce-id'} }++;
		my $data = decode_json($msg->{data});
		$bad_headers++
		  unless $hd->{'ce-type'} eq 'Deposited'
		  && $hd->{'ce-specversion'} eq '1.0'
		  && $hd->{'ce-subject'} eq "$category-$data->{s}"
		  && $msg->{subject} eq "$topic.$category-$data->{s}"
		  && $hd->{'ce-streamversion'} eq $data->{v}
		  && $hd->{'content-type'} eq 'application/json'
		  && $hd->{'Nats-Msg-Id'} eq $hd->{'ce-id'};
		push @{ $order{ $msg->{subject} } }, $data->{v};
	}
	is(scalar keys %ids, $nstreams * $nversions, "$what: every event arrived");
	is(scalar(grep { $ids{$_} > 1 } keys %ids), 0, "$what: none twice");
	ok(!$bad_headers, "$what: headers and subjects right") or diag "$bad_headers bad";
	my $in_order = 0;
	for my $subject (keys %order)
	{
		my (%seen, @first);
		for (@{ $order{$subject} }) { push @first, $_ unless $seen{$_}++ }
		$in_order++ if join(',', @first) eq join(',', 1 .. $nversions);
	}
	is($in_order, $nstreams, "$what: first copies in stream version order for every key");
	return;
}
check_accounts('20,000 events', 'accounts', 'acct', stream_msgs('ACCOUNTS', 20000), 200, 100);
is(decode_json(tool('stream-info', 'ACCOUNTS'))->{messages}, 20000,
	'the stream holds exactly 20,000 messages');

# 4. The server stopped under load, then started: nothing lost, order kept,
# the relay did not crash
stream_for('OUTAGE', 'outage');
$node->safe_psql('postgres', q{SELECT eventstore.add_route('out', 'outage', 'nats')});
my $bg = $node->background_psql('postgres');
$bg->query_safe(q{
	SELECT count(eventstore.append_event('out-' || s, NULL, 'Deposited',
		jsonb_build_object('s', s, 'v', v)))
	FROM generate_series(1, 20) v, generate_series(1, 100) s});
stop_broker('nats', $ndir);
for my $v (21 .. 40)
{
	$bg->query_safe(qq{
		SELECT count(eventstore.append_event('out-' || s, NULL, 'Deposited',
			jsonb_build_object('s', s, 'v', $v)))
		FROM generate_series(1, 100) s});
}
ok($node->poll_query_until('postgres',
		q{SELECT state = 'broker_down' FROM eventstore.relay_status() WHERE sink = 'nats'}),
	'the stopped server shows as broker_down');
sleep 3;
start_broker('nats', $ndir, max_payload => 65536);
for my $v (41 .. 50)
{
	$bg->query_safe(qq{
		SELECT count(eventstore.append_event('out-' || s, NULL, 'Deposited',
			jsonb_build_object('s', s, 'v', $v)))
		FROM generate_series(1, 100) s});
}
$bg->quit;
ok(wait_drained($node), 'the server is back: drained');
check_accounts('server stopped under load', 'outage', 'out', stream_msgs('OUTAGE', 5000), 100, 50);
is(relay_pid($node), $pid, 'the relay did not restart');
is($node->safe_psql('postgres', q{SELECT count(*) FROM eventstore.dead_letters}), '0',
	'no dead letters');

# 5. A message over the server's max_payload: dead-lettered, the next of its
# key delivered
stream_for('BIG', 'big');
$node->safe_psql('postgres', q{
	SELECT eventstore.publish('big', 'k', jsonb_build_object('pad', repeat('x', 70000)), NULL, 'nats');
	SELECT eventstore.publish('big', 'k', '{"n": 2}', NULL, 'nats');});
ok(wait_drained($node), 'both settled');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM eventstore.dead_letters WHERE topic = 'big' AND last_error LIKE 'NATS_MAX_PAYLOAD%'}),
	'1', 'the large message is a dead letter with NATS_MAX_PAYLOAD');
$m = stream_msgs('BIG');
is_deeply([ map { $_->{data} } @$m ], ['{"n": 2}'], 'the next message of its key was delivered');

# 6. PostgreSQL stopped with -m immediate mid-relay: every committed event
# delivered after the restart, no duplicate in the stream
stream_for('CRASH', 'crash');
$node->safe_psql('postgres', q{SELECT eventstore.add_route('crash', 'crash', 'nats')});
# One transaction of 10,000 events, and the stop right after its commit,
# while the relay sends them
$node->safe_psql('postgres', q{
	SELECT count(eventstore.append_event('crash-' || s, NULL, 'Deposited',
		jsonb_build_object('s', s, 'v', v)))
	FROM generate_series(1, 100) v, generate_series(1, 100) s});
$node->stop('immediate');
$node->start;
note 'outbox rows left after the crash: '
  . $node->safe_psql('postgres', 'SELECT count(*) FROM eventstore.outbox');
ok(wait_drained($node), 'after the crash: drained');
my $crash = stream_msgs('CRASH', 10000);
check_accounts('crash', 'crash', 'crash', $crash, 100, 100);
is(decode_json(tool('stream-info', 'CRASH'))->{messages}, 10000, 'crash: the stream holds exactly 10,000 messages');

# 7. Secrets: a URL from a file, with a password or a token, never logged
my $log_from = -s $node->logfile;
for my $secret ('nats://relayuser:s3cretPw@127.0.0.1:1', 'nats://t0kenSecret@127.0.0.1:1')
{
	my $file = "$tmp/url";
	open my $fh, '>', $file or die;
	print $fh "$secret\n";
	close $fh;
	$node->safe_psql('postgres', qq{ALTER SYSTEM SET eventstore.nats_url = '\@$file'; SELECT pg_reload_conf()});
	ok($node->poll_query_until('postgres',
			q{SELECT state = 'broker_down' FROM eventstore.relay_status() WHERE sink = 'nats'}),
		'an unreachable server: broker_down');
	$node->safe_psql('postgres', q{ALTER SYSTEM RESET eventstore.nats_url; SELECT pg_reload_conf()});
	ok($node->poll_query_until('postgres',
			q{SELECT state <> 'broker_down' FROM eventstore.relay_status() WHERE sink = 'nats'}),
		'back to the real server');
}
my $log = slurp_file($node->logfile, $log_from);
like($log, qr/could not connect to NATS at nats:\/\/\*\*\*\@127\.0\.0\.1:1/,
	'the connection error names the URL with its user part scrubbed');
unlike($log, qr/s3cretPw|t0kenSecret|relayuser/, 'no secret, nor the user name, in the log');

$node->stop;
done_testing();
