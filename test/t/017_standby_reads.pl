# Reads on a streaming hot standby.
#  1. 8 writers append on the primary, most of them in transactions that take
#     their positions and then sleep a few milliseconds before COMMIT, so
#     transactions commit out of position order.  Meanwhile a reader on the
#     standby pages through read_all(last position it got, 100).  It sees
#     every event of the primary exactly once, in increasing position order:
#     the standby's horizon never lets it skip an event that commits late.
#  2. read_stream, stream_version and load_aggregate on the standby answer as
#     on the primary; load_aggregate writes no snapshot there.
#  3. Writes (append, publish, save_snapshot, ack) fail with 25006; read_all under a
#     transaction snapshot fails as on the primary; relay_status() says
#     'standby'.
#  4. poll on the standby returns a partition's events after its checkpoint
#     without moving it; after an ack on the primary has replayed, it returns
#     the next ones.  Two consumers on the standby get different partitions;
#     a waiting poll returns an event appended on the primary meanwhile.
#  5. In a database whose horizon the primary's relay does not publish
#     (eventstore.database names another one), read_all and poll on the
#     standby fail with 55000.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $writers = 8;
my $per_writer = 1200;	# transactions per writer (1 or 3 events each)
my $streams = 200;
# Bound on the writers and on the reader's catching up; far above what it takes
my $timeout = 180;

# The primary commits record their time (track_commit_timestamp), which is
# how the test knows that transactions really committed out of position order.
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q(
shared_preload_libraries = 'eventstore'
eventstore.database = 'postgres'
track_commit_timestamp = on
));
$primary->start;
$primary->safe_psql('postgres', q{
	CREATE EXTENSION eventstore;
	SELECT eventstore.create_subscription('s', category => 'acct', partitions => 2);
	-- no broker is configured: the message waits in the outbox, so that
	-- relay_status() has a row to show
	SELECT eventstore.publish('t', 'k', '{}');
});

$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
# (a poll that waits long on the standby holds a snapshot: without feedback,
# vacuum on the primary cancels it, "conflict with recovery")
$standby->append_conf('postgresql.conf', "hot_standby_feedback = on\n");
$standby->start;
$primary->wait_for_catchup($standby);
my $dir = $primary->basedir;

# The SQLSTATE of the error $sql raises on $node ('' if none)
sub sqlstate_of
{
	my ($node, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return $err =~ /ERROR:\s+([0-9A-Z]{5}):/ ? $1 : '';
}

# 1. Writers (pgbench, in the background): a third of the transactions append
# one event; the others append three and sleep up to 10 ms before COMMIT.
my $plain = "$dir/plain.sql";
append_to_file($plain, qq{\\set n random(1, $streams)
SELECT eventstore.append_event('acct-' || :n, NULL, 'Deposited', '{"amount": 1}');
});
my $slow = "$dir/slow.sql";
append_to_file($slow, qq{\\set n random(1, $streams)
BEGIN;
SELECT eventstore.append('acct-' || :n, NULL, '[{"type": "Deposited", "data": {"amount": 1}}, {"type": "Deposited", "data": {"amount": 2}}, {"type": "Withdrawn", "data": {"amount": 3}}]');
SELECT pg_sleep(random() * 0.01);
COMMIT;
});
my $writer_h = IPC::Run::start(
	[ 'pgbench', '--no-vacuum', "--client=$writers", '--jobs=2',
		"--transactions=$per_writer", '-f', "$plain\@1", '-f', "$slow\@2",
		$primary->connstr('postgres') ],
	'>', "$dir/writers.out", '2>', "$dir/writers.err",
	IPC::Run::timeout($timeout + 60));

# The reader on the standby: read_all from the last position it got, in
# one psql session (quieter in the log than background_psql)
my ($reader_in, $reader_out, $reader_err) = ('', '', '');
my $reader = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $standby->connstr('postgres') ],
	'<', \$reader_in, '>', \$reader_out, '2>', \$reader_err,
	IPC::Run::timeout($timeout + 60));

