\echo Use "ALTER EXTENSION eventstore UPDATE TO '0.5.0'" to load this file. \quit

-- 0.4.0 -> 0.5.0: RabbitMQ and NATS JetStream sinks (see CHANGELOG.md).

-- Which broker a route, an outbox row and a dead letter go to.
ALTER TABLE eventstore.routes
	ADD COLUMN sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'));
ALTER TABLE eventstore.outbox
	ADD COLUMN sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'));
ALTER TABLE eventstore.dead_letters
	ADD COLUMN sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'));

-- When a sink's next retry is due, without walking another sink's retries.
DROP INDEX eventstore.outbox_next_attempt_idx;
CREATE INDEX outbox_next_attempt_idx ON eventstore.outbox (sink, next_attempt_at)
	WHERE next_attempt_at IS NOT NULL;

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
-- one had: each grant is made again by its grantor (so that revoking a
-- grant option with CASCADE still takes back what was granted with it),
-- with its grant option, and the function's initial privileges (what
-- pg_dump compares with) are put back as a fresh install has them, so that
-- the grants are dumped as the user's own.
DO $$
DECLARE
	f record;
	grantees text[];
	grantors text[];
	options text[];
	done boolean[];
	initial pg_catalog.aclitem[];
	pass integer;
	i integer;
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
		-- The grants, the owner's first (NULL grantor: the owner)
		SELECT pg_catalog.array_agg(CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
				ELSE pg_catalog.quote_ident(ge.rolname) END ORDER BY a.grantor OPERATOR(pg_catalog.<>) p.proowner),
			pg_catalog.array_agg(CASE WHEN a.grantor OPERATOR(pg_catalog.<>) p.proowner THEN gr.rolname END
				ORDER BY a.grantor OPERATOR(pg_catalog.<>) p.proowner),
			pg_catalog.array_agg(CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END
				ORDER BY a.grantor OPERATOR(pg_catalog.<>) p.proowner)
		INTO grantees, grantors, options
		FROM pg_catalog.pg_proc p
		CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
		LEFT JOIN pg_catalog.pg_roles ge ON ge.oid OPERATOR(pg_catalog.=) a.grantee
		LEFT JOIN pg_catalog.pg_roles gr ON gr.oid OPERATOR(pg_catalog.=) a.grantor
		WHERE p.oid OPERATOR(pg_catalog.=) f.old::pg_catalog.regprocedure
		  AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
		  AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

		EXECUTE pg_catalog.format('DROP FUNCTION %s', f.old);
		EXECUTE f.def;
		EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.new);
		SELECT ip.initprivs INTO initial FROM pg_catalog.pg_init_privs ip
		WHERE ip.objoid OPERATOR(pg_catalog.=) f.new::pg_catalog.regprocedure
		  AND ip.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
		  AND ip.objsubid OPERATOR(pg_catalog.=) 0;

		-- A grant by another role than the owner is made as that role, once
		-- it has its grant option again (a chain of grants takes a pass per
		-- link)
		grantees := coalesce(grantees, '{}');
		done := pg_catalog.array_fill(false, ARRAY[pg_catalog.cardinality(grantees)]);
		FOR pass IN 1 .. pg_catalog.cardinality(grantees) LOOP
			FOR i IN 1 .. pg_catalog.cardinality(grantees) LOOP
				CONTINUE WHEN done[i];
				IF grantors[i] IS NULL THEN
					EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s',
						f.new, grantees[i], options[i]);
					done[i] := true;
				ELSIF pg_catalog.has_function_privilege(grantors[i], f.new, 'EXECUTE WITH GRANT OPTION') THEN
					EXECUTE pg_catalog.format('SET LOCAL ROLE %I', grantors[i]);
					EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s',
						f.new, grantees[i], options[i]);
					RESET ROLE;
					done[i] := true;
				END IF;
			END LOOP;
		END LOOP;

		-- The function's initial privileges are a fresh install's
		UPDATE pg_catalog.pg_init_privs ip SET initprivs = initial
		WHERE ip.objoid OPERATOR(pg_catalog.=) f.new::pg_catalog.regprocedure
		  AND ip.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
		  AND ip.objsubid OPERATOR(pg_catalog.=) 0;
	END LOOP;
END
$$;
