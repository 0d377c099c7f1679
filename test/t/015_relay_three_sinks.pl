# Kafka (the mock cluster), RabbitMQ and NATS JetStream (real servers) served
# at once by one relay, each from categories routed to it: each broker gets
# its own events and only those, in per-key order; while RabbitMQ is stopped,
# Kafka and NATS go on delivering (one broker's outage holds back no other
# sink), and once it is back nothing of its events is lost.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $tools = "$ENV{TESTDIR}/test/tools";
my $base = PostgreSQL::Test::Utils::tempdir('brokers');
my $mock = start_mock();
my $amqp_port = start_broker('rabbitmq', "$base/rabbitmq");
my $nats_port = start_broker('nats', "$base/nats");

# Run a test tool; returns its output lines, dies if it fails
sub tool
{
	my @cmd = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default))
	  or die "@cmd: $err";
	return split /\n/, $out;
}

# The exchange, its queue and the stream exist before anything is sent
tool("$tools/amqp_consume", '--port', $amqp_port, '--exchange', 'three-r',
	'--queue', 'three-r-q', '--setup-only');
tool("$tools/nats_tool", '--port', $nats_port, 'stream-add', 'THREE', 'three-n.>');

my $node = relay_node('three', $mock->{bootstrap}, qq(
eventstore.rabbitmq_url = 'amqp://guest:guest\@127.0.0.1:$amqp_port'
eventstore.relay_idle_interval = '1h'
eventstore.nats_url = 'nats://127.0.0.1:$nats_port'
eventstore.delivery_timeout = '2s'
eventstore.max_attempts = 1000
eventstore.retry_backoff_max = '500ms'
));
sub sql { return $node->safe_psql('postgres', $_[0]) }

sql(q{
	SELECT eventstore.add_route('tk', 'three-k');
	SELECT eventstore.add_route('tr', 'three-r', 'rabbitmq');
	SELECT eventstore.add_route('tn', 'three-n', 'nats');
});

# Append $per events to each of 20 streams of each category, interleaved
# across categories in each transaction; event n's data is {"n": n}
my $appended = 0;
sub append_round
{
	my ($per) = @_;
	for my $i (1 .. $per)
	{
		my $n = $appended + $i;
		sql(join '', map {
			my $cat = $_;
			map { qq{SELECT eventstore.append_event('$cat-$_', NULL, 'E', '{"n": $n}');} } 1 .. 20
		} qw(tk tr tn));
	}
	$appended += $per;
	return;
}

# What each sink received: [key, n, ce_id] in arrival order
sub received_kafka
{
	return [ map { [ $_->{key}, decode_json($_->{payload})->{n}, $_->{headers}{ce_id} ] }
		  @{ consume($mock->{bootstrap}, 'three-k') } ];
}
my @rabbit_seen;    # a queue hands each message once: keep what was read
sub received_rabbitmq
{
	my ($count) = @_;
	my @lines = eval {
		tool("$tools/amqp_consume", '--port', $amqp_port, '--exchange', 'three-r',
			'--queue', 'three-r-q', '--count', $count - scalar(@rabbit_seen), '--timeout', 60);
	};
	push @rabbit_seen, map {
		my $m = decode_json($_);
		[ $m->{routing_key}, decode_json($m->{body})->{n}, $m->{message_id} ]
	} @lines;
	return \@rabbit_seen;
}
sub received_nats
{
	my ($count) = @_;
	my @lines = tool("$tools/nats_tool", '--port', $nats_port, 'consume', 'THREE',
		'--count', $count, '--timeout', 60);
	return [ map {
		my $m = decode_json($_);
		(my $key = $m->{subject}) =~ s/^three-n\.//;
		[ $key, decode_json($m->{data})->{n}, $m->{headers}{'ce-id'} ]
	} @lines ];
}

# Every event of $cat arrived (by ce_id: exactly the events appended), each
# stream's first copies in version order, and nothing of another category
sub check_sink
{
	my ($label, $cat, $msgs) = @_;
	my %expected = map { split /\|/ } split /\n/, sql(qq{
		SELECT event_id, stream_id FROM eventstore.events WHERE category = '$cat'});
	my %got;
	$got{ $_->[2] }++ for @$msgs;
	my @missing = grep { !$got{$_} } keys %expected;
	my @foreign = grep { !exists $expected{$_} } keys %got;
	is(scalar @missing, 0, "$label: every event of category $cat arrived");
	is(scalar @foreign, 0, "$label: nothing of another category arrived");
	# First copies: a repeat (at-least-once) may follow a later event
	my (%last, %seen, $disorder);
	for my $m (@$msgs)
	{
		next if $seen{ $m->[2] }++;
		$disorder++ if defined $last{ $m->[0] } && $m->[1] < $last{ $m->[0] };
		$last{ $m->[0] } = $m->[1];
	}
	ok(!$disorder, "$label: each stream's events arrived in order (first copies)");
	return;
}

my $pid = relay_pid($node);

# 1. All three at once
append_round(10);
wait_drained($node);
is(sql(q{SELECT string_agg(sink || ':' || state, ',' ORDER BY sink) FROM eventstore.relay_status()}),
	'kafka:idle,nats:idle,rabbitmq:idle', 'relay_status() has a row per configured sink');
is(sql(q{SELECT string_agg(sink || ':' || sent_total, ',' ORDER BY sink) FROM eventstore.relay_status()}),
	'kafka:200,nats:200,rabbitmq:200', 'each sink counts its own deliveries');
check_sink('all at once, kafka', 'tk', received_kafka());
check_sink('all at once, rabbitmq', 'tr', received_rabbitmq(200));
check_sink('all at once, nats', 'tn', received_nats(200));

# 2. RabbitMQ down: Kafka and NATS deliver what is appended meanwhile
stop_broker('rabbitmq', "$base/rabbitmq");
append_round(10);
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM eventstore.outbox WHERE sink IN ('kafka', 'nats')}),
	'with RabbitMQ down, Kafka and NATS deliver their events');
is(sql(q{SELECT count(*) FROM eventstore.outbox WHERE sink = 'rabbitmq'}), '200',
	"RabbitMQ's events wait in the outbox");
ok($node->poll_query_until('postgres', q{
	SELECT state IN ('broker_down', 'backing_off') FROM eventstore.relay_status() WHERE sink = 'rabbitmq'}),
	'relay_status() shows the RabbitMQ sink waiting for its broker');
is(sql(q{SELECT string_agg(state, ',' ORDER BY sink) FROM eventstore.relay_status() WHERE sink <> 'rabbitmq'}),
	'idle,idle', 'the other sinks are idle, not held back');

# 3. RabbitMQ back: its events arrive, nothing lost
start_broker('rabbitmq', "$base/rabbitmq");
wait_drained($node);
check_sink('after the outage, kafka', 'tk', received_kafka());
check_sink('after the outage, rabbitmq', 'tr', received_rabbitmq(400));
check_sink('after the outage, nats', 'tn', received_nats(400));
is(relay_pid($node), $pid, 'the relay worker did not restart');

$node->stop;
stop_mock($mock);
done_testing();
