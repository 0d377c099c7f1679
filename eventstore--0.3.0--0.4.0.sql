\echo Use "ALTER EXTENSION eventstore UPDATE TO '0.4.0'" to load this file. \quit

-- 0.3.0 -> 0.4.0: the pipelined relay (see CHANGELOG.md).

-- relay_status() shows the messages in flight: a new OUT column, so the
-- function is made anew, keeping the EXECUTE grants it had (with their
-- grant option).
DO $$
DECLARE
	grants text[];
	g text;
BEGIN
	SELECT pg_catalog.array_agg(pg_catalog.format('GRANT EXECUTE ON FUNCTION eventstore.relay_status() TO %s%s',
		CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
		ELSE pg_catalog.quote_ident(r.rolname) END,
		CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END))
	INTO grants
	FROM pg_catalog.pg_proc p
	CROSS JOIN LATERAL pg_catalog.aclexplode(p.proacl) a
	LEFT JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
	WHERE p.oid OPERATOR(pg_catalog.=) 'eventstore.relay_status()'::pg_catalog.regprocedure
	  AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
	  AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;

	DROP FUNCTION eventstore.relay_status();
	CREATE FUNCTION eventstore.relay_status(
		OUT pid integer, OUT state text, OUT pending bigint, OUT oldest_pending_age interval,
		OUT sent_total bigint, OUT retries_total bigint, OUT dead_letters_total bigint,
		OUT last_error text, OUT last_error_at timestamptz, OUT last_delivery_at timestamptz,
		OUT latency_p50_ms double precision, OUT latency_p99_ms double precision,
		OUT in_flight integer)
	RETURNS record
	LANGUAGE C STRICT VOLATILE
	AS 'MODULE_PATHNAME', 'eventstore_relay_status';
	REVOKE ALL ON FUNCTION eventstore.relay_status() FROM PUBLIC;
	FOREACH g IN ARRAY coalesce(grants, '{}') LOOP
		EXECUTE g;
	END LOOP;
END
$$;
