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

# Run a pgbench script with every client; each transaction must complete
sub race
{
	my ($name, $script) = @_;
	$node->pgbench(
		"--no-vacuum --client=$clients --jobs=2 --transactions=$transactions",
		0,
		[qr{processed: @{[ $clients * $transactions ]}/@{[ $clients * $transactions ]}}],
		[qr{^$}],
		$name, { $name => $script });
	return;
}

race('read-then-append race', q{
\set n random(1, 4)
SELECT eventstore.stream_version('hot-' || :n) AS v \gset
SELECT race_append(:n, :v);
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

# 2. Streams being created and extended at once, with expected versions
# NULL, 0, 1 and 2 and with event ids that other clients reuse (identical
# calls: idempotent retries).  The only acceptable answers are success, SE001
# and SE002: anything else (XX000 "without a cause", 23505) fails the test.
$node->safe_psql('postgres', q{
	CREATE SEQUENCE generation;
	CREATE TABLE answers (stream_id text, expected bigint, idx int, sqlstate text,
		version bigint, message text);
	CREATE FUNCTION race_create(g bigint, n int, e int, idx int) RETURNS void
	LANGUAGE plpgsql AS $$
	DECLARE
		s text := 'new-' || g || '_' || n;
		expected bigint := CASE WHEN e <= 2 THEN e END;
		v bigint;
		state text;
		msg text;
	BEGIN
		v := eventstore.append_event(s, expected, 'Step', jsonb_build_object('idx', idx), NULL,
			CASE WHEN idx > 0 THEN md5(s || ':' || idx)::uuid END);
		INSERT INTO answers VALUES (s, expected, idx, 'ok', v, NULL);
	EXCEPTION WHEN OTHERS THEN
		GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
		INSERT INTO answers VALUES (s, expected, idx, state, NULL, msg);
	END
	$$;
});
race('create-and-extend race with reused ids', q{
SELECT nextval('generation') / 24 AS g \gset
\set n random(1, 3)
\set e random(0, 4)
\set idx random(0, 3)
SELECT race_create(:g, :n, :e, :idx);
});

$result = $node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT sqlstate || ': ' || message, E'\n') FROM answers
	WHERE sqlstate NOT IN ('ok', 'SE001', 'SE002')});
is($result, '', 'every append answered with success, SE001 or SE002');

my ($ok, $se001, $retries) = split /\|/, $node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE sqlstate = 'ok'), count(*) FILTER (WHERE sqlstate = 'SE001'),
		(SELECT count(*) FROM (SELECT stream_id, idx FROM answers
			WHERE sqlstate = 'ok' AND idx > 0 GROUP BY 1, 2 HAVING count(*) > 1) r)
	FROM answers});
cmp_ok($ok, '>', 0, "appends succeeded ($ok)");
cmp_ok($se001, '>', 0, "conflicts happened ($se001)");
cmp_ok($retries, '>', 0, "calls with a used id succeeded as retries ($retries ids)");

$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM answers a WHERE a.sqlstate = 'ok' AND a.idx > 0 AND NOT EXISTS (
		SELECT FROM eventstore.events e WHERE e.stream_id = a.stream_id
		  AND e.event_id = md5(a.stream_id || ':' || a.idx)::uuid AND e.stream_version = a.version)});
is($result, '0', 'a successful call with an id returned the version of the event with that id');

$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT e.stream_id FROM eventstore.events e JOIN eventstore.streams s USING (stream_id)
		WHERE e.stream_id LIKE 'new-%' GROUP BY e.stream_id, s.version
		HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)
			OR s.version <> count(*)) bad});
is($result, '0', 'created streams have versions 1..N and heads that match');

$result = $node->safe_psql('postgres', q{
	SELECT count(*) FROM eventstore.streams s WHERE s.stream_id LIKE 'new-%'
	  AND NOT EXISTS (SELECT FROM eventstore.events e WHERE e.stream_id = s.stream_id)});
is($result, '0', 'no stream head without events');

$node->stop;
done_testing();
