# One relay per database: with eventstore.database unset ('' = every
# database) a launcher worker starts an "eventstore relay" for each database
# that has the extension, and only those.  Each relay delivers its own
# database's outbox (ce_source names it) and relay_status() in a database
# describes that database's relay.  DROP EXTENSION ends a database's relay,
# CREATE EXTENSION in a new database starts one, DROP DATABASE ... WITH
# (FORCE) ends it without harming the launcher or the other relays, and
# eventstore.database / eventstore.max_relays restrict which databases are
# served (the others show not_served and keep their outbox).
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use EventstoreTest;

my $mock = start_mock();
my $node = PostgreSQL::Test::Cluster->new('databases');
$node->init;
$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.kafka_brokers = '$mock->{bootstrap}'
eventstore.retry_backoff_initial = '100ms'
eventstore.retry_backoff_max = '1s'
));
$node->start;

sub sql { my ($db, $query) = @_; return $node->safe_psql($db, $query) }

# The databases of the running relays, sorted, one entry per relay
# (a database served twice shows twice)
my $relays_query = q{SELECT coalesce(string_agg(coalesce(datname, '?'), ',' ORDER BY datname), '')
	FROM pg_stat_activity WHERE backend_type = 'eventstore relay'};
sub relay_dbs { return sql('postgres', $relays_query) }

# Wait until the relays serve exactly $dbs (comma-separated, sorted)
sub wait_relays
{
	my ($dbs) = @_;
	return $node->poll_query_until('postgres', $relays_query, $dbs);
}

# The pid of ${db}'s relay ('' when none runs; several joined with ',')
sub relay_pid_of
{
	my ($db) = @_;
	return sql('postgres', qq{SELECT coalesce(string_agg(pid::text, ','), '')
		FROM pg_stat_activity WHERE backend_type = 'eventstore relay' AND datname = '$db'});
}

# The launcher's pid(s)
sub launcher_pid
{
	return sql('postgres', q{SELECT coalesce(string_agg(pid::text, ','), '')
		FROM pg_stat_activity WHERE backend_type = 'eventstore launcher'});
}

# Wait until ${db}'s outbox is empty
sub drained
{
	my ($db) = @_;
	return $node->poll_query_until($db, 'SELECT count(*) = 0 FROM eventstore.outbox');
}

# ${db}'s relay_status() row for Kafka, as "pid|state|sent_total"
sub status_of
{
	my ($db) = @_;
	return sql($db, q{SELECT coalesce(pid::text, 'null') || '|' || state || '|' || sent_total
		FROM eventstore.relay_status() WHERE sink = 'kafka'});
}

