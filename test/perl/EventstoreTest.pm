# EventstoreTest.pm
#	What the TAP tests share: a mock Kafka cluster (test/tools/mock_kafka),
#	real RabbitMQ and NATS servers (test/tools/brokers.sh), a PostgreSQL
#	node with the relay preloaded, and a Kafka consumer (kcat) that returns
#	what really arrived on a topic.
package EventstoreTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(start_mock stop_mock mock_command relay_node consume wait_drained
  relay_pid first_seen_order last_seen_order start_broker stop_broker);

my $tools = "$ENV{TESTDIR}/test/tools";

# Start the mock cluster; returns a handle whose {bootstrap} is the broker list.
sub start_mock
{
	my (%opts) = @_;
	my $mock = { in => '', out => '' };
	my @cmd = ("$tools/mock_kafka", '--timeout', $opts{timeout} // 600);
	push @cmd, '--brokers', $opts{brokers} if $opts{brokers};
	$mock->{timer} = IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default);
	$mock->{h} = IPC::Run::start(\@cmd, '<', \$mock->{in}, '>', \$mock->{out},
		'2>', \my $err, $mock->{timer});
	$mock->{h}->pump until $mock->{out} =~ /^bootstrap=(\S+)\n/m;
	$mock->{bootstrap} = $1;
	$mock->{out} = '';
	return $mock;
}

# Give the next exchange with the mock cluster a full timeout: the timer
# runs from start_mock, and a test may run longer than one timeout.
sub mock_timer_restart
{
	my ($mock) = @_;
	$mock->{timer}->reset;
	$mock->{timer}->start($PostgreSQL::Test::Utils::timeout_default);
	return;
}

# Stop the mock cluster.
sub stop_mock
{
	my ($mock) = @_;
	$mock->{in} .= "quit\n";
	mock_timer_restart($mock);
	$mock->{h}->finish;
	return;
}

# Send one command to the mock cluster and return its answer line.
sub mock_command
{
	my ($mock, $command) = @_;
	$mock->{in} .= "$command\n";
	mock_timer_restart($mock);
	$mock->{h}->pump until $mock->{out} =~ /\n/;
	my ($line) = $mock->{out} =~ /^(.*)\n/;
	$mock->{out} = '';
	die "mock_kafka: $command: $line" unless $line eq 'ok';
	return $line;
}

# Brokers started by start_broker and not stopped yet: stopped at exit
my %running_brokers;

# Start a real RabbitMQ or NATS server ($kind: 'rabbitmq' or 'nats') with
# its state in $dir (a restart with the same $dir keeps its port and data);
# returns its port.  %opts: max_payload (NATS).
sub start_broker
{
	my ($kind, $dir, %opts) = @_;
	my @cmd = ("$tools/brokers.sh", "$kind-start", $dir);
	push @cmd, $opts{max_payload} if $kind eq 'nats' && $opts{max_payload};
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default))
	  or die "could not start $kind in $dir: $err";
	chomp $out;
	$running_brokers{$dir} = $kind;
	return $out;
}

# Stop a broker started by start_broker (its data stays in $dir).
sub stop_broker
{
	my ($kind, $dir) = @_;
	IPC::Run::run([ "$tools/brokers.sh", "$kind-stop", $dir ],
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	delete $running_brokers{$dir};
	return;
}

END
{
	my $status = $?;
	stop_broker($running_brokers{$_}, $_) for keys %running_brokers;
	$? = $status;
}

# A started node with eventstore preloaded, relaying to $bootstrap (may be
# empty), and the extension created in database postgres.
sub relay_node
{
	my ($name, $bootstrap, $extra) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq(
shared_preload_libraries = 'eventstore'
eventstore.database = 'postgres'
eventstore.kafka_brokers = '$bootstrap'
eventstore.retry_backoff_initial = '100ms'
eventstore.retry_backoff_max = '1s'
) . ($extra // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION eventstore');
	return $node;
}

# The relay worker's pid, or '' when none runs.
sub relay_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstore relay'");
}

# Wait until the outbox is empty (every message acknowledged or dead).
sub wait_drained
{
	my ($node) = @_;
	return $node->poll_query_until('postgres',
		'SELECT count(*) = 0 FROM eventstore.outbox');
}

# Every message on $topic, in partition and offset order, as hashes with
# key, payload, partition, offset and headers (a hash).
sub consume
{
	my ($bootstrap, $topic) = @_;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-C', '-b', $bootstrap, '-t', $topic,
			'-o', 'beginning', '-e', '-q', '-J' ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default))
	  or die "kcat failed: $err";
	my @msgs;
	for my $line (split /\n/, $out)
	{
		my $m = decode_json($line);
		my %h = @{ $m->{headers} // [] };
		$m->{headers} = \%h;
		push @msgs, $m;
	}
	return [ sort { $a->{partition} <=> $b->{partition}
		  || $a->{offset} <=> $b->{offset} } @msgs ];
}

# For each key, the values of $field in the order their first copy arrived:
# duplicates (at-least-once) are dropped, reordering stays visible.
sub first_seen_order
{
	my ($msgs, $field) = @_;
	my (%order, %seen);
	for my $m (@$msgs)
	{
		my $v = $field->($m);
		next if $seen{ $m->{key} }{$v}++;
		push @{ $order{ $m->{key} } }, $v;
	}
	return \%order;
}

# For each key, the values of $field in the order their last copy arrived:
# an early copy that was sent again later counts where it arrived last.
sub last_seen_order
{
	my ($msgs, $field) = @_;
	my (%order, %seen);
	for my $m (reverse @$msgs)
	{
		my $v = $field->($m);
		next if $seen{ $m->{key} }{$v}++;
		unshift @{ $order{ $m->{key} } }, $v;
	}
	return \%order;
}

1;
