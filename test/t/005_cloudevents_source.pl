# ce_source, as a consumer sees it.  The default, /eventstore/<database>, is
# a URI-reference for any database name: the name is converted to UTF-8 and
# every byte outside RFC 3986's unreserved characters is percent-encoded,
# whatever the server encoding.  An explicit eventstore.cloudevents_source
# must be a URI-reference too.
use strict;
use warnings;

use Encode qw(encode);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EventstoreTest;

my $mock = start_mock();
my $name = "my db \x{e9}";    # my db é
my $expected = '/eventstore/my%20db%20%C3%A9';
$ENV{PGCLIENTENCODING} = 'UTF8';

for my $encoding ('UTF8', 'LATIN1')
{
	# The name's bytes as the server keeps them: in the server encoding
	my $dbname = encode($encoding eq 'UTF8' ? 'UTF-8' : 'latin1', $name);
	my $node = PostgreSQL::Test::Cluster->new('source_' . lc $encoding);
	$node->init(extra => [ '--encoding', $encoding, '--locale', 'C' ]);
	$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = '$mock->{bootstrap}'
eventstore.database = '$dbname'
));
	$node->start;
	$node->safe_psql('postgres', encode('UTF-8', qq{CREATE DATABASE "$name"}));
	$node->safe_psql($dbname, 'CREATE EXTENSION eventstore');
	# The relay gave up on the missing database; start it again
	$node->restart;

	my $topic = 'source-' . lc $encoding;
	$node->safe_psql($dbname, qq{
		SELECT eventstore.add_route('order', '$topic');
		SELECT eventstore.append('order-1', 0, '{"type": "Placed", "data": 1}');
	});
	$node->poll_query_until($dbname, 'SELECT count(*) = 0 FROM eventstore.outbox')
	  or die 'outbox not drained';
	my $msgs = consume($mock->{bootstrap}, $topic);
	is(scalar @$msgs, 1, "$encoding: the event arrived");
	is($msgs->[0]{headers}{ce_source}, $expected,
		"$encoding: ce_source percent-encodes the database name as UTF-8");

	if ($encoding eq 'UTF8')
	{
		# An explicit source is checked like any setting: ALTER SYSTEM refuses
		# what is not a URI-reference, and nothing is written
		my ($ret, $out, $err) = $node->psql($dbname,
			q{ALTER SYSTEM SET eventstore.cloudevents_source = 'my source'});
		isnt($ret, 0, 'a source with a space is refused');
		like($err, qr/invalid value for parameter "eventstore.cloudevents_source"/,
			'with the parameter named');
		($ret, $out, $err) = $node->psql($dbname,
			encode('UTF-8', qq{ALTER SYSTEM SET eventstore.cloudevents_source = '/store/\x{e9}'}));
		isnt($ret, 0, 'a source with a non-ASCII character is refused');

		# A valid one is used as it is
		$node->safe_psql($dbname,
			q{ALTER SYSTEM SET eventstore.cloudevents_source = 'urn:example:store%201'});
		$node->reload;
		$node->poll_query_until($dbname,
			q{SELECT current_setting('eventstore.cloudevents_source') = 'urn:example:store%201'})
		  or die 'setting not reloaded';
		$node->safe_psql($dbname,
			q{SELECT eventstore.append('order-1', 1, '{"type": "Paid", "data": 2}')});
		$node->poll_query_until($dbname, 'SELECT count(*) = 0 FROM eventstore.outbox')
		  or die 'outbox not drained';
		$msgs = consume($mock->{bootstrap}, $topic);
		is($msgs->[1]{headers}{ce_source}, 'urn:example:store%201', 'an explicit source');
	}
	$node->stop;
}

stop_mock($mock);
done_testing();
