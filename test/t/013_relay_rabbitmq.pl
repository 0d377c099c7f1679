# The relay's RabbitMQ sink against a real rabbitmq-server (run as postgres
# on loopback, test/tools/brokers.sh), read back by test/tools/amqp_consume:
#  1. 20,000 routed events over 200 streams: each delivered once (by ce_id),
#     each stream in order, CloudEvents AMQP binding headers and properties;
#  2. the broker stopped for several seconds under load, then started:
#     nothing lost, first copies in order, the relay worker did not restart;
#  3. an unroutable message (mandatory, basic.return) is dead-lettered at
#     once with NO_ROUTE while the next message of its key is delivered (or,
#     with rabbitmq_unroutable = retry, retried until a queue is bound); a
#     missing exchange is retried;
#  4. PostgreSQL stopped with -m immediate mid-relay: every committed event
#     arrives after the restart.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $tools = "$ENV{TESTDIR}/test/tools";
my $base = PostgreSQL::Test::Utils::tempdir('rabbitmq');
my $port = start_broker('rabbitmq', "$base/rabbitmq");

# Run amqp_consume; its JSON lines decoded (a timeout is no failure here:
# the caller checks what arrived)
sub amqp_consume
{
	my @args = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ "$tools/amqp_consume", '--port', $port, @args ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	die "amqp_consume @args: $err" if $? >> 8 == 2;
	return [ map { decode_json($_) } split /\n/, $out ];
}

# Everything on a queue: at least $count messages, then what follows within 2 s
sub drain_queue
{
	my ($exchange, $queue, $count) = @_;
	my $msgs = amqp_consume('--exchange', $exchange, '--queue', $queue,
		'--count', $count, '--timeout', 120);
	push @$msgs, @{ amqp_consume('--exchange', $exchange, '--queue', $queue,
			'--timeout', 2) };
	return $msgs;
}

# The exchanges and queues exist before anything is sent
amqp_consume('--exchange', 'rq-events', '--queue', 'rq-all', '--setup-only');
amqp_consume('--exchange', 'rq-void', '--queue', 'rq-void-q', '--bind', 'never.matches',
	'--setup-only');

my $node = relay_node('rabbitmq', '', qq(
eventstore.rabbitmq_url = 'amqp://guest:guest\@127.0.0.1:$port'
eventstore.delivery_timeout = '2s'
eventstore.max_attempts = 1000
eventstore.retry_backoff_max = '500ms'
));
sub sql { return $node->safe_psql('postgres', $_[0]) }

sql(q{SELECT eventstore.add_route('rq', 'rq-events', 'rabbitmq')});

# Append $per events to each of 200 streams (rq-1 .. rq-200), 20 streams a
# transaction; event data {"n": n}, n counting per stream
my $appended = 0;
sub append_round
{
	my ($per) = @_;
	for my $chunk (0 .. 9)
	{
		sql(qq{
			SELECT eventstore.append('rq-' || s, NULL,
				(SELECT jsonb_agg(jsonb_build_object('type', 'Counted',
					'data', jsonb_build_object('n', $appended + i))) FROM generate_series(1, $per) i))
			FROM generate_series($chunk * 20 + 1, $chunk * 20 + 20) s});
	}
	$appended += $per;
	return;
}

# The events as consumers must see them: ce_id => [stream, n]
sub expected_events
{
	my %e;
	for (split /\n/, sql(q{
		SELECT event_id, stream_id, data->>'n' FROM eventstore.events WHERE category = 'rq'}))
	{
		my ($id, $stream, $n) = split /\|/;
		$e{$id} = [ $stream, $n ];
	}
	return \%e;
}

# Every expected event arrived ($once: exactly once), none else; each
# stream's first copies in order
sub check_delivery
{
	my ($label, $msgs, $once) = @_;
	my $expected = expected_events();
	my (%count, %last, $disorder, $foreign, $mismatch);
	for my $m (@$msgs)
	{
		my $id = $m->{message_id} // '';
		my $e = $expected->{$id};
		my $n = decode_json($m->{body})->{n};
		$foreign++, next unless $e;
		$mismatch++ if $e->[0] ne $m->{routing_key} || $e->[1] != $n;
		next if $count{$id}++;
		$disorder++ if defined $last{ $m->{routing_key} } && $n < $last{ $m->{routing_key} };
		$last{ $m->{routing_key} } = $n;
	}
	my @missing = grep { !$count{$_} } keys %$expected;
	is(scalar @missing, 0, "$label: every event arrived");
	ok(!$foreign, "$label: nothing else arrived");
	ok(!$mismatch, "$label: routing key and body are the event's");
	ok(!$disorder, "$label: each stream's events arrived in order (first copies)");
	is(scalar(grep { $_ > 1 } values %count), 0, "$label: each event arrived once")
	  if $once;
	return;
}

