# Backup and upgrades.  A pg_dump of a database with the extension restores
# into one where appends, read_all positions, outbox ids and subscriptions'
# checkpoints go on from where they were, with no manual setval.  ALTER
# EXTENSION eventstore UPDATE from 0.1.0, 0.2.0, 0.3.0, 0.4.0 and 0.5.0 keeps data,
# positions, routes and outbox rows, and leaves the same objects as a fresh
# install of the current version.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->start;

# Some history: two streams, a routed category, a published message
sub write_history
{
	my ($db) = @_;
	$node->safe_psql($db, q{
		SELECT eventstore.add_route('order', 'orders');
		SELECT eventstore.append('order-1', 0, '[{"type": "Placed", "data": {}}, {"type": "Paid", "data": {}}]');
		SELECT eventstore.append_event('cart-1', NULL, 'Added', '{"sku": "tea"}');
		SELECT eventstore.publish('mail', 'k-1', '{"to": "x"}');
	});
	return;
}

# 1. Dump and restore
$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', 'CREATE EXTENSION eventstore');
write_history('src');
# A subscription that consumed the first two events
$node->safe_psql('src', q{
	SELECT eventstore.create_subscription('orders', 'order');
	BEGIN;
	SELECT count(*) FROM eventstore.poll('orders', 1);
	SELECT eventstore.ack('orders', 1);
	COMMIT;
});
my ($last_pos, $last_outbox) = split /\|/, $node->safe_psql('src',
	'SELECT (SELECT max(global_position) FROM eventstore.events), (SELECT max(id) FROM eventstore.outbox)');

my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('dst'), $dump ], 'pg_restore');

is($node->safe_psql('dst', 'SELECT count(*) FROM eventstore.events'), '3', 'events restored');
is($node->safe_psql('dst', q{SELECT eventstore.append_event('order-1', 2, 'Shipped', '{}')}),
	'3', 'an append to a restored stream goes on at its version');
is($node->safe_psql('dst', q{SELECT eventstore.append_event('order-2', 0, 'Placed', '{}')}),
	'1', 'an append to a new stream works without setval');
is($node->safe_psql('dst', "SELECT string_agg(stream_id || ':' || stream_version, ',' ORDER BY global_position)"
	  . " FROM eventstore.read_all($last_pos)"),
	'order-1:3,order-2:1', 'read_all from the last restored position returns exactly the new events');
is($node->safe_psql('dst', "SELECT min(global_position) > $last_pos FROM eventstore.events"
	  . " WHERE stream_id = 'order-2' OR stream_version = 3"),
	't', 'new positions follow the restored ones');
is($node->safe_psql('dst', "SELECT eventstore.publish('mail', 'k-2', '{}') > $last_outbox"),
	't', 'new outbox ids follow the restored ones');
is($node->safe_psql('dst', "SELECT string_agg(message_key, ',' ORDER BY id) FROM eventstore.outbox"),
	'order-1,order-1,k-1,order-1,order-2,k-2', 'routed events and messages restored and enqueued in order');
is($node->safe_psql('dst', q{SELECT string_agg(stream_id || ':' || stream_version, ',' ORDER BY global_position)
	FROM eventstore.poll('orders', 10)}), 'order-1:2,order-1:3,order-2:1',
	'a restored subscription goes on after its checkpoint');

