# Subscriptions (poll / ack / nack) under real concurrency and failures:
#  1. 8 writers append 100,000 events to 500 streams while consumers drain a
#     subscription of 8 partitions; one consumer records what it got outside
#     its transaction and is killed (SIGKILL) between poll and ack.  Every
#     event is consumed, each stream in version order, the only duplicates are
#     the killed consumer's unacknowledged batch, and no partition (so no
#     event) is ever held by two consumers at once.
#  2. A nacked event is offered again after each nack and becomes a dead
#     letter at eventstore.max_attempts; 'skip' moves on, 'park' holds the
#     partition until the dead letter is requeued.
#  3. A poll waiting for events returns at the commit of an append (woken at
#     commit with the library preloaded).
#  4. The same without shared_preload_libraries (the re-checking loop).
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $writers = 8;
my $per_writer = 12_500;
my $appended = $writers * $per_writer;
my $streams = 500;
my $partitions = 8;
# Bound on the whole drain (writers and consumers); far above what it takes
my $drain_timeout = 300;

my $node = relay_node('subs', '');
my $dir = $node->basedir;

# What the consumers record: one row per event received (ord = its place in
# the batch as poll returned it) and one per batch; batch numbers come from
# a sequence while the batch's lease is held, so they order the batches of
# a partition.  polled_at and acked_at are both taken while the lease is held.
$node->safe_psql('postgres', qq{
	CREATE TABLE consumed (consumer int, batch bigint, ord int, global_position bigint,
		stream_id text, stream_version bigint, PRIMARY KEY (batch, ord));
	CREATE TABLE batches (batch bigint PRIMARY KEY, consumer int, polled_at timestamptz,
		acked_at timestamptz, n int, last_position bigint, killed boolean NOT NULL DEFAULT false);
	CREATE SEQUENCE batch_seq;
	CREATE TABLE stop_flag (stop boolean);
	CREATE TYPE polled_event AS (global_position bigint, stream_id text, stream_version bigint);
	-- One batch of a consumer, exactly-once: poll, record, ack in one transaction
	CREATE FUNCTION consume_batch(c int) RETURNS int LANGUAGE plpgsql AS \$\$
	DECLARE
		got polled_event[];
		b bigint;
		n int;
		polled timestamptz;
	BEGIN
		IF EXISTS (SELECT FROM stop_flag) THEN
			RAISE EXCEPTION 'consumer % stopped', c;
		END IF;
		got := ARRAY(SELECT ROW(p.global_position, p.stream_id, p.stream_version)::polled_event
					 FROM eventstore.poll('s', 200, '1s') WITH ORDINALITY p ORDER BY p.ordinality);
		n := cardinality(got);
		IF n = 0 THEN
			RETURN 0;
		END IF;
		-- the batch number is taken under the lease
		polled := clock_timestamp();
		b := nextval('batch_seq');
		INSERT INTO consumed
			SELECT c, b, g.ord, g.global_position, g.stream_id, g.stream_version
			FROM unnest(got) WITH ORDINALITY g(global_position, stream_id, stream_version, ord);
		PERFORM eventstore.ack('s', got[n].global_position);
		INSERT INTO batches VALUES (b, c, polled, clock_timestamp(), n, got[n].global_position);
		RETURN n;
	END
	\$\$;
	SELECT eventstore.create_subscription('s', category => 'acct', partitions => $partitions);
});

# 1. Writers: pgbench clients appending to random streams, in the background
my $wscript = "$dir/writer.sql";
append_to_file($wscript, qq{\\set n random(1, $streams)
SELECT eventstore.append_event('acct-' || :n, NULL, 'Deposited', jsonb_build_object('n', :n));
});
my $started = time;
my $writer_h = IPC::Run::start(
	[ 'pgbench', '--no-vacuum', "--client=$writers", '--jobs=2',
		"--transactions=$per_writer", '-f', $wscript, $node->connstr('postgres') ],
	'>', "$dir/writers.out", '2>', "$dir/writers.err",
	IPC::Run::timeout($drain_timeout + 60));

# A consumer: psql repeating consume_batch(c) until it raises "stopped"
sub start_consumer
{
	my ($c) = @_;
	my $script = "$dir/consumer$c.sql";
	append_to_file($script, "SELECT consume_batch($c) \\watch 0.005\n");
	return IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . " application_name=consumer$c",
			'-f', $script ],
		'<', \undef, '>', '/dev/null', '2>', "$dir/consumer$c.err",
		IPC::Run::timeout($drain_timeout + 60));
}

my %consumer_h = map { $_ => start_consumer($_) } 1 .. 3;