# One page of read_all after position $after
sub read_page
{
	my ($after) = @_;
	$reader_in .= "SELECT global_position FROM eventstore.read_all($after, 100);\n\\echo END\n";
	$reader->pump until $reader_out =~ /^END\n\z/m || $reader_err ne '';
	die "reader: $reader_err" if $reader_err ne '';
	my @page = grep { $_ ne '' && $_ ne 'END' } split /\n/, $reader_out;
	$reader_out = '';
	return @page;
}
my @seen;
my ($last, $pages, $short_pages, $primary_max, $primary_count) = (0, 0, 0);
my $deadline = time + $timeout;
while (time < $deadline)
{
	my @page = read_page($last);
	$pages++;
	if (@page)
	{
		push @seen, @page;
		$last = $page[-1];
		next if @page == 100;
		$short_pages++;
	}
	# the writers are done: from now on, read until the primary's last event
	if (!defined $primary_max && !$writer_h->pumpable)
	{
		$writer_h->finish or die 'pgbench failed: ' . slurp_file("$dir/writers.err");
		($primary_count, $primary_max) = split /\|/, $primary->safe_psql('postgres',
			'SELECT count(*), max(global_position) FROM eventstore.events');
		$primary->wait_for_catchup($standby);
	}
	last if defined $primary_max && $last >= $primary_max;
	usleep(5_000) unless @page;
}
$reader_in .= "\\q\n";
$reader->finish;
ok(defined $primary_max && $last >= $primary_max,
	'the standby reader got to the primary\'s last event')
  or diag "last position read $last, primary's last " . ($primary_max // 'unknown');
note "reader: $pages pages, $short_pages short ones, " . scalar(@seen) . ' events';

my $dups = 0;
for my $i (1 .. $#seen)
{
	$dups++ if $seen[$i] <= $seen[ $i - 1 ];
}
is($dups, 0, 'positions strictly increase in the order the reader got them');

my %seen = map { $_ => 1 } @seen;
my @all = split /\n/, $primary->safe_psql('postgres',
	'SELECT global_position FROM eventstore.events ORDER BY 1');
my @missed = grep { !$seen{$_} } @all;
my %on_primary = map { $_ => 1 } @all;
my @extra = grep { !$on_primary{$_} } keys %seen;
is(scalar @missed, 0, 'the standby reader missed no event of the primary')
  or diag scalar(@missed) . ' of ' . scalar(@all) . ' missed, e.g. '
  . join(', ', @missed[ 0 .. ($#missed < 9 ? $#missed : 9) ]);
is(scalar @extra, 0, 'and read none the primary does not have');
cmp_ok(scalar @all, '>', 10_000, 'the writers appended what they were asked to');

# The premise: some events committed after events with larger positions
# (commit times of their transactions, in position order)
my $late = $primary->safe_psql('postgres', q{
	SELECT count(*) FROM (
		SELECT pg_xact_commit_timestamp(xmin) AS ts,
			   max(pg_xact_commit_timestamp(xmin)) OVER (ORDER BY global_position
				   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_max
		FROM eventstore.events) c
	WHERE ts < before_max});
cmp_ok($late, '>', 0, 'transactions committed out of position order');
note "$late events committed before an event of a smaller position";

# 2. Streams and aggregates on the standby
$primary->safe_psql('postgres', q{
	CREATE FUNCTION balance_reducer(state jsonb, event eventstore.events) RETURNS jsonb
	LANGUAGE sql AS $$
		SELECT jsonb_build_object('n', coalesce((state ->> 'n')::int, 0) + 1,
			'sum', coalesce((state ->> 'sum')::int, 0) + (event.data ->> 'amount')::int)
	$$;
	SELECT eventstore.register_aggregate('acct', 'balance_reducer(jsonb, eventstore.events)', 1);
});
$primary->wait_for_catchup($standby);
my $stream_q = q{SELECT stream_version, global_position, event_id, event_type, data::text
	FROM eventstore.read_stream('acct-7')};
my $stream = $primary->safe_psql('postgres', $stream_q);
isnt($stream, '', 'stream acct-7 has events');
is($standby->safe_psql('postgres', $stream_q), $stream, 'read_stream on the standby');
is($standby->safe_psql('postgres', q{SELECT eventstore.stream_version('acct-7')}),
	$primary->safe_psql('postgres', q{SELECT eventstore.stream_version('acct-7')}),
	'stream_version on the standby');

my $snapshots_q = 'SELECT count(*) FROM eventstore.snapshots';
my $snapshots = $primary->safe_psql('postgres', $snapshots_q);
my $agg_q = q{SELECT version, state::text, snapshot_version FROM eventstore.load_aggregate('acct-7')};
my ($agg, $agg_err) = ('', '');
$standby->psql('postgres', $agg_q, stdout => \$agg, stderr => \$agg_err);
is($agg_err, '', 'load_aggregate works on the standby');
$primary->wait_for_catchup($standby);
is($primary->safe_psql('postgres', $snapshots_q), $snapshots,
	'and wrote no snapshot (primary)');
is($standby->safe_psql('postgres', $snapshots_q), $snapshots,
	'and wrote no snapshot (standby)');
is($agg, $primary->safe_psql('postgres', $agg_q), 'the same aggregate as on the primary');

# 3. Writes, a transaction snapshot, relay_status()
is(sqlstate_of($standby,
	q{SELECT eventstore.append('acct-7', NULL, '[{"type": "X", "data": {}}]')}),
	'25006', 'append on the standby: 25006');
is(sqlstate_of($standby, q{SELECT eventstore.publish('t', 'k', '{}')}),
	'25006', 'publish on the standby: 25006');
is(sqlstate_of($standby, q{SELECT eventstore.save_snapshot('acct-7', 1, '{}')}),
	'25006', 'save_snapshot on the standby: 25006');
is(sqlstate_of($standby, q{SELECT eventstore.ack('s', 1, 0)}),
	'25006', 'ack on the standby: 25006');
my $rr = q{BEGIN ISOLATION LEVEL REPEATABLE READ;
	SELECT count(*) FROM eventstore.read_all(0, 10);};
my $rr_primary = sqlstate_of($primary, $rr);
is($rr_primary, '0A000', 'read_all under REPEATABLE READ fails on the primary');
is(sqlstate_of($standby, $rr), $rr_primary, 'and on the standby');
is($standby->safe_psql('postgres',
	q{SELECT count(*) FILTER (WHERE state = 'standby' AND pid IS NULL) || '/' || count(*)
	  FROM eventstore.relay_status()}),
	'1/1', "relay_status() on the standby: state 'standby', no pid");

# 4. poll on the standby: partition 0's first events, twice, without moving
# the checkpoint; the next ones after an ack on the primary
my $part0 = q{SELECT global_position FROM eventstore.events
	WHERE category = 'acct' AND eventstore.stream_partition(stream_id, 2) = 0
	ORDER BY global_position};
my @p0 = split /\n/, $primary->safe_psql('postgres', $part0 . ' LIMIT 20');
my $poll_q = q{SELECT global_position FROM eventstore.poll('s', 10, '0', 0)};
my $checkpoint_q = q{SELECT checkpoint FROM eventstore.subscription_partitions
	WHERE subscription = 's' AND partition = 0};
my ($polled, $poll_err) = ('', '');
$standby->psql('postgres', $poll_q, stdout => \$polled, stderr => \$poll_err);
is($poll_err, '', 'poll works on the standby');
is($polled, join("\n", @p0[ 0 .. 9 ]), 'poll on the standby: the partition\'s first events');
$polled = '';
$standby->psql('postgres', $poll_q, stdout => \$polled);
is($polled, join("\n", @p0[ 0 .. 9 ]), 'polling again returns the same events');
is($primary->safe_psql('postgres', $checkpoint_q), '0', 'the checkpoint did not move');
$primary->safe_psql('postgres', "SELECT eventstore.ack('s', $p0[9], 0)");
$primary->wait_for_catchup($standby);
$polled = '';
$standby->psql('postgres', $poll_q, stdout => \$polled);
is($polled, join("\n", @p0[ 10 .. 19 ]),
	'after an ack on the primary, poll on the standby returns the next events');

# Two consumers on the standby do not get the same partition at once
my $c1 = $standby->background_psql('postgres');
my $c2 = $standby->background_psql('postgres');
my $partition_q = q{SELECT DISTINCT eventstore.stream_partition(stream_id, 2)
	FROM eventstore.poll('s', 10)};
$c1->query_safe('BEGIN');
my $got1 = $c1->query_safe($partition_q);
my $got2 = $c2->query_safe($partition_q);
like($got1, qr/^[01]$/, 'a consumer on the standby gets one partition');
like($got2, qr/^[01]$/, 'so does a second one');
isnt($got2, $got1, 'not the partition the first one holds');
$c1->query_safe('COMMIT');
$c1->quit;
$c2->quit;

# A waiting poll on the standby returns an event appended on the primary
# while it waits: it rechecks, nothing on the standby wakes it.  The wait is
# far longer than the bound on psql, so a poll that only looks again when
# its wait ends fails here.
$primary->safe_psql('postgres', q{
	SELECT eventstore.create_subscription('w', category => 'late',
		start_position => eventstore.read_horizon() - 1)});
$primary->wait_for_catchup($standby);
my ($waited, $wait_err) = ('', '');
my $wait_h = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $standby->connstr('postgres') . ' application_name=waiter',
		'-c', q{SELECT stream_id FROM eventstore.poll('w', 10, '1h')} ],
	'<', \undef, '>', \$waited, '2>', \$wait_err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
ok($standby->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE application_name = 'waiter' AND state = 'active' AND query LIKE '%poll%'}),
	'a poll waits on the standby');
$primary->safe_psql('postgres',
	q{SELECT eventstore.append('late-1', 0, '[{"type": "Arrived", "data": {}}]')});
unless (eval { $wait_h->finish; 1 })
{
	$wait_h->kill_kill;
	$wait_err .= 'psql did not return';
}
is("$waited$wait_err", "late-1\n", 'it returns the event appended on the primary meanwhile');

# A database the primary's relay does not serve (eventstore.database) has
# no published horizon: read_all and poll on the standby refuse
$primary->safe_psql('postgres', 'CREATE DATABASE other');
$primary->safe_psql('other', q{
	CREATE EXTENSION eventstore;
	SELECT eventstore.create_subscription('o');
	SELECT eventstore.append('x-1', 0, '[{"type": "A", "data": {}}]');});
is($primary->safe_psql('other', 'SELECT count(*) FROM eventstore.read_all()'), '1',
	'read_all in a database the relay does not serve works on the primary');
$primary->wait_for_catchup($standby);
my ($o_out, $o_err) = ('', '');
$standby->psql('other', 'SELECT count(*) FROM eventstore.read_all()',
	stdout => \$o_out, stderr => \$o_err, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($o_err, qr/ERROR:\s+55000: no read horizon has been published for this database/,
	'on the standby it fails: no read horizon published (55000)');
$o_err = '';
$standby->psql('other', q{SELECT count(*) FROM eventstore.poll('o', 10)},
	stdout => \$o_out, stderr => \$o_err, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($o_err, qr/ERROR:\s+55000:/, 'and so does poll');

$standby->stop;
$primary->stop;
done_testing();