# 2. Update from 0.1.0, 0.2.0, 0.3.0, 0.4.0 and 0.5.0.  The history is written
# with the new library on the old schema (as between an install and ALTER
# EXTENSION UPDATE): the old signatures of publish() and add_route() work.
$node->safe_psql('postgres', 'CREATE ROLE status_reader');
for my $from ('0.1.0', '0.2.0', '0.3.0', '0.4.0', '0.5.0')
{
	my $db = 'old_' . ($from =~ tr/./_/r);
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{CREATE EXTENSION eventstore VERSION '$from'});
	write_history($db);
	my $publish = $from eq '0.5.0' ? 'publish(text, text, jsonb, jsonb, text)' : 'publish(text, text, jsonb, jsonb)';
	$node->safe_psql($db, 'GRANT USAGE ON SCHEMA eventstore TO status_reader;'
		  . ' GRANT EXECUTE ON FUNCTION eventstore.relay_status() TO status_reader;'
		  . " GRANT EXECUTE ON FUNCTION eventstore.$publish TO status_reader WITH GRANT OPTION");
	$node->safe_psql($db, 'ALTER EXTENSION eventstore UPDATE');
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'eventstore'}),
		'0.6.0', "updated from $from to 0.6.0");
	is($node->safe_psql($db, q{SET ROLE status_reader; SELECT sink || ' ' || (in_flight >= 0) FROM eventstore.relay_status()}),
		'kafka true', "$from: relay_status() has sink and in_flight, and its grant was kept");
	is($node->safe_psql($db, q{SELECT has_function_privilege('status_reader',
		'eventstore.publish(text, text, jsonb, jsonb, text)', 'EXECUTE WITH GRANT OPTION')}),
		't', "$from: publish() with its sink argument kept the grant (and its grant option)");
	$node->safe_psql($db, 'REVOKE EXECUTE ON FUNCTION eventstore.relay_status() FROM status_reader;'
		  . ' REVOKE EXECUTE ON FUNCTION eventstore.publish(text, text, jsonb, jsonb, text) FROM status_reader CASCADE;'
		  . ' REVOKE USAGE ON SCHEMA eventstore FROM status_reader');
	is($node->safe_psql($db, q{SELECT string_agg(DISTINCT sink, ',') FROM (
		SELECT sink FROM eventstore.routes UNION ALL SELECT sink FROM eventstore.outbox) s}),
		'kafka', "$from: routes and outbox rows go to Kafka after the update");
	is($node->safe_psql($db, q{SELECT string_agg(stream_id || ':' || stream_version, ',' ORDER BY global_position)
		FROM eventstore.read_all()}), 'order-1:1,order-1:2,cart-1:1', "$from: events kept, in position order");
	is($node->safe_psql($db, q{SELECT eventstore.append_event('order-1', 2, 'Shipped', '{}')}),
		'3', "$from: appends go on after the update");
	is($node->safe_psql($db, q{SELECT string_agg(topic || '/' || message_key, ',' ORDER BY id) FROM eventstore.outbox}),
		'orders/order-1,orders/order-1,mail/k-1,orders/order-1', "$from: routes and outbox rows carry on");
	is($node->safe_psql($db, q{SELECT eventstore.stream_version('order-1')}), '3', "$from: stream head kept");
	$node->safe_psql($db, q{SELECT eventstore.create_subscription('all')});
	is($node->safe_psql($db, q{
		SELECT string_agg(stream_id || ':' || stream_version, ',' ORDER BY global_position)
		FROM eventstore.poll('all', 10)}), 'order-1:1,order-1:2,cart-1:1,order-1:3',
		"$from: subscriptions work after the update");
}

# The updated schema is the fresh install's: every object, definition,
# privilege and dump mark
my $catalog = q{
	WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'eventstore'),
	members AS (
		SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS obj, d.classid, d.objid
		FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass
		  AND d.refobjid = ext.oid AND d.deptype = 'e')
	SELECT line FROM (
		SELECT 'member ' || obj AS line FROM members
		UNION ALL
		SELECT 'function ' || p.oid::regprocedure || ' ' || md5(pg_get_functiondef(p.oid))
			|| ' ' || p.provolatile::text || p.proisstrict::text
			|| ' acl ' || coalesce(p.proacl::text, '-')
		FROM pg_proc p WHERE p.pronamespace = 'eventstore'::regnamespace AND p.prokind <> 'a'
		UNION ALL
		SELECT 'column ' || c.oid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
			|| ' ' || a.attnotnull || ' ' || a.attidentity::text || ' ' || a.attgenerated::text
			|| ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
		FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
		WHERE c.relnamespace = 'eventstore'::regnamespace
		UNION ALL
		SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' ' || coalesce(c.reloptions::text, '-')
			|| ' acl ' || coalesce(c.relacl::text, '-')
		FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace
		UNION ALL
		SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
		FROM pg_constraint WHERE connamespace = 'eventstore'::regnamespace
		UNION ALL
		SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index
		WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'eventstore'::regnamespace)
		UNION ALL
		SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'eventstore'::regnamespace
		UNION ALL
		SELECT 'view ' || c.oid::regclass || ' ' || md5(pg_get_viewdef(c.oid))
		FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind = 'v'
		UNION ALL
		SELECT 'dumped ' || cfg::regclass || ' where ' || cond
		FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(cfg, cond)
	) l ORDER BY line};
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION eventstore');
my $fresh = $node->safe_psql('fresh', $catalog);
cmp_ok(scalar(split /\n/, $fresh), '>', 50, 'the catalog listing covers the schema');
like($fresh, qr/relation eventstore\.subscription_partitions/, 'the listing covers the subscriptions');
is($node->safe_psql("old_$_", $catalog), $fresh, "updated from $_: the schema equals a fresh install of 0.6.0")
  for ('0_1_0', '0_2_0', '0_3_0', '0_4_0', '0_5_0');
like($fresh, qr/relation eventstore\.events_published_horizon S/, 'the published horizon is a sequence');
unlike($fresh, qr/dumped eventstore\.events_published_horizon/, 'and is not dumped');
like($fresh, qr/dumped eventstore\.events_global_position_seq/, 'the position sequence is dumped');

$node->stop;
done_testing();