# Consumer 4 is driven from here: it polls on one connection and records
# what it got on another one (outside its transaction), then acks; after a
# few batches it is killed between poll and ack.
my $poller = $node->background_psql('postgres');
my $recorder = $node->background_psql('postgres');
# their timeouts apply to each query, not to the sessions
$_->set_query_timer_restart for $poller, $recorder;
my $poller_pid = $poller->query_safe('SELECT pg_backend_pid()');

# Poll one batch on the poller (transaction left open) and record it with the
# recorder; returns the batch number and its rows, or nothing when empty.
sub poll_and_record
{
	$poller->query_safe('BEGIN');
	my $out = $poller->query_safe(
		q{SELECT global_position, stream_id, stream_version FROM eventstore.poll('s', 200, '1s')});
	my @rows = map { [ split /\|/ ] } grep { $_ ne '' } split /\n/, $out;
	if (!@rows)
	{
		$poller->query_safe('COMMIT');
		return;
	}
	my $b = $recorder->query_safe(q{SELECT nextval('batch_seq')});
	my $i = 0;
	my $values = join ",\n",
	  map { ++$i; "(4, $b, $i, $_->[0], '$_->[1]', $_->[2])" } @rows;
	$recorder->query_safe(qq{
		INSERT INTO consumed VALUES $values;
		INSERT INTO batches (batch, consumer, polled_at, n, last_position)
			VALUES ($b, 4, clock_timestamp(), $i, $rows[-1][0]);});
	return ($b, \@rows);
}

my $acked_batches = 0;
my ($killed_batch, $killed_rows);
my $deadline = time + $drain_timeout;
while (time < $deadline)
{
	my ($b, $rows) = poll_and_record();
	next unless $b;
	# the batch to be killed in: after 3 batches, one of 5+ events (or any
	# after 20, should the consumers have caught up with the writers)
	if ($acked_batches < 3 || (@$rows < 5 && $acked_batches < 20))
	{
		$acked_batches++;
		$poller->query_safe("SELECT eventstore.ack('s', $rows->[-1][0])");
		$recorder->query_safe(
			"UPDATE batches SET acked_at = clock_timestamp() WHERE batch = $b");
		$poller->query_safe('COMMIT');
		next;
	}
	($killed_batch, $killed_rows) = ($b, $rows);
	last;
}
ok($killed_batch, "consumer 4 acknowledged $acked_batches batches, then polled one more")
  or BAIL_OUT('consumer 4 got no batch to be killed in');
note 'consumer 4 holds batch ', $killed_batch, ' of ', scalar(@$killed_rows), ' events';

# While it holds the batch: the lease is its own, nobody else can take the
# partition, and the partition's checkpoint is still before the batch.
my $part = $recorder->query_safe(qq{
	SELECT string_agg(DISTINCT eventstore.stream_partition(stream_id, $partitions)::text, ',')
	FROM consumed WHERE batch = $killed_batch});
like($part, qr/^\d+$/, "the held batch is from one partition ($part)");
is($recorder->query_safe(qq{
	SELECT count(*) FROM pg_locks l JOIN eventstore.subscriptions s ON l.classid = s.id::oid
	WHERE s.name = 's' AND l.locktype = 'advisory' AND l.objid = $part AND l.objsubid = 17747
	  AND l.mode = 'ExclusiveLock' AND l.granted AND l.pid = $poller_pid}),
	'1', 'consumer 4 holds the lease of the partition');
my ($rc, $stdout, $stderr) = $node->psql('postgres', qq{
	\\set VERBOSITY verbose
	SET lock_timeout = '200ms';
	SELECT global_position FROM eventstore.poll('s', 200, '0', $part);});
like($stderr, qr/55P03/, 'another session cannot poll the held partition (lock timeout)');
is($stdout, '', '... and got none of its events');
my $min_held = $killed_rows->[0][0];
is($recorder->query_safe(qq{
	SELECT checkpoint < $min_held FROM eventstore.subscription_partitions
	WHERE subscription = 's' AND partition = $part}),
	't', 'the held batch is not acknowledged (checkpoint before it)');
is($recorder->query_safe(qq{
	SELECT count(*) FROM consumed WHERE consumer <> 4 AND global_position IN (
		SELECT global_position FROM consumed WHERE batch = $killed_batch)}),
	'0', 'no other consumer got the held events');

# Kill consumer 4's client between poll and ack; its lease ends with its
# backend.  acked_at of the killed batch: the last moment it surely held it.
$recorder->query_safe(qq{UPDATE batches SET acked_at = clock_timestamp(), killed = true
	WHERE batch = $killed_batch});
