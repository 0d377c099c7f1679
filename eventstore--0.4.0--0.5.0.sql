\echo Use "ALTER EXTENSION eventstore UPDATE TO '0.5.0'" to load this file. \quit

-- 0.4.0 -> 0.5.0: RabbitMQ and NATS JetStream sinks (see CHANGELOG.md).

-- Which broker a route, an outbox row and a dead letter go to.
ALTER TABLE eventstore.routes
	ADD COLUMN sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'));
ALTER TABLE eventstore.outbox
	ADD COLUMN sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'));
ALTER TABLE eventstore.dead_letters
	ADD COLUMN sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'));

-- Per sink and topic.  The new column comes last, so the view is replaced
-- in place and keeps its grants.
CREATE OR REPLACE VIEW eventstore.outbox_lag AS
	SELECT topic, count(*) AS pending, pg_catalog.now() - min(created_at) AS oldest_age,
		   count(*) FILTER (WHERE attempts > 0) AS retrying, sink
	FROM eventstore.outbox
	GROUP BY sink, topic;

-- publish(), add_route() and replay() take a sink as their last argument,
-- and relay_status() returns a row per sink: each is made anew (an overload
-- would make a short call ambiguous), keeping the EXECUTE grants the old
-- one had (with their grant option).
DO $$
DECLARE
	f record;
	grants text[];
	g text;
BEGIN
	FOR f IN SELECT * FROM (VALUES
		('eventstore.publish(text,text,jsonb,jsonb)',
		 'eventstore.publish(text,text,jsonb,jsonb,text)',
		 $def$CREATE FUNCTION eventstore.publish(topic text, key text, payload jsonb, headers jsonb DEFAULT NULL,
	sink text DEFAULT 'kafka')
RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_publish'$def$),
		('eventstore.add_route(text,text)',
		 'eventstore.add_route(text,text,text)',
		 $def$CREATE FUNCTION eventstore.add_route(category text, topic text, sink text DEFAULT 'kafka')
RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_add_route'$def$),
		('eventstore.replay(text,text,bigint,bigint)',
		 'eventstore.replay(text,text,bigint,bigint,text)',
		 $def$CREATE FUNCTION eventstore.replay(topic text, category text DEFAULT NULL,
	from_position bigint DEFAULT 0, to_position bigint DEFAULT NULL, sink text DEFAULT 'kafka')
RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_replay'$def$),
		('eventstore.relay_status()',
		 'eventstore.relay_status()',
		 $def$CREATE FUNCTION eventstore.relay_status(
	OUT sink text, OUT pid integer, OUT state text, OUT pending bigint, OUT oldest_pending_age interval,
	OUT sent_total bigint, OUT retries_total bigint, OUT dead_letters_total bigint,
	OUT last_error text, OUT last_error_at timestamptz, OUT last_delivery_at timestamptz,
	OUT latency_p50_ms double precision, OUT latency_p99_ms double precision,
	OUT in_flight integer)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_relay_status'$def$)) AS v(old, new, def)
	LOOP
		SELECT pg_catalog.array_agg(pg_catalog.format('%s%s',
			CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
			ELSE pg_catalog.quote_ident(r.rolname) END,
			CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END))
		INTO grants
		FROM pg_catalog.pg_proc p
		CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
		LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
		WHERE p.oid OPERATOR(pg_catalog.=) f.old::pg_catalog.regprocedure
		  AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
		  AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

		EXECUTE pg_catalog.format('DROP FUNCTION %s', f.old);
		EXECUTE f.def;
		EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.new);
		FOREACH g IN ARRAY coalesce(grants, '{}') LOOP
			EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', f.new, g);
		END LOOP;
	END LOOP;
END
$$;
