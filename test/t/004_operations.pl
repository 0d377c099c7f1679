# Running the relay: relay_status() and outbox_lag through an outage, dead
# letters in park and continue mode, requeue keeping order, replay, a wrong
# broker list fixed by a reload, and kafka_config kept out of sight.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();

# 1. A wrong broker list, fixed by a reload without a restart.  Secrets in
# kafka_config's file never reach the log, nor does the value of a bad
# property.
my $secrets = PostgreSQL::Test::Utils::tempdir() . '/kafka.properties';
PostgreSQL::Test::Utils::append_to_file($secrets,
	"sasl.username = relay\nsasl.password = sekrit-one\nbogus.property = sekrit-two\n");
my $node = relay_node('ops', '127.0.0.1:1', qq{
eventstore.delivery_timeout = '1s'
eventstore.kafka_config = '\@$secrets'
});
sub sql { $node->safe_psql('postgres', $_[0]) }

sql(q{SELECT eventstore.publish('ops', 'k0', '{"n": 0}')});
$node->poll_query_until('postgres',
	q{SELECT state = 'connecting' AND last_error IS NOT NULL FROM eventstore.relay_status()})
  or die 'relay did not report the bad settings';
ok($node->log_contains(qr/invalid Kafka property "bogus.property"/), 'bad property named in the log');

open(my $fh, '>', $secrets) or die;
print $fh "sasl.username = relay\nsasl.password = sekrit-one\n";
close $fh;
$node->reload;    # the file changed, not the setting: the relay retries it
$node->poll_query_until('postgres',
	q{SELECT state <> 'connecting' AND pending = 1 FROM eventstore.relay_status()})
  or die 'relay did not try the unreachable broker';
my $pid = relay_pid($node);
$node->append_conf('postgresql.conf', qq{
eventstore.kafka_brokers = '$mock->{bootstrap}'
});
$node->reload;
wait_drained($node) or die 'not drained after fixing the broker list';
is(relay_pid($node), $pid, 'the fix needed no restart');
is(scalar @{ consume($mock->{bootstrap}, 'ops') }, 1, 'the waiting message arrived');
ok(!$node->log_contains('sekrit'), 'kafka_config values never reach the log');

# 2. relay_status after deliveries
sql(q{SELECT eventstore.publish('ops', 'k' || i % 5, jsonb_build_object('n', i)) FROM generate_series(1, 20) i});
wait_drained($node);
$node->poll_query_until('postgres', q{SELECT state = 'idle' FROM eventstore.relay_status()})
  or die 'relay not idle';
is(sql(q{SELECT pid = (SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstore relay')
	   AND state = 'idle' AND pending = 0 AND oldest_pending_age IS NULL
	   AND sent_total = 21 AND dead_letters_total = 0
	   AND last_delivery_at > now() - interval '1 minute'
	   AND latency_p50_ms > 0 AND latency_p99_ms >= latency_p50_ms
	   FROM eventstore.relay_status()}), 't', 'relay_status after 21 deliveries');

# 3. An outage: outbox_lag and relay_status show the backlog and the error
mock_command($mock, 'down all');
sql(q{SELECT eventstore.publish(t, 'k', '{}') FROM unnest(ARRAY['lag-a', 'lag-a', 'lag-b']) t});
$node->poll_query_until('postgres',
	q{SELECT retries_total > 0 AND state IN ('broker_down', 'backing_off') FROM eventstore.relay_status()})
  or die 'no retry seen during the outage';
is(sql(q{SELECT string_agg(topic || '=' || pending, ',' ORDER BY topic) FROM eventstore.outbox_lag}),
	'lag-a=2,lag-b=1', 'outbox_lag per topic');
like(sql(q{SELECT last_error FROM eventstore.relay_status()}), qr/^_[A-Z_]+: /,
	'last_error carries the Kafka error name');
mock_command($mock, 'up all');
wait_drained($node) or die 'not drained after the outage';
is(scalar @{ consume($mock->{bootstrap}, 'lag-a') }, 2, 'backlog delivered after the outage');

# 4. continue (default): a dead letter does not hold its key back
sql(q{SELECT eventstore.publish('dl', 'c1', jsonb_build_object('blob', repeat('x', 2000000)));
	SELECT eventstore.publish('dl', 'c1', '{"after": 1}')});
wait_drained($node);
is(sql(q{SELECT count(*) FROM eventstore.dead_letters WHERE message_key = 'c1'}), '1', 'continue: dead letter kept');
is(scalar @{ consume($mock->{bootstrap}, 'dl') }, 1, 'continue: the next message of the key went on');
is(sql(q{SELECT eventstore.discard_dead_letters(ARRAY(SELECT id FROM eventstore.dead_letters))}), '1', 'discarded');

# 5. park: retries exhausted while brokers are down: the key's first message
# is a dead letter and its later messages wait in the outbox behind it (they
# failed with it, but are not dead-lettered: the key is parked); requeue
# sends everything in the original order
$node->append_conf('postgresql.conf', qq{
eventstore.on_dead_letter = 'park'
eventstore.max_attempts = 1
});
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('eventstore.on_dead_letter') = 'park'});
mock_command($mock, 'down all');
sql(q{SELECT eventstore.publish('park', 'p1', jsonb_build_object('n', i)) FROM generate_series(1, 3) i});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM eventstore.dead_letters})
  or die 'message not dead-lettered';
