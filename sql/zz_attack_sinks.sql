-- Attack on the 0.5.0 sinks work (attack12): what ALTER EXTENSION UPDATE
-- does to grants, and what one sink's backlog costs another sink's reads.
SELECT current_database() AS orig_db \gset
SET client_min_messages = warning;
DROP DATABASE IF EXISTS es_attack12_upgrade;
DROP ROLE IF EXISTS es_a12_writer;
DROP ROLE IF EXISTS es_a12_lead;
RESET client_min_messages;
CREATE ROLE es_a12_writer;
CREATE ROLE es_a12_lead;
CREATE DATABASE es_attack12_upgrade;
\c es_attack12_upgrade
CREATE EXTENSION eventstore VERSION '0.4.0';
GRANT USAGE ON SCHEMA eventstore TO es_a12_writer, es_a12_lead;
GRANT EXECUTE ON FUNCTION eventstore.publish(text, text, jsonb, jsonb) TO es_a12_writer;
GRANT EXECUTE ON FUNCTION eventstore.replay(text, text, bigint, bigint) TO es_a12_lead WITH GRANT OPTION;
SET ROLE es_a12_lead;
GRANT EXECUTE ON FUNCTION eventstore.replay(text, text, bigint, bigint) TO es_a12_writer;
RESET ROLE;
ALTER EXTENSION eventstore UPDATE TO '0.5.0';

-- 1. A grant carried over by the update must stay the user's grant, not
-- become one of the extension's initial privileges (pg_init_privs): pg_dump
-- dumps only what differs from those, so a dump restored into a fresh
-- CREATE EXTENSION would silently lose the application role's EXECUTE.
SELECT has_function_privilege('es_a12_writer',
	'eventstore.publish(text,text,jsonb,jsonb,text)', 'EXECUTE') AS writer_can_publish;
SELECT p.oid::regprocedure AS function, a.grantee::regrole AS in_init_privs
FROM pg_proc p
JOIN pg_init_privs ip ON ip.objoid = p.oid AND ip.classoid = 'pg_proc'::regclass
CROSS JOIN LATERAL aclexplode(ip.initprivs) a
WHERE p.pronamespace = 'eventstore'::regnamespace
  AND a.grantee <> p.proowner
ORDER BY 1, 2;
-- 2. A grant made by a role with the grant option keeps its grantor: revoking
-- that role's grant option with CASCADE takes back what it granted, as it
-- did before the update.
SELECT a.grantor::regrole AS grantor, a.grantee::regrole AS grantee, a.is_grantable
FROM aclexplode((SELECT proacl FROM pg_proc
				 WHERE oid = 'eventstore.replay(text,text,bigint,bigint,text)'::regprocedure)) a
WHERE a.grantee IN ('es_a12_writer'::regrole, 'es_a12_lead'::regrole)
ORDER BY 2;
REVOKE EXECUTE ON FUNCTION eventstore.replay(text, text, bigint, bigint, text) FROM es_a12_lead CASCADE;
SELECT has_function_privilege('es_a12_writer',
	'eventstore.replay(text,text,bigint,bigint,text)', 'EXECUTE') AS writer_still_can_replay;

\c :orig_db
DROP DATABASE es_attack12_upgrade;
DROP ROLE es_a12_writer;
DROP ROLE es_a12_lead;

-- 3. One sink's backlog must not make another sink's retry lookups walk it.
-- NATS is down: 5000 of its messages wait for a retry.  Kafka has nothing
-- waiting.  The relay's retry lookup for Kafka (relay_outbox.c, after every
-- read that was not a full batch) should not visit the NATS rows.  (A read
-- from the outbox's start, after a revisit, does step over them: see
-- docs/relay.md, Sinks.)  Counted with EXPLAIN ANALYZE: rows an index scan
-- fetched and a filter then threw away.
CREATE FUNCTION a12_rows_removed(q text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	plan json;
	n bigint := 0;
	m text;
BEGIN
	EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF, COSTS OFF) ' || q INTO plan;
	FOR m IN SELECT (regexp_matches(plan::text, '"Rows Removed by Filter": ([0-9]+)', 'g'))[1] LOOP
		n := n + m::bigint;
	END LOOP;
	RETURN n;
END
$$;
DELETE FROM eventstore.outbox;
INSERT INTO eventstore.outbox (topic, message_key, payload, sink, attempts, next_attempt_at)
SELECT 'nats-subject', 'k' || (i % 100), '{}', 'nats', 1, now() + interval '1 hour'
FROM generate_series(1, 5000) i;
ANALYZE eventstore.outbox;
-- the plans the relay pins (EsPinPlans)
SET enable_seqscan = off;
SET enable_sort = off;
SET enable_bitmapscan = off;
-- when Kafka's next retry is due, and whether it has any (EsRelayFetch's due_plan)
SELECT a12_rows_removed($$SELECT (SELECT ceil(date_part('epoch', min(next_attempt_at) - now()) * 1000)::int8
	FROM eventstore.outbox WHERE next_attempt_at > now() AND sink = 'kafka'),
	EXISTS (SELECT FROM eventstore.outbox WHERE next_attempt_at IS NOT NULL AND sink = 'kafka')$$)
	< 100 AS kafka_retry_lookup_skips_nats_backlog;
RESET enable_seqscan;
RESET enable_sort;
RESET enable_bitmapscan;
DELETE FROM eventstore.outbox;
DROP FUNCTION a12_rows_removed(text);
