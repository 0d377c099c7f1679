# The relay delivers routed events and published messages to Kafka, with the
# CloudEvents headers, every event once and in order per key, as a consumer
# on the (mock) broker sees them.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();
my $node = relay_node('relay', $mock->{bootstrap});

$node->safe_psql('postgres', q{
	SELECT eventstore.add_route('order', 'orders');
	SELECT eventstore.add_route('*', 'everything');
});

# 40 streams x 25 events, appended in many transactions, interleaved
my $streams = 40;
my $per_stream = 25;
$node->safe_psql('postgres', qq{
	DO \$\$
	BEGIN
		FOR v IN 0..$per_stream - 1 LOOP
			FOR s IN 1..$streams LOOP
				PERFORM eventstore.append('order-' || s, v, jsonb_build_object(
					'type', 'Step', 'data', jsonb_build_object('s', s, 'v', v + 1),
					'metadata', jsonb_build_object('correlation_id', 'corr-' || s,
						'causation_id', 'cause-' || v, 'traceparent', '00-abc-def-01',
						'tenant', 't1')));
			END LOOP;
			COMMIT;
		END LOOP;
	END
	\$\$;
	SELECT eventstore.append('user-1', 0, '{"type": "Registered", "data": {"name": "Ann"}}');
});
wait_drained($node) or die 'outbox not drained';

my $msgs = consume($mock->{bootstrap}, 'orders');
is(scalar @$msgs, $streams * $per_stream, 'every routed event arrived once');

# Each message against the event it came from
my %events = map { my @f = split /\|/; ($f[0] => \@f) } split /\n/,
  $node->safe_psql('postgres', q{
	SELECT event_id, stream_id, stream_version, global_position, event_type,
		   data::text, metadata::text,
		   to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
	FROM eventstore.events});
my $json = JSON::PP->new->canonical;
sub same_json { $json->encode(decode_json($_[0])) eq $json->encode(decode_json($_[1])) }
my ($bad, %partitions) = (0);
for my $m (@$msgs)
{
	my $h = $m->{headers};
	my $e = $events{ $h->{ce_id} // '' };
	unless ($e
		&& $m->{key} eq $e->[1]
		&& $h->{ce_specversion} eq '1.0'
		&& $h->{ce_type} eq $e->[4]
		&& $h->{ce_source} eq '/eventstore/postgres'
		&& $h->{ce_subject} eq $e->[1]
		&& $h->{ce_streamversion} eq $e->[2]
		&& $h->{ce_sequence} eq sprintf('%019d', $e->[3])
		&& !exists $h->{ce_position}
		&& $h->{ce_time} eq $e->[7]
		&& $h->{'content-type'} eq 'application/json'
		&& $h->{ce_correlationid} eq "corr-" . decode_json($e->[5])->{s}
		&& $h->{ce_causationid} eq "cause-" . (decode_json($e->[5])->{v} - 1)
		&& $h->{ce_traceparent} eq '00-abc-def-01'
		&& same_json($h->{'eventstore-metadata'}, $e->[6])
		&& same_json($m->{payload}, $e->[5]))
	{
		$bad++;
		diag explain $m if $bad <= 3;
	}
	$partitions{ $m->{key} }{ $m->{partition} } = 1;
}
is($bad, 0, 'key, value and CloudEvents headers match the stored event');
is(scalar(grep { keys %{ $partitions{$_} } != 1 } keys %partitions), 0,
	'each key stays on one partition');
is(scalar(keys %{ { map { $_->{partition} => 1 } @$msgs } }), 4,
	'keys spread over the partitions');

my $order = first_seen_order($msgs, sub { $_[0]{headers}{ce_streamversion} });
is(scalar(grep { join(',', @{ $order->{$_} }) ne join(',', 1 .. $per_stream) } keys %$order),
	0, 'per key, versions arrive in order 1..N');
is(scalar keys %$order, $streams, 'every stream arrived');

# '*' routes the categories without a route of their own
my $other = consume($mock->{bootstrap}, 'everything');
is_deeply([ map { $_->{key} } @$other ], ['user-1'], "'*' route took the other category");

# publish(): any message, with its headers and the outbox id
my $id = $node->safe_psql('postgres',
	q{SELECT eventstore.publish('notifications', 'customer-7', '{"hello": "world"}',
		'{"x-tenant": "acme", "x-trace": "t-1"}')});
$node->safe_psql('postgres',
	q{SELECT eventstore.publish('notifications', NULL, NULL)});
wait_drained($node) or die 'outbox not drained';
my $pub = consume($mock->{bootstrap}, 'notifications');
my ($keyed) = grep { defined $_->{key} && $_->{key} eq 'customer-7' } @$pub;
ok($keyed, 'published message arrived with its key');
is_deeply(decode_json($keyed->{payload}), { hello => 'world' }, 'payload');
is($keyed->{headers}{'x-tenant'}, 'acme', 'caller header 1');
is($keyed->{headers}{'x-trace'}, 't-1', 'caller header 2');
is($keyed->{headers}{'eventstore-outbox-id'}, $id, 'outbox id header');
is(scalar @$pub, 2, 'the keyless tombstone arrived too');

# removing a route stops enqueueing
$node->safe_psql('postgres', q{
	SELECT eventstore.remove_route('order');
	SELECT eventstore.remove_route('*');
	SELECT eventstore.append('order-1', NULL, '{"type": "Unrouted", "data": {}}');
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventstore.outbox'), '0',
	'no route, no outbox row');

# the relay reports itself in pg_stat_activity
like($node->safe_psql('postgres',
	q{SELECT backend_type || '/' || coalesce(wait_event_type, '') FROM pg_stat_activity
	  WHERE backend_type = 'eventstore relay'}),
	qr{^eventstore relay/}, 'relay visible in pg_stat_activity');

# With eventstore.kafka_brokers empty the relay stays away; appends still work
my $off = relay_node('relay_off', '');
$off->safe_psql('postgres', q{
	SELECT eventstore.add_route('order', 'orders');
	SELECT eventstore.append('order-1', 0, '{"type": "A", "data": {}}');
	SELECT eventstore.publish('t', 'k', '{}');
});
sleep 1;
is($off->safe_psql('postgres', 'SELECT count(*) FROM eventstore.outbox'), '2',
	'relay off: messages wait in the outbox');
is($off->safe_psql('postgres',
	q{SELECT coalesce(state, 'none') FROM pg_stat_activity WHERE backend_type = 'eventstore relay'}),
	'idle', 'relay off: the worker is idle');
ok(!$off->log_contains('producing to'), 'relay off: no producer was created');

$node->stop;
$off->stop;
stop_mock($mock);
done_testing();