kill 'KILL', $poller->{run}{KIDS}[0]{PID};
eval { $poller->{run}->finish; };
ok($node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $poller_pid)"),
	"consumer 4's backend ended");
$recorder->quit;
$consumer_h{5} = start_consumer(5);

# Wait until the writers are done and every event was consumed
my $drained = 0;
while (time < $deadline)
{
	my $counts = $node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM eventstore.events WHERE category = 'acct')
			|| ' ' || (SELECT count(DISTINCT global_position) FROM consumed)});
	if ($counts eq "$appended $appended")
	{
		$drained = 1;
		last;
	}
	# a consumer that failed stops the wait (its error is shown below)
	last if grep { -s "$dir/consumer$_.err" } keys %consumer_h;
	usleep(200_000);
}
my $elapsed = time - $started;
if (!ok($drained, "$appended events appended and consumed ($elapsed s)"))
{
	diag("consumer$_.err: " . slurp_file("$dir/consumer$_.err"))
	  for grep { -s "$dir/consumer$_.err" } 1 .. 5;
}
$node->safe_psql('postgres', 'INSERT INTO stop_flag VALUES (true)');
for my $c (sort keys %consumer_h)
{
	eval { $consumer_h{$c}->finish; };
	is(slurp_file("$dir/consumer$c.err") =~ s/^CONTEXT: .*\n//mgr,
		"psql:$dir/consumer$c.sql:1: ERROR:  consumer $c stopped\n",
		"consumer $c ran without errors until stopped");
}
ok($writer_h->finish, 'pgbench writers exited with 0')
  or diag(slurp_file("$dir/writers.err"));
like(slurp_file("$dir/writers.out"),
	qr{actually processed: $appended/$appended}, "pgbench ran $appended appends");

# The events are what was appended
is($node->safe_psql('postgres', q{
	SELECT count(*) || ' ' || count(DISTINCT stream_id) FROM eventstore.events
	WHERE category = 'acct'}),
	"$appended $streams", "$appended events in $streams streams");

# Set equality: every event consumed, nothing consumed that is not an event
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM eventstore.events e WHERE e.category = 'acct'
	  AND NOT EXISTS (SELECT FROM consumed c WHERE c.global_position = e.global_position)}),
	'0', 'every event was consumed');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM consumed c WHERE NOT EXISTS (
		SELECT FROM eventstore.events e WHERE e.global_position = c.global_position
		  AND e.stream_id = c.stream_id AND e.stream_version = c.stream_version)}),
	'0', 'every consumed row is an event, with its stream and version');

# Duplicates: exactly the killed consumer's unacknowledged batch, each twice
my $killed_n = scalar @$killed_rows;
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM (SELECT global_position FROM consumed GROUP BY 1 HAVING count(*) > 1) d
	WHERE global_position NOT IN (SELECT global_position FROM consumed WHERE batch = $killed_batch)}),
	'0', 'no event consumed twice outside the killed batch');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FILTER (WHERE n = 2) || ' ' || count(*) FROM (
		SELECT global_position, count(*) AS n FROM consumed
		WHERE global_position IN (SELECT global_position FROM consumed WHERE batch = $killed_batch)
		GROUP BY 1) k}),
	"$killed_n $killed_n", "the killed batch's $killed_n events were redelivered once each");
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM consumed WHERE consumer = 4 AND batch <> $killed_batch AND global_position IN (
		SELECT global_position FROM consumed GROUP BY 1 HAVING count(*) > 1)}),
	'0', "consumer 4's acknowledged batches were not redelivered");

# Order: ignoring redeliveries (the first delivery of each event), each
# stream is consumed in version order, and each partition in position order
my $first = qq{
	WITH first AS (
		SELECT DISTINCT ON (global_position) *,
			eventstore.stream_partition(stream_id, $partitions) AS part
		FROM consumed ORDER BY global_position, batch, ord)};
is($node->safe_psql('postgres', $first . q{
	SELECT count(*) FROM (SELECT stream_version, lag(stream_version) OVER (
		PARTITION BY stream_id ORDER BY batch, ord) AS prev FROM first) o
	WHERE stream_version <> prev + 1}),
	'0', 'each stream was consumed in version order, without gaps');
is($node->safe_psql('postgres', $first . q{
	SELECT count(*) FROM (SELECT global_position, lag(global_position) OVER (
		PARTITION BY part ORDER BY batch, ord) AS prev FROM first) o
	WHERE global_position <= prev}),
	'0', 'each partition was consumed in position order');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM consumed c JOIN eventstore.events e USING (global_position)
	WHERE c.stream_version <> e.stream_version}), '0', 'versions as recorded');

