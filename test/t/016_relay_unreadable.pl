# An outbox row the relay cannot read (its payload's text form is over
# PostgreSQL's 1 GB limit: a 180 MB jsonb string of control characters, each
# written as \u0001) makes every read that includes it fail with an ERROR.
# The relay then reads one row at a time; once reading that one row failed 3
# times in a row, it sets the row aside as a dead letter with the error, and
# the sink's later messages go on (found by a review: the relay retried the
# same read forever, and no later message of the sink was sent).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();
my $node = relay_node('poison', $mock->{bootstrap}, qq(
eventstore.delivery_timeout = '5s'
));
sub sql { return $node->safe_psql('postgres', $_[0]) }

sql(q{SELECT eventstore.publish('a12-before', 'k1', '{"n": 1}')});
ok(wait_drained($node), 'a message before the poison row is delivered');

sql(q{SELECT eventstore.publish('a12-poison', 'k2', to_jsonb(repeat(chr(1), 180000000)))});
sql(q{SELECT eventstore.publish('a12-after', 'k3', '{"n": 3}')});

# The message after it leaves the outbox once delivered (bounded wait: a
# failure here shows as a timeout, not as a timing assertion)
my $delivered = 0;
for (1 .. 120)
{
	if (sql(q{SELECT count(*) FROM eventstore.outbox WHERE topic = 'a12-after'}) eq '0')
	{
		$delivered = 1;
		last;
	}
	sleep 1;
}
ok($delivered, 'a message published after an unreadable row is still delivered');
is(sql(q{SELECT count(*) FROM eventstore.dead_letters WHERE topic = 'a12-poison'}), '1',
	'the unreadable row became a dead letter');
note(sql(q{SELECT state || ': ' || coalesce(last_error, '') FROM eventstore.relay_status()}));

$node->stop;
stop_mock($mock);
done_testing();
