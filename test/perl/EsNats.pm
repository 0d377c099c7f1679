# EsNats.pm
#	A NATS server with JetStream for the TAP tests: started as the user
#	running the tests (postgres, never root), on 127.0.0.1 and a free port,
#	its store in a temporary directory; every wait is bounded, and every
#	server still running is stopped when the test ends.  Streams are made and
#	read with test/tools/nats_tool (there is no `nats` CLI in Debian).
package EsNats;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(start_nats stop_nats restart_nats nats_tool nats_stream
  nats_dump nats_subject);

my $tools = "$ENV{TESTDIR}/test/tools";

# Servers started and not stopped, stopped at END
my %running;

# Start nats-server -js; options: max_payload (bytes).  Returns a handle
# whose {url} is nats://127.0.0.1:PORT.
sub start_nats
{
	my (%opts) = @_;
	die "nats-server must not run as root" if $> == 0;
	my $dir = PostgreSQL::Test::Utils::tempdir('nats');
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $nats = {
		dir => $dir,
		port => $port,
		url => "nats://127.0.0.1:$port",
		conf => "$dir/nats.conf",
		log => "$dir/nats.log",
	};
	open my $fh, '>', $nats->{conf} or die "could not write $nats->{conf}: $!";
	print $fh "listen: 127.0.0.1:$port\n";
	print $fh "http: 0\n";
	print $fh "jetstream {\n  store_dir: \"$dir/js\"\n}\n";
	print $fh "max_payload: $opts{max_payload}\n" if $opts{max_payload};
	close $fh;
	_run($nats);
	return $nats;
}

# Start the server process of $nats and wait (bounded) until JetStream answers
sub _run
{
	my ($nats) = @_;
	$nats->{h} = IPC::Run::start([ 'nats-server', '-c', $nats->{conf} ],
		'<', \undef, '>>', $nats->{log}, '2>>', $nats->{log});
	$running{$nats} = $nats;
	my $wait_ms = 1000 * $PostgreSQL::Test::Utils::timeout_default;
	my ($out, $err);
	IPC::Run::run([ "$tools/nats_tool", $nats->{url}, 'wait', $wait_ms ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default + 10))
	  or die "nats-server did not start: $err\n" . slurp_file($nats->{log});
	return;
}

# Stop the server (SIGTERM, SIGKILL after 10 s); its store stays for a restart
sub stop_nats
{
	my ($nats) = @_;
	return unless $nats->{h};
	$nats->{h}->kill_kill(grace => 10);
	delete $nats->{h};
	delete $running{$nats};
	return;
}

# Start a stopped server again, same port, same store
sub restart_nats
{
	my ($nats) = @_;
	_run($nats);
	return;
}

# Run test/tools/nats_tool against $nats; its stdout, dies on failure
sub nats_tool
{
	my ($nats, @args) = @_;
	my ($out, $err);
	IPC::Run::run([ "$tools/nats_tool", $nats->{url}, @args ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default))
	  or die "nats_tool @args failed: $err";
	return $out;
}

# Create stream $name taking "$topic" and "$topic.>" for each topic;
# options: duplicates (ms), max_msg_size (bytes)
sub nats_stream
{
	my ($nats, $name, $topics, %opts) = @_;
	nats_tool($nats, 'stream', $name, $opts{duplicates} // 0,
		$opts{max_msg_size} // -1, map { ($_, "$_.>") } @$topics);
	return;
}

# Every message of stream $name in stream order, as hashes with seq,
# subject, headers (a hash) and data
sub nats_dump
{
	my ($nats, $name) = @_;
	return [ map { decode_json($_) } split /\n/, nats_tool($nats, 'dump', $name) ];
}

# The subject a message of $topic and $key goes to (see docs/relay.md)
sub nats_subject
{
	my ($topic, $key) = @_;
	return $topic unless defined $key;
	return "$topic.$key" if $key =~ /^[A-Za-z0-9_-]+$/;
	require MIME::Base64;
	my $enc = MIME::Base64::encode_base64url($key);
	return "$topic.~$enc";
}

END
{
	# Keep the test's exit code: waiting for a process sets $?
	local $?;
	for my $nats (values %running)
	{
		eval { $nats->{h}->kill_kill(grace => 5) if $nats->{h}; };
	}
}

1;
