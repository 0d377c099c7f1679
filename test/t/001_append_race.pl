# A race driven by pgbench: many clients read a hot stream's version, then
# append with it as the expected version.  Every committed append must have
# been based on the version it read, versions must be gapless, and the
# losers must have got SE001.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $clients = 8;
my $transactions = 250;

my $node = PostgreSQL::Test::Cluster->new('race');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION eventstore;
	CREATE TABLE conflicts (stream_id text, expected bigint, message text);
	-- append with the version read before; a conflict is recorded, not raised
	CREATE FUNCTION race_append(n int, v bigint) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		s text := 'hot-' || n;
		msg text;
	BEGIN
		PERFORM eventstore.append(s, v,
			jsonb_build_object('type', 'Inc', 'data', jsonb_build_object('read', v)));
	EXCEPTION WHEN SQLSTATE 'SE001' THEN
		GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
		INSERT INTO conflicts VALUES (s, v, msg);
	END
	$$;
});

$node->pgbench(
	"--no-vacuum --client=$clients --jobs=2 --transactions=$transactions",
	0,
	[qr{processed: @{[ $clients * $transactions ]}/@{[ $clients * $transactions ]}}],
	[qr{^$}],
	'read-then-append race',
	{
		'race' => q{
\set n random(1, 4)
SELECT eventstore.stream_version('hot-' || :n) AS v \gset
SELECT race_append(:n, :v);
}
	});

my $result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT stream_id FROM eventstore.events GROUP BY stream_id
		HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)
			OR count(DISTINCT stream_version) <> count(*)) gaps});
is($result, '0', 'versions are 1..N without gaps or duplicates');

$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM eventstore.events
	WHERE (data ->> 'read')::bigint IS DISTINCT FROM stream_version - 1});
is($result, '0', 'every committed append was based on the version it read');

$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM eventstore.streams s
	WHERE s.version <> (SELECT max(stream_version) FROM eventstore.events e
						WHERE e.stream_id = s.stream_id)});
is($result, '0', 'stream heads match their last event');

my ($events, $conflicts) = split /\|/, $node->safe_psql('postgres',
	q{SELECT (SELECT count(*) FROM eventstore.events), (SELECT count(*) FROM conflicts)});
is($events + $conflicts, $clients * $transactions,
	'every transaction either appended or got SE001');
cmp_ok($conflicts, '>', 0, "the race happened ($conflicts conflicts, $events appends)");

$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM conflicts c
	WHERE c.expected >= (SELECT version FROM eventstore.streams s WHERE s.stream_id = c.stream_id)});
is($result, '0', 'each conflict expected a version the stream had already passed');

# The message names the stream, the version expected and a larger actual one
$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM conflicts c,
		LATERAL (SELECT regexp_match(c.message,
			'^wrong expected version for stream "([^"]*)": expected (\d+), actual (\d+)$') AS m) r
	WHERE r.m IS NULL OR r.m[1] <> c.stream_id OR r.m[2]::bigint <> c.expected
		OR r.m[3]::bigint <= c.expected});
is($result, '0', 'each SE001 message names the stream, the expected and a newer actual version');

$node->stop;
done_testing();