my $pid = relay_pid($node);

# 1. 20,000 events over 200 streams
append_round(100);
ok(wait_drained($node), '20,000 events drained');
my $msgs = drain_queue('rq-events', 'rq-all', 20000);
is(scalar @$msgs, 20000, '20,000 messages arrived');
check_delivery('20,000 events', $msgs, 1);

# The CloudEvents AMQP binding, on one message checked against its event
my ($id, $type, $stream, $version, $position) = split /\|/, sql(q{
	SELECT event_id, event_type, stream_id, stream_version, global_position FROM eventstore.events
	WHERE stream_id = 'rq-7' AND stream_version = 3});
my ($m) = grep { ($_->{message_id} // '') eq $id } @$msgs;
is($m->{content_type}, 'application/json', 'content-type is the content_type property');
is($m->{delivery_mode}, 2, 'messages are persistent');
is($m->{headers}{cloudEvents_id}, $id, 'cloudEvents_id is the event id, and message_id');
is($m->{headers}{cloudEvents_type}, $type, 'cloudEvents_type');
is($m->{headers}{cloudEvents_specversion}, '1.0', 'cloudEvents_specversion');
is($m->{headers}{cloudEvents_subject}, $stream, 'cloudEvents_subject is the stream');
is($m->{headers}{cloudEvents_streamversion}, $version, 'cloudEvents_streamversion');
is($m->{headers}{cloudEvents_sequence}, sprintf('%019d', $position),
	'cloudEvents_sequence is the global position');
like($m->{headers}{cloudEvents_source} // '', qr{^/eventstore/}, 'cloudEvents_source');
ok(defined $m->{headers}{cloudEvents_time}, 'cloudEvents_time');
is(scalar(grep { /^ce_/ || $_ eq 'content-type' } keys %{ $m->{headers} }), 0,
	'no Kafka binding header names left');
is(sql(q{SELECT sent_total FROM eventstore.relay_status() WHERE sink = 'rabbitmq'}), '20000',
	'relay_status() counts the deliveries of the rabbitmq sink')
  or diag(sql(q{SELECT * FROM eventstore.relay_status()}));

# 2. The broker stopped under load, then started
append_round(20);
stop_broker('rabbitmq', "$base/rabbitmq");
append_round(20);
ok($node->poll_query_until('postgres', q{
	SELECT state IN ('broker_down', 'backing_off') FROM eventstore.relay_status()
	WHERE sink = 'rabbitmq'}), 'relay_status() shows the broker down');
ok(sql(q{SELECT count(*) FROM eventstore.outbox WHERE sink = 'rabbitmq'}) > 0,
	'the events wait in the outbox while the broker is down');
sleep 3;
start_broker('rabbitmq', "$base/rabbitmq");
ok(wait_drained($node), 'drained after the broker came back');
$msgs = [ @$msgs, @{ drain_queue('rq-events', 'rq-all', 8000) } ];
check_delivery('broker stopped and started', $msgs, 0);
is(relay_pid($node), $pid, 'the relay worker did not restart');
ok($node->poll_query_until('postgres', q{
	SELECT state = 'idle' FROM eventstore.relay_status() WHERE sink = 'rabbitmq'}),
	'the sink is idle again');

# 3. Unroutable: dead-lettered at once, the next message of its key delivered
sql(q{
	SELECT eventstore.publish('rq-void', 'same-key', '{"step": 1}', NULL, 'rabbitmq');
	SELECT eventstore.publish('rq-events', 'same-key', '{"step": 2}', NULL, 'rabbitmq');
	SELECT eventstore.publish('rq-events', 'other-key', '{"step": 3}', NULL, 'rabbitmq');
});
ok(wait_drained($node), 'the unroutable message left the outbox');
is(sql(q{SELECT topic || ' ' || message_key || ' ' || attempts || ' ' || sink || ' ' ||
	(last_error LIKE 'NO_ROUTE%') FROM eventstore.dead_letters}),
	'rq-void same-key 1 rabbitmq true', 'dead-lettered with NO_ROUTE after one attempt');
my $after = amqp_consume('--exchange', 'rq-events', '--queue', 'rq-all', '--count', 2,
	'--timeout', 30);
is(join(',', sort map { "$_->{routing_key}:" . decode_json($_->{body})->{step} } @$after),
	'other-key:3,same-key:2', 'the next message of its key, and another key, were delivered');
sql(q{SELECT eventstore.discard_dead_letters(array_agg(id)) FROM eventstore.dead_letters});

# 3b. A missing exchange (the broker closes the channel): retried, not
# dead-lettered, and delivered once the exchange exists
sql(q{SELECT eventstore.publish('rq-later', 'late-key', '{"step": 4}', NULL, 'rabbitmq')});
ok($node->poll_query_until('postgres', q{
	SELECT attempts > 0 AND last_error LIKE 'NOT_FOUND%' FROM eventstore.outbox
	WHERE topic = 'rq-later'}), 'a missing exchange is a retriable NOT_FOUND');
# The exchange and its binding appear together for the relay: the sink is
# off meanwhile (else a retry between the two would be unroutable)
sql(q{ALTER SYSTEM SET eventstore.rabbitmq_url = ''; SELECT pg_reload_conf()});
$node->poll_query_until('postgres', q{
	SELECT state = 'disabled' FROM eventstore.relay_status() WHERE sink = 'rabbitmq'});
amqp_consume('--exchange', 'rq-later', '--queue', 'rq-later-q', '--setup-only');
sql(q{ALTER SYSTEM RESET eventstore.rabbitmq_url; SELECT pg_reload_conf()});
ok(wait_drained($node), 'delivered once the exchange exists');
is(sql(q{SELECT count(*) FROM eventstore.dead_letters}), '0', 'and not dead-lettered');
$after = amqp_consume('--exchange', 'rq-later', '--queue', 'rq-later-q', '--count', 1,
	'--timeout', 30);
is(scalar @$after, 1, 'the message arrived');

# 3c. With rabbitmq_unroutable = retry, an unroutable message is retried
# (its key waits) and delivered once a queue is bound
sql(q{ALTER SYSTEM SET eventstore.rabbitmq_unroutable = 'retry'; SELECT pg_reload_conf()});
sql(q{
	SELECT eventstore.publish('rq-unbound', 'wait-key', '{"step": 5}', NULL, 'rabbitmq');
	SELECT eventstore.publish('rq-unbound', 'wait-key', '{"step": 6}', NULL, 'rabbitmq');
});
amqp_consume('--exchange', 'rq-unbound', '--queue', 'rq-unbound-q', '--bind', 'never.matches',
	'--setup-only');
ok($node->poll_query_until('postgres', q{
	SELECT attempts > 1 AND last_error LIKE 'NO_ROUTE%' FROM eventstore.outbox
	WHERE topic = 'rq-unbound' ORDER BY id LIMIT 1}),
	'with rabbitmq_unroutable = retry, an unroutable message is retried');
is(sql(q{SELECT count(*) FROM eventstore.dead_letters}), '0', 'and not dead-lettered');
amqp_consume('--exchange', 'rq-unbound', '--queue', 'rq-unbound-q', '--bind', 'wait-key',
	'--setup-only');
ok(wait_drained($node), 'delivered once a queue is bound');
$after = amqp_consume('--exchange', 'rq-unbound', '--queue', 'rq-unbound-q', '--count', 2,
	'--timeout', 30);
is(join(',', map { decode_json($_->{body})->{step} } @$after), '5,6',
	"the key's messages arrived, in order");
sql(q{ALTER SYSTEM RESET eventstore.rabbitmq_unroutable; SELECT pg_reload_conf()});

# 4. PostgreSQL stopped with -m immediate mid-relay
append_round(50);
$node->poll_query_until('postgres', q{
	SELECT count(*) < 10000 FROM eventstore.outbox WHERE sink = 'rabbitmq'});
$node->stop('immediate');
$node->start;
ok(wait_drained($node), 'drained after the crash');
$msgs = [ @$msgs, @{ drain_queue('rq-events', 'rq-all', 10000) } ];
check_delivery('after a crash', $msgs, 0);

$node->stop;
stop_broker('rabbitmq', "$base/rabbitmq");
done_testing();
