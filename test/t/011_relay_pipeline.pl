# The relay's promises under faults, as docs/relay.md states them for the
# pipelined relay: at-least-once across broker outages, injected retriable
# Produce errors and the postmaster stopped with -m immediate while messages
# are in flight, each key's FIRST copies in outbox order; a permanent failure
# in the middle of a key's in-flight messages parks the key (park) or skips
# the message (skip), and the LAST copies of each key arrive in outbox order.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();
# Short timeouts and backoffs so that five outages take seconds; enough
# attempts that no outage makes a dead letter
my $node = relay_node('pipeline', $mock->{bootstrap}, qq(
eventstore.delivery_timeout = '2s'
eventstore.max_attempts = 1000
eventstore.retry_backoff_max = '500ms'
eventstore.kafka_config = 'reconnect.backoff.ms=50;reconnect.backoff.max.ms=500'
));

# Run SQL on database postgres
sub sql { return $node->safe_psql('postgres', $_[0]) }

# Whether relay_status() has the in_flight column (the pipelined relay)
my $has_in_flight = sql(q{
	SELECT count(*) FROM pg_proc p, unnest(p.proargnames) a
	WHERE p.oid = 'eventstore.relay_status'::regproc AND a = 'in_flight'});

# Publish messages $from..$to to $topic in one transaction, n's key
# 'k' || n % $keys, payload {"n": n}: each key's messages in n order
sub publish_range
{
	my ($topic, $from, $to, $keys) = @_;
	sql(qq{SELECT count(eventstore.publish('$topic', 'k' || i % $keys,
		jsonb_build_object('n', i))) FROM generate_series($from, $to) i});
	return;
}

# The message's n (from its payload)
sub n_of { return decode_json($_[0]{payload})->{n} }