# Append $count events in $db, each {"db": <db>, "n": n} on streams order-1..5
my %appended;
sub append_in
{
	my ($db, $count) = @_;
	my $from = ($appended{$db} // 0) + 1;
	my $to = $from + $count - 1;
	sql($db, join '', map {
		my $s = $_ % 5 + 1;
		qq{SELECT eventstore.append_event('order-$s', NULL, 'Step', '{"db": "$db", "n": $_}');}
	} $from .. $to);
	$appended{$db} = $to;
	return;
}

my $json = JSON::PP->new->canonical;
sub same_json { $json->encode(decode_json($_[0])) eq $json->encode(decode_json($_[1])) }

# $topic holds exactly ${db}'s events: as many messages as events, each one
# of them with its data, every one of them, and ce_source /eventstore/<db>
sub check_topic
{
	my ($label, $db, $topic) = @_;
	my %expected = map { split /\|/, $_, 2 } split /\n/,
	  sql($db, q{SELECT event_id, data::text FROM eventstore.events WHERE category = 'order'});
	my $msgs = eval { consume($mock->{bootstrap}, $topic) } // [];
	is(scalar @$msgs, scalar keys %expected,
		"$label: $topic holds as many messages as $db has events");
	my @foreign = grep {
		my $e = $expected{ $_->{headers}{ce_id} // '' };
		!defined $e || !same_json($e, $_->{payload})
	} @$msgs;
	is(scalar @foreign, 0, "$label: each message on $topic is one of ${db}'s events, with its data");
	diag explain $foreign[0] if @foreign;
	my %got = map { (($_->{headers}{ce_id} // '') => 1) } @$msgs;
	is(scalar(grep { !$got{$_} } keys %expected), 0, "$label: every event of $db is on $topic");
	my @source = grep { ($_->{headers}{ce_source} // '') ne "/eventstore/$db" } @$msgs;
	is(scalar @source, 0, "$label: ce_source is /eventstore/$db");
	diag "ce_source: $source[0]{headers}{ce_source}" if @source;
	return;
}

# 1. Two databases, a route each to a topic of its own
for my $db (qw(db1 db2))
{
	sql('postgres', "CREATE DATABASE $db");
	sql($db, qq{CREATE EXTENSION eventstore; SELECT eventstore.add_route('order', '$db-orders')});
}
append_in('db1', 20);
append_in('db2', 30);
ok(drained('db1'), "db1's outbox drains");
ok(drained('db2'), "db2's outbox drains");
check_topic('two databases', 'db1', 'db1-orders');
check_topic('two databases', 'db2', 'db2-orders');

# 2. One relay per database with the extension, none elsewhere, one launcher
ok(wait_relays('db1,db2'),
	'one relay each for db1 and db2, none for postgres or the templates');
# A relay that only looks whether its database has the extension may show
# for a moment: reported, not asserted
my %seen_sets;
for (1 .. 20)
{
	$seen_sets{ relay_dbs() } = 1;
	usleep(100_000);
}
note 'relay sets seen over 2 s: ' . join(' / ', sort keys %seen_sets);
my $launcher = launcher_pid();
like($launcher, qr/^\d+$/, 'exactly one eventstore launcher runs');
note 'the launcher in pg_stat_activity: ' . sql('postgres', q{SELECT coalesce(datname, '(no database)')
	FROM pg_stat_activity WHERE backend_type = 'eventstore launcher'});

# 3. relay_status() in each database describes that database's relay
my %pid = map { ($_ => relay_pid_of($_)) } qw(db1 db2);
isnt($pid{db1}, $pid{db2}, 'db1 and db2 have relays of their own');
is(status_of('db1'), "$pid{db1}|idle|20", "relay_status() in db1: db1's relay, its 20 messages");
is(status_of('db2'), "$pid{db2}|idle|30", "relay_status() in db2: db2's relay, its 30 messages");

# 4. DROP EXTENSION in db1 ends db1's relay; db2's goes on
sql('db1', 'DROP EXTENSION eventstore');
ok(wait_relays('db2'), "after DROP EXTENSION in db1, db1's relay exits");
ok($pid{db2} ne '' && relay_pid_of('db2') eq $pid{db2}, "db2's relay keeps its pid");
append_in('db2', 10);
ok(drained('db2'), "db2's outbox drains after db1's relay left");
check_topic('after DROP EXTENSION in db1', 'db2', 'db2-orders');
is(status_of('db2'), "$pid{db2}|idle|40", "relay_status() in db2 counts db2's 40 messages");

# 5. A new database with the extension gets a relay
sql('postgres', 'CREATE DATABASE db3');
sql('db3', q{CREATE EXTENSION eventstore; SELECT eventstore.add_route('order', 'db3-orders')});
append_in('db3', 5);
ok(wait_relays('db2,db3'), 'CREATE EXTENSION in db3 starts a relay there');
ok(drained('db3'), "db3's outbox drains");
check_topic('new database', 'db3', 'db3-orders');
$pid{db3} = relay_pid_of('db3');
is(status_of('db3'), "$pid{db3}|idle|5", "relay_status() in db3: db3's relay, its 5 messages");
ok($launcher ne '' && launcher_pid() eq $launcher, 'the launcher is the same process');

# 6. Dropping a database that has a relay.  What plain DROP DATABASE does is
# reported, not asserted; WITH (FORCE) must end the relay and drop it.
sql('postgres', 'CREATE DATABASE db4');
sql('db4', q{CREATE EXTENSION eventstore; SELECT eventstore.add_route('order', 'db4-orders')});
ok(wait_relays('db2,db3,db4'), 'db4 gets a relay');
my $db4_oid = sql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'db4'});
my $drop_offset = -s $node->logfile;
my $drop_time = time;
my ($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE db4');
note "plain DROP DATABASE of a database with a relay: exit $ret, stderr: $err";
note 'relays after it: ' . relay_dbs();
if ($ret != 0)
{
	($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE db4 WITH (FORCE)');
	is($ret, 0, 'DROP DATABASE WITH (FORCE) drops a database that has a relay');
	diag $err if $ret;
}
ok(wait_relays('db2,db3'), "db4's relay is gone");
is(sql('postgres', q{SELECT count(*) FROM pg_database WHERE datname = 'db4'}), '0', 'db4 is gone');
ok($launcher ne '' && launcher_pid() eq $launcher, 'the launcher survived the drop');
ok($pid{db2} ne '' && $pid{db3} ne ''
	  && relay_pid_of('db2') . ' ' . relay_pid_of('db3') eq "$pid{db2} $pid{db3}",
	'the other relays kept their pids');
append_in('db2', 5);
append_in('db3', 5);
ok(drained('db2') && drained('db3'), 'the other relays still deliver');
check_topic('after dropping db4', 'db2', 'db2-orders');
check_topic('after dropping db4', 'db3', 'db3-orders');
ok(!$node->log_contains(qr/terminated by signal|was terminated by exception/),
	'no process crashed');
# A relay restarted for the dropped database would fail every few seconds;
# once the launcher rescanned pg_database (every 10 s) none may start
my $gone = qr/database (?:"db4"|$db4_oid) does not exist/;
sleep 1 while time < $drop_time + 12;
my $fails = () = slurp_file($node->logfile, $drop_offset) =~ /$gone/g;
sleep 5;
my $fails_later = () = slurp_file($node->logfile, $drop_offset) =~ /$gone/g;
is($fails_later, $fails, 'no relay keeps restarting for the dropped database');
note "relay failures for the dropped db4 in the log: $fails_later";

# 7. eventstore.database = 'db2': only db2 is served
$node->append_conf('postgresql.conf', "eventstore.database = 'db2'\n");
$node->restart;
my $db3_before = sql('db3', 'SELECT count(*) FROM eventstore.outbox');
append_in('db3', 4);
append_in('db2', 3);
ok(drained('db2'), 'restricted to db2: db2 drains');
ok(wait_relays('db2'), 'restricted to db2: a relay runs for db2');
$launcher = launcher_pid();
like($launcher, qr/^\d+$/, 'restricted to db2: one launcher');
# Give a wrongly started relay for db3 time to show and to send
sleep 2;
is(relay_dbs(), 'db2', 'restricted to db2: only db2 has a relay');
is(sql('db3', q{SELECT string_agg(state, ',') FROM eventstore.relay_status()}), 'not_served',
	'restricted to db2: relay_status() in db3 shows not_served');
is(sql('db3', 'SELECT count(*) FROM eventstore.outbox'), $db3_before + 4,
	"restricted to db2: db3's new events stay in its outbox");
note 'relay_status() in db3 when restricted to db2: '
  . sql('db3', q{SELECT row_to_json(s)::text FROM eventstore.relay_status() s});

# 8. eventstore.database = '' and eventstore.max_relays = 1: one relay for
# db2 and db3, the other database not served, and told why
$node->append_conf('postgresql.conf', "eventstore.database = ''\neventstore.max_relays = 1\n");
my $log_offset = -s $node->logfile;
$node->restart;
ok($node->poll_query_until('postgres', q{SELECT string_agg(datname, ',') IN ('db2', 'db3')
	FROM pg_stat_activity WHERE backend_type = 'eventstore relay'}),
	'max_relays = 1: a relay runs for db2 or db3');
$launcher = launcher_pid();
like($launcher, qr/^\d+$/, 'max_relays = 1: one launcher');
my $served = relay_dbs();
my $unserved = $served eq 'db2' ? 'db3' : 'db2';
if (ok($served eq 'db2' || $served eq 'db3',
		"max_relays = 1: the relay serves db2 or db3 ($served)"))
{
	append_in($served, 2);
	append_in($unserved, 2);
	ok(drained($served), "max_relays = 1: the served database ($served) drains");
	sleep 2;
	is(sql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstore relay'}),
		'1', 'max_relays = 1: exactly one relay runs');
	is(sql($unserved, q{SELECT string_agg(state, ',') FROM eventstore.relay_status()}), 'not_served',
		"max_relays = 1: relay_status() in $unserved shows not_served");
	is(sql($unserved, q{SELECT bool_and(last_error IS NOT NULL) FROM eventstore.relay_status()}), 't',
		"max_relays = 1: relay_status() in $unserved says why in last_error");
	note "relay_status() in $unserved with max_relays = 1: "
	  . sql($unserved, q{SELECT row_to_json(s)::text FROM eventstore.relay_status() s});
	my $pending = sql($unserved, 'SELECT count(*) FROM eventstore.outbox');
	ok($pending > 0, "max_relays = 1: $unserved keeps its events in its outbox ($pending)");
	# Slots full: sessions in the unserved database warn when they enqueue;
	# the launcher warns about no database then (it cannot know which have
	# the extension, see docs/relay.md, Several databases)
	my ($pret, $pout, $perr) = $node->psql($unserved,
		q{SELECT eventstore.publish('notices', 'k', '{}')});
	like($perr, qr/WARNING:  database "$unserved" is not served by the eventstore relay/,
		"max_relays = 1: publish() in $unserved warns that it is not served");
	my @warnings = grep { /\[$launcher\] WARNING/ }
	  split /\n/, slurp_file($node->logfile, $log_offset);
	is(join("\n", @warnings), '', 'max_relays = 1: the launcher logged no warning');

	# Dropping the served database frees the slot: the other one gets the relay
	# and its backlog is delivered; the launcher stays
	$drop_offset = -s $node->logfile;
	note "relay_status() in $served before the drop: "
	  . sql($served, q{SELECT row_to_json(s)::text FROM eventstore.relay_status() s});
	($ret, $out, $err) = $node->psql('postgres', "DROP DATABASE $served WITH (FORCE)");
	is($ret, 0, "max_relays = 1: DROP DATABASE $served WITH (FORCE) works");
	diag $err if $ret;
	ok(wait_relays($unserved), "max_relays = 1: with $served dropped, $unserved gets the relay");
	ok(drained($unserved), "max_relays = 1: ${unserved}'s backlog is delivered");
	check_topic('after the slot was freed', $unserved, "$unserved-orders");
	ok($launcher ne '' && launcher_pid() eq $launcher,
		'max_relays = 1: the launcher survived the drop');
	note "failed relay starts for the dropped $served: "
	  . (() = slurp_file($node->logfile, $drop_offset) =~ /does not exist/g);
	ok(!$node->log_contains(qr/terminated by signal|was terminated by exception/),
		'no process crashed');
}

$node->stop;
stop_mock($mock);
done_testing();