# Leases: a batch is one partition's, and two batches of a partition never
# overlapped: both ends of each batch's interval were taken while it held
# the lease, so overlapping intervals mean two holders at once (an order of
# clock readings, not a timing assertion).
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM (SELECT batch FROM consumed GROUP BY batch
		HAVING count(DISTINCT eventstore.stream_partition(stream_id, $partitions)) <> 1) b}),
	'0', 'every batch holds events of one partition');
my $batch_parts = qq{
	WITH bp AS (
		SELECT b.*, (SELECT eventstore.stream_partition(c.stream_id, $partitions) FROM consumed c
					 WHERE c.batch = b.batch AND c.ord = 1) AS part
		FROM batches b)};
is($node->safe_psql('postgres', $batch_parts . q{
	SELECT count(*) FROM bp WHERE polled_at IS NULL OR acked_at IS NULL OR part IS NULL}), '0',
	'every batch has both ends recorded');
is($node->safe_psql('postgres', $batch_parts . q{
	SELECT coalesce(string_agg(format('%s(c%s) and %s(c%s) on partition %s',
		a.batch, a.consumer, b.batch, b.consumer, a.part), '; '), '')
	FROM bp a JOIN bp b ON a.part = b.part AND a.batch < b.batch
	WHERE a.polled_at < b.acked_at AND b.polled_at < a.acked_at}),
	'', 'no two batches of a partition were held at once');
my ($nbatches, $overlapping, $consumers) = split /\|/, $node->safe_psql('postgres', $batch_parts . q{
	SELECT (SELECT count(*) FROM bp),
		(SELECT count(*) FROM (SELECT FROM bp a JOIN bp b ON a.part <> b.part AND a.batch < b.batch
		 WHERE a.polled_at < b.acked_at AND b.polled_at < a.acked_at LIMIT 100) o),
		(SELECT count(DISTINCT consumer) FROM bp)});
cmp_ok($overlapping, '>', 0,
	"consumers ran at once on different partitions ($overlapping+ overlapping pairs in $nbatches batches)");
cmp_ok($consumers, '>=', 4, "$consumers consumers got events");
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM consumed WHERE consumer <> 4 AND global_position IN (
		SELECT global_position FROM consumed WHERE batch = $killed_batch)}),
	$killed_n, 'the held events went to other consumers after the kill');

# Checkpoints: every partition is at or past its last event, nothing left
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM eventstore.subscription_partitions sp
	WHERE sp.subscription = 's' AND sp.checkpoint < (
		SELECT coalesce(max(global_position), 0) FROM eventstore.events e
		WHERE e.category = 'acct' AND eventstore.stream_partition(e.stream_id, $partitions) = sp.partition)}),
	'0', 'every partition checkpointed its last event');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM generate_series(0, @{[ $partitions - 1 ]}) p,
		eventstore.poll('s', 10, '0', p) e}),
	'0', 'a last poll of each partition finds nothing');

# 2. Retries and dead letters
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET eventstore.max_attempts = 3;
	ALTER SYSTEM SET eventstore.retry_backoff_initial = '50ms';
	SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('eventstore.max_attempts') = '3'})
  or die 'max_attempts not reloaded';

# One poll (waiting up to $wait) in its own transaction, then $then in the
# same transaction; returns the positions polled, in order, comma-separated.
sub poll_then
{
	my ($sub, $wait, $then) = @_;
	my $out = $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT coalesce(string_agg(global_position::text, ',' ORDER BY ordinality), '')
		FROM eventstore.poll('$sub', 10, '$wait') WITH ORDINALITY;
		$then;
		COMMIT;});
	return (split /\n/, $out)[0] // '';
}

# Appends events to $stream; returns their positions
sub append_events
{
	my ($stream, $n) = @_;
	$node->safe_psql('postgres', qq{
		SELECT eventstore.append_event('$stream', NULL, 'Job', jsonb_build_object('i', i))
		FROM generate_series(1, $n) i});
	my @all = split /\n/, $node->safe_psql('postgres', qq{
		SELECT global_position FROM eventstore.events WHERE stream_id = '$stream'
		ORDER BY stream_version});
	return @all[ -$n .. -1 ];
}