# Check that every n in 1..$total arrived at least once on $topic and that
# each key's first copies are in n (outbox) order; reports duplicates
sub check_delivered
{
	my ($label, $topic, $total, $keys) = @_;
	my $msgs = consume($mock->{bootstrap}, $topic);
	my %copies;
	$copies{ n_of($_) }++ for @$msgs;
	my @missing = grep { !$copies{$_} } 1 .. $total;
	is(scalar @missing, 0, "$label: every committed message arrived")
	  or diag 'missing ' . scalar(@missing) . ', first: ' . join(',', @missing[ 0 .. ($#missing < 9 ? $#missing : 9) ]);
	my $dups = grep { $_ > 1 } values %copies;
	diag sprintf('%s: %d copies of %d messages, %d messages arrived more than once',
		$label, scalar @$msgs, $total, $dups);
	my $order = first_seen_order($msgs, \&n_of);
	my @wrong;
	for my $k (0 .. $keys - 1)
	{
		my @expected = grep { $_ % $keys == $k } 1 .. $total;
		push @wrong, "k$k" if join(',', @{ $order->{"k$k"} // [] }) ne join(',', @expected);
	}
	is(scalar @wrong, 0, "$label: each key's first copies in outbox order")
	  or diag "first wrong key $wrong[0]: " . join(',', @{ $order->{ $wrong[0] } // [] });
	return;
}

# 1. 50,000 messages (500 keys x 100) in five transactions, five broker
# outages during the drain, retriable Produce errors injected before each
my ($keys, $per_txn, $cycles) = (500, 10_000, 5);
my $pid = relay_pid($node);
isnt($pid, '', 'the relay runs');
publish_range('pipe', 1, $per_txn, $keys);
my $committed = $per_txn;
my $outages_with_backlog = 0;
for my $c (1 .. $cycles)
{
	# sending: something of the backlog was acknowledged
	my $before = sql('SELECT count(*) FROM eventstore.outbox');
	$node->poll_query_until('postgres', "SELECT count(*) < $before FROM eventstore.outbox")
	  or die "cycle $c: the relay made no progress";
	mock_command($mock, 'produce_error 5 NOT_ENOUGH_REPLICAS');
	mock_command($mock, 'down all');
	$outages_with_backlog++ if sql('SELECT count(*) > 0 FROM eventstore.outbox') eq 't';
	if ($c < $cycles)
	{
		publish_range('pipe', $committed + 1, $committed + $per_txn, $keys);
		$committed += $per_txn;
	}
	$node->poll_query_until('postgres',
		q{SELECT state = 'broker_down' FROM eventstore.relay_status()})
	  or die "cycle $c: the outage was not seen";
	mock_command($mock, 'produce_error 3 REQUEST_TIMED_OUT');
	mock_command($mock, 'up all');
}
diag "$outages_with_backlog of $cycles outages began with messages in the outbox";
ok(wait_drained($node), 'five outages: the outbox drained');
check_delivered('five outages', 'pipe', $committed, $keys);
is(relay_pid($node), $pid, 'five outages: the relay worker never restarted');
is(sql('SELECT count(*) FROM eventstore.dead_letters'), '0', 'five outages: no dead letters');
ok($node->poll_query_until('postgres',
		q{SELECT state = 'idle' FROM eventstore.relay_status()}),
	'five outages: the relay is idle afterwards');
is(sql(qq{SELECT pid = $pid AND pending = 0 AND sent_total >= $committed
		AND dead_letters_total = 0 AND last_delivery_at IS NOT NULL
		AND latency_p50_ms >= 0 AND latency_p99_ms >= latency_p50_ms
		FROM eventstore.relay_status()}), 't',
	'five outages: relay_status() counts add up')
  or diag sql('SELECT * FROM eventstore.relay_status()');
is(sql('SELECT in_flight FROM eventstore.relay_status()'), '0',
	'five outages: nothing in flight once drained') if $has_in_flight;

# 2. -m immediate with messages in flight: (a) brokers down, so what was
# handed to the producer stays unacknowledged; (b) brokers up, in the middle
# of the drain, so acknowledged messages may not be recorded yet
my $crash_total = 0;
mock_command($mock, 'down all');
publish_range('crash', 1, 20_000, 200);
$crash_total = 20_000;
if ($has_in_flight)
{
	ok($node->poll_query_until('postgres',
			q{SELECT in_flight > 0 FROM eventstore.relay_status()}),
		'immediate stop, brokers down: messages in flight');
	diag 'in flight: ' . sql('SELECT in_flight FROM eventstore.relay_status()');
}
else
{
	# the stop-and-wait relay: a batch is out once the outage shows
	$node->poll_query_until('postgres',
		q{SELECT state = 'broker_down' FROM eventstore.relay_status()})
	  or die 'the outage was not seen';
	note 'relay_status() has no in_flight column: waited for broker_down instead';
}
$node->stop('immediate');
mock_command($mock, 'up all');
$node->start;
ok(wait_drained($node), 'immediate stop, brokers down: drained after the restart');

publish_range('crash', 20_001, 40_000, 200);
$crash_total = 40_000;
$node->poll_query_until('postgres', 'SELECT count(*) < 20000 FROM eventstore.outbox')
  or die 'the relay made no progress';
diag 'immediate stop while draining, outbox: ' . sql('SELECT count(*) FROM eventstore.outbox');
$node->stop('immediate');
$node->start;
ok(wait_drained($node), 'immediate stop while draining: drained after the restart');
check_delivered('immediate stops', 'crash', $crash_total, 200);

# 3. A permanent failure in the middle of a key's in-flight messages.  Each
# Produce request carries one message (batch.num.messages=1), so the
# injected error fails exactly the one message the next request carries,
# with up to five later requests in flight behind it.  Which message that is
# is up to the producer: the expectations come from eventstore.dead_letters.
$node->stop;
my $pnode = relay_node('park', $mock->{bootstrap}, qq(
eventstore.delivery_timeout = '2s'
eventstore.on_dead_letter = 'park'
eventstore.kafka_config = 'batch.num.messages=1'
));

# Run SQL on the park node
sub psql { return $pnode->safe_psql('postgres', $_[0]) }

# Publish messages $from..$to of keys $prefix-1..$prefix-$nkeys to $topic,
# one transaction, in message order; payload {"n": n}
sub publish_keys
{
	my ($topic, $prefix, $nkeys, $from, $to) = @_;
	psql(qq{SELECT count(eventstore.publish('$topic', '$prefix-' || k,
		jsonb_build_object('n', n))) FROM (SELECT n, k FROM generate_series($from, $to) n,
		generate_series(1, $nkeys) k ORDER BY n, k) m});
	return;
}

# The dead letters of $topic as { key => [n, ...] } in outbox order
sub dead_of
{
	my ($topic) = @_;
	my %dead;
	for (split /\n/, psql(qq{SELECT message_key, payload->>'n' FROM eventstore.dead_letters
		WHERE topic = '$topic' ORDER BY outbox_id}))
	{
		my ($k, $n) = split /\|/;
		push @{ $dead{$k} }, $n;
	}
	return \%dead;
}

# Publish 3 messages per key and drain, then inject one permanent error and
# publish 7 more per key; returns once a dead letter of $topic is recorded
sub permanent_failure
{
	my ($topic, $prefix, $nkeys) = @_;
	publish_keys($topic, $prefix, $nkeys, 1, 3);
	wait_drained($pnode) or die "$topic: warm-up not drained";
	mock_command($mock, 'produce_error 1 MSG_SIZE_TOO_LARGE');
	publish_keys($topic, $prefix, $nkeys, 4, 10);
	$pnode->poll_query_until('postgres',
		qq{SELECT count(*) > 0 FROM eventstore.dead_letters WHERE topic = '$topic'})
	  or die "$topic: no dead letter";
	return;
}

# 3a. park.  The stop-and-wait relay (no in_flight column) deletes a parked
# key's early copies from the outbox, so its last copies are out of order:
# those checks are TODO there, real for the pipelined relay.
our $TODO;
my $old_relay_todo = $has_in_flight ? undef
  : 'stop-and-wait relay: early copies of a parked key are deleted from the outbox';
my $nkeys = 20;
permanent_failure('park', 'p', $nkeys);
# the other keys drain; the parked keys' later messages stay
ok($pnode->poll_query_until('postgres', q{
		SELECT count(*) = 0 FROM eventstore.outbox o
		WHERE NOT EXISTS (SELECT FROM eventstore.dead_letters d
			WHERE d.message_key = o.message_key)}),
	'park: the other keys are delivered');
my $dead = dead_of('park');
my @parked = sort keys %$dead;
diag 'park: dead letters ' . join(' ', map { "$_:" . join(',', @{ $dead->{$_} }) } @parked);
# a new message for every key: the parked keys' stay, the others' go out
publish_keys('park', 'p', $nkeys, 11, 11);
ok($pnode->poll_query_until('postgres', q{
		SELECT count(*) = 0 FROM eventstore.outbox o
		WHERE NOT EXISTS (SELECT FROM eventstore.dead_letters d
			WHERE d.message_key = o.message_key)}),
	'park: the other keys\' next messages are delivered too');
my (%held, %expect_held);
for (split /\n/, psql(q{SELECT message_key, payload->>'n' FROM eventstore.outbox ORDER BY id}))
{
	my ($k, $n) = split /\|/;
	push @{ $held{$k} }, $n;
}
for my $k (@parked)
{
	my %is_dead = map { $_ => 1 } @{ $dead->{$k} };
	$expect_held{$k} = [ grep { $_ > $dead->{$k}[0] && !$is_dead{$_} } 1 .. 11 ];
}
my $nheld = 0;
$nheld += @{ $expect_held{$_} } for @parked;
TODO:
{
	local $TODO = $old_relay_todo;
	is_deeply(\%held, \%expect_held,
		'park: every later message of a parked key is still in the outbox, none deleted')
	  or diag explain { held => \%held, expected => \%expect_held };
	is(psql(q{SELECT coalesce(sum(pending), 0) FROM eventstore.outbox_lag WHERE topic = 'park'}),
		$nheld, 'park: outbox_lag shows the held messages');
}
my $msgs = consume($mock->{bootstrap}, 'park');
my %is_parked = map { $_ => 1 } @parked;
my $order = first_seen_order($msgs, \&n_of);
my @wrong = grep { join(',', @{ $order->{"p-$_"} // [] }) ne join(',', 1 .. 11) }
  grep { !$is_parked{"p-$_"} } 1 .. $nkeys;
is(scalar @wrong, 0, 'park: every message of the other keys arrived, first copies in order')
  or diag "first wrong key p-$wrong[0]: " . join(',', @{ $order->{"p-$wrong[0]"} // [] });
my @sent_after = grep { $is_parked{ $_->{key} } && n_of($_) == 11 } @$msgs;
is(scalar @sent_after, 0, 'park: a message published after its key was parked did not go out');
my $early = grep { $is_parked{ $_->{key} } && n_of($_) > $dead->{ $_->{key} }[0] } @$msgs;
diag "park: $early early copies of parked keys' later messages";

my $ndead = 0;
$ndead += @{ $dead->{$_} } for @parked;
is(psql('SELECT eventstore.requeue_dead_letters()'), $ndead, 'park: requeued');
ok(wait_drained($pnode), 'park: drained after the requeue');
$msgs = consume($mock->{bootstrap}, 'park');
my %copies;
$copies{ $_->{key} }{ n_of($_) }++ for @$msgs;
my @lost = grep { my $k = $_; grep { !$copies{$k}{$_} } 1 .. 11 } map { "p-$_" } 1 .. $nkeys;
is(scalar @lost, 0, 'park: after the requeue every message of every key arrived');
my $last = last_seen_order($msgs, \&n_of);
@wrong = grep { join(',', @{ $last->{$_} // [] }) ne join(',', 1 .. 11) } @parked;
TODO:
{
	local $TODO = $old_relay_todo;
	is(scalar @wrong, 0, 'park: the last copies of a parked key are in outbox order')
	  or diag "$wrong[0]: " . join(',', @{ $last->{ $wrong[0] } // [] });
}
is(psql('SELECT count(*) FROM eventstore.dead_letters'), '0', 'park: no dead letters left');

# 3b. skip: the dead letter is left out, the later messages go on, their last
# copies in outbox order
# (the contract's name is skip; the relay before it calls the mode continue)
my $skip = psql(q{SELECT CASE WHEN 'skip' = ANY (enumvals) THEN 'skip' ELSE 'continue' END
	FROM pg_settings WHERE name = 'eventstore.on_dead_letter'});
psql(qq{ALTER SYSTEM SET eventstore.on_dead_letter = '$skip'; SELECT pg_reload_conf()});
$pnode->poll_query_until('postgres', qq{SELECT current_setting('eventstore.on_dead_letter') = '$skip'})
  or die "on_dead_letter is not $skip";
permanent_failure('skip', 's', $nkeys);
ok(wait_drained($pnode), 'skip: the outbox drained past the dead letter');
$dead = dead_of('skip');
diag 'skip: dead letters ' . join(' ', map { "$_:" . join(',', @{ $dead->{$_} }) } sort keys %$dead);
$msgs = consume($mock->{bootstrap}, 'skip');
%copies = ();
$copies{ $_->{key} }{ n_of($_) }++ for @$msgs;
$last = last_seen_order($msgs, \&n_of);
my (@bad_last, @bad_copies);
for my $k (map { "s-$_" } 1 .. $nkeys)
{
	my %is_dead = map { $_ => 1 } @{ $dead->{$k} // [] };
	my @expected = grep { !$is_dead{$_} } 1 .. 10;
	push @bad_last, $k if join(',', @{ $last->{$k} // [] }) ne join(',', @expected);
	push @bad_copies, $k if grep { $copies{$k}{$_} } keys %is_dead;
}
is(scalar @bad_last, 0, 'skip: every other message arrived, the last copies of each key in outbox order')
  or diag "$bad_last[0]: " . join(',', @{ $last->{ $bad_last[0] } // [] });
is(scalar @bad_copies, 0, 'skip: the dead letter never reached the topic');
is(psql(q{SELECT count(*) FROM eventstore.outbox}), '0', 'skip: nothing held back');

$pnode->stop;
stop_mock($mock);
done_testing();