is(sql(q{SELECT payload FROM eventstore.dead_letters}), '{"n": 1}', 'park: the first message is the dead letter');
# from here on, retries ride out the reconnection
$node->append_conf('postgresql.conf', "eventstore.max_attempts = 10\n");
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('eventstore.max_attempts') = '10'});
mock_command($mock, 'up all');
sql(q{SELECT eventstore.publish('park', 'p1', '{"n": 4}');
	SELECT eventstore.publish('park', 'p2', '{"n": 1}')});
$node->poll_query_until('postgres', q{SELECT count(*) = 3 FROM eventstore.outbox})
  or die 'the other key was not delivered';
is(sql(q{SELECT string_agg(message_key || ':' || (payload->>'n'), ',' ORDER BY id) FROM eventstore.outbox}),
	'p1:2,p1:3,p1:4', 'park: the key with a dead letter waits');
is(join(',', map { $_->{key} } @{ consume($mock->{bootstrap}, 'park') }), 'p2', 'park: other keys go on');
is(sql(q{SELECT eventstore.requeue_dead_letters()}), '1', 'requeued');
wait_drained($node) or die 'not drained after requeue';
my $p1 = [ map { $_->{payload} } grep { $_->{key} eq 'p1' } @{ consume($mock->{bootstrap}, 'park') } ];
is(join(',', @$p1), '{"n": 1},{"n": 2},{"n": 3},{"n": 4}', 'requeue kept the key in order');

# 6. replay: stored events re-published in global order
$node->append_conf('postgresql.conf', "eventstore.on_dead_letter = 'continue'\n");
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('eventstore.on_dead_letter') = 'continue'});
sql(q{SELECT eventstore.append('shop-' || i % 3, NULL, jsonb_build_object('type', 'T', 'data', i))
	FROM generate_series(1, 30) i;
	SELECT eventstore.append('misc-1', NULL, '{"type": "M", "data": 0}')});
is(sql(q{SELECT eventstore.replay('rebuild', 'shop')}), '30', 'replay of a category counts its events');
is(sql(q{SELECT eventstore.replay('rebuild-window', NULL, 10, 20)}), '10', 'replay of a position window');
wait_drained($node) or die 'not drained after replay';
my $rebuilt = consume($mock->{bootstrap}, 'rebuild');
is(scalar @$rebuilt, 30, 'every replayed event arrived');
my $order = first_seen_order($rebuilt, sub { $_[0]{headers}{ce_sequence} + 0 });
is(scalar(grep { my @p = @{ $order->{$_} }; join(',', @p) ne join(',', sort { $a <=> $b } @p) } keys %$order),
	0, 'replayed events arrive in global order per key');
is(join(',', sort { $a <=> $b } map { $_->{headers}{ce_sequence} + 0 } @{ consume($mock->{bootstrap}, 'rebuild-window') }),
	join(',', 11 .. 20), 'the window is (from, to]');

$node->stop;
stop_mock($mock);
done_testing();