for my $mode ('skip', 'park')
{
	my $sub = "retry_$mode";
	my $stream = "job$mode-1";
	$node->safe_psql('postgres', qq{
		SELECT eventstore.create_subscription('$sub', category => 'job$mode', on_failure => '$mode')});
	my ($e1, $e2) = append_events($stream, 2);
	my $state = qq{SELECT checkpoint || ' ' || attempts FROM eventstore.subscription_partitions
		WHERE subscription = '$sub'};

	is(poll_then($sub, '0', "SELECT eventstore.nack('$sub', $e1, 'boom 1')"),
		"$e1,$e2", "$mode: first poll offers both events; nack the first");
	is($node->safe_psql('postgres', $state), ($e1 - 1) . ' 1',
		"$mode: after the first nack, the checkpoint is before it, one attempt");
	for my $attempt (2, 3)
	{
		# Waits until the retry falls due (50 ms to 1 s), well within 30 s
		is(poll_then($sub, '30s', "SELECT eventstore.nack('$sub', $e1, 'boom $attempt')"),
			"$e1,$e2", "$mode: offered again after nack " . ($attempt - 1) . "; nack $attempt");
	}
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(concat_ws(' ', partition, event_position, stream_id, attempts, last_error), ';')
		FROM eventstore.subscription_dead_letters WHERE subscription = '$sub'}),
		"0 $e1 $stream 3 boom 3", "$mode: after 3 attempts the event is a dead letter");

	if ($mode eq 'skip')
	{
		is(poll_then($sub, '30s', "SELECT eventstore.ack('$sub', $e2)"), "$e2",
			'skip: the partition moved on to the next event');
		is(poll_then($sub, '0', 'SELECT 1'), '', 'skip: nothing left once it is acked');
		next;
	}

	is(poll_then($sub, '500ms', 'SELECT 1'), '', 'park: the partition holds at the dead letter');
	my ($e3) = append_events($stream, 1);
	is(poll_then($sub, '500ms', 'SELECT 1'), '', 'park: ... also when a new event arrives');
	like($node->safe_psql('postgres', $state), qr/^@{[ $e1 - 1 ]} /,
		'park: the checkpoint is still before the dead letter');
	is($node->safe_psql('postgres',
			"SELECT eventstore.requeue_subscription_dead_letters('$sub')"),
		'1', 'park: one dead letter requeued');
	is(poll_then($sub, '30s', "SELECT eventstore.ack('$sub', $e3)"), "$e1,$e2,$e3",
		'park: the partition resumes at the requeued event');
	is(poll_then($sub, '0', 'SELECT 1'), '', 'park: nothing left once it is acked');
}

# 3 and 4. A poll waiting up to 60 s returns the event appended by another
# session, at its commit: not before (the transaction is open meanwhile)
# and well before the 60 s (a 30 s bound as a liveness check).
sub waiting_poll
{
	my ($n, $label) = @_;
	my $sub = "live_$label";
	my $stream = "live$label-1";
	$n->safe_psql('postgres', qq{
		SELECT eventstore.create_subscription('$sub', category => 'live$label', start_position => NULL)});
	my ($in, $out, $err) = ('', '', '');
	my $timer = IPC::Run::timer($PostgreSQL::Test::Utils::timeout_default);
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d',
			$n->connstr('postgres') . " application_name=waiting_poll" ],
		'<', \$in, '>', \$out, '2>', \$err, $timer);
	$in .= qq{SELECT global_position, stream_id FROM eventstore.poll('$sub', 10, '60s');\n}
	  . "\\echo POLL-DONE\n";
	$timer->start(30);
	$h->pump_nb while length $in && !$timer->is_expired;
	$timer->reset;
	ok($n->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity
		WHERE application_name = 'waiting_poll' AND state = 'active' AND query LIKE '%poll(%'}),
		"$label: the poll is waiting");

	my $writer = $n->background_psql('postgres');
	$writer->query_safe(qq{BEGIN; SELECT eventstore.append_event('$stream', NULL, 'Ping', '{}')});
	$h->pump_nb;
	is($out, '', "$label: nothing returned while the append is not committed");
	$writer->query_safe('COMMIT');
	my $pos = $n->safe_psql('postgres',
		"SELECT global_position FROM eventstore.events WHERE stream_id = '$stream'");

	$timer->start(30);
	$h->pump until $out =~ /^POLL-DONE$/m || $timer->is_expired;
	my $returned = $out =~ /^POLL-DONE$/m;
	ok($returned, "$label: the waiting poll returned within 30 s of the commit");
	is($out =~ s/^POLL-DONE\n//mr, "$pos|$stream\n", "$label: it returned the appended event")
	  or diag($err);
	$in .= "\\q\n";
	$timer->start($PostgreSQL::Test::Utils::timeout_default);
	$h->finish;
	$writer->quit;
	return;
}

waiting_poll($node, 'preloaded');

my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION eventstore');
is($plain->safe_psql('postgres', 'SHOW shared_preload_libraries'), '',
	'second node: eventstore is not preloaded');
waiting_poll($plain, 'nopreload');

$plain->stop;
$node->stop;
done_testing();
