\echo Use "ALTER EXTENSION eventstore UPDATE TO '0.3.0'" to load this file. \quit

-- 0.2.0 -> 0.3.0: subscriptions (see CHANGELOG.md).

-- read_all with a category reads the category's index whatever the positions.
CREATE OR REPLACE FUNCTION eventstore.read_all(from_position bigint DEFAULT 0,
	max_count integer DEFAULT 1000, category text DEFAULT NULL)
RETURNS SETOF eventstore.events
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	horizon bigint;
BEGIN
	IF max_count < 0 THEN
		RAISE EXCEPTION 'max_count must not be negative: %', max_count
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	-- The horizon is taken before the query below takes its snapshot, so
	-- every transaction that held it back has ended by then (see the docs).
	horizon := eventstore.read_horizon();
	IF read_all.category IS NULL THEN
		RETURN QUERY
			SELECT e.* FROM eventstore.events e
			WHERE e.global_position > coalesce(from_position, 0)
			  AND e.global_position < horizon
			ORDER BY e.global_position
			LIMIT max_count;
	ELSE
		-- A range of the (category, global_position) index, in its order:
		-- with LIMIT, the planner would otherwise take the category's events
		-- for spread evenly and walk the primary key, reading the whole
		-- table first when the category was appended late.
		RETURN QUERY
			SELECT e.* FROM eventstore.events e
			WHERE (e.category, e.global_position) > (read_all.category, coalesce(from_position, 0))
			  AND (e.category, e.global_position) < (read_all.category, horizon)
			ORDER BY e.category, e.global_position
			LIMIT max_count;
	END IF;
END
$$;

-- Subscriptions: durable, partitioned consumers of the store (see
-- docs/subscriptions.md).  A subscription selects events by category, event
-- type and a jsonpath filter; each of its partitions has a checkpoint, the
-- position at or below which every one of its events is done.
CREATE TABLE eventstore.subscriptions (
	id integer GENERATED ALWAYS AS IDENTITY UNIQUE,
	name text PRIMARY KEY,
	category text,
	event_types text[],
	filter jsonpath,
	partitions integer NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
	on_failure text NOT NULL CHECK (on_failure IN ('skip', 'park')),
	start_position bigint NOT NULL CHECK (start_position >= 0),
	created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per partition: its checkpoint, and the event waiting for a retry.
CREATE TABLE eventstore.subscription_partitions (
	subscription text NOT NULL,
	partition integer NOT NULL,
	checkpoint bigint NOT NULL,
	acked_at timestamptz,
	failed_position bigint,
	attempts integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz,
	first_failed_at timestamptz,
	last_error text,
	PRIMARY KEY (subscription, partition)
);

-- Events a subscription gave up on.  A requeued one (requeued_at set) is
-- offered again by poll and leaves the table when it is acknowledged.
CREATE TABLE eventstore.subscription_dead_letters (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	subscription text NOT NULL,
	partition integer NOT NULL,
	event_position bigint NOT NULL,
	stream_id text NOT NULL,
	attempts integer NOT NULL,
	last_error text NOT NULL,
	first_failed_at timestamptz NOT NULL,
	last_failed_at timestamptz NOT NULL,
	requeued_at timestamptz,
	delivered_at timestamptz,
	UNIQUE (subscription, event_position)
);
CREATE INDEX subscription_dead_letters_partition_idx
	ON eventstore.subscription_dead_letters (subscription, partition, event_position);

SELECT pg_catalog.pg_extension_config_dump('eventstore.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_partitions', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscriptions_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_dead_letters_id_seq', '');

-- The partition (0 .. partitions - 1) a stream's events belong to.
CREATE FUNCTION eventstore.stream_partition(stream_id text, partitions integer)
RETURNS integer
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'eventstore_stream_partition';

-- Whether a stream is in that partition: the test poll's scan applies (a
-- boolean function, so that the planner does not take it for a rare value
-- and scan the whole table instead of walking positions in order).
CREATE FUNCTION eventstore.in_partition(stream_id text, partitions integer, partition integer)
RETURNS boolean
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'eventstore_in_partition';

CREATE FUNCTION eventstore.create_subscription(name text, category text DEFAULT NULL,
	event_types text[] DEFAULT NULL, filter jsonpath DEFAULT NULL,
	start_position bigint DEFAULT 0, partitions integer DEFAULT 1,
	on_failure text DEFAULT 'skip')
RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_create_subscription';

CREATE FUNCTION eventstore.drop_subscription(name text) RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_drop_subscription';

CREATE FUNCTION eventstore.poll(subscription text, max_count integer DEFAULT 100,
	wait interval DEFAULT '0', partition integer DEFAULT NULL)
RETURNS SETOF eventstore.events
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_poll';

CREATE FUNCTION eventstore.ack(subscription text, "position" bigint,
	partition integer DEFAULT NULL) RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_ack';

CREATE FUNCTION eventstore.nack(subscription text, "position" bigint, error text,
	partition integer DEFAULT NULL) RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_nack';

CREATE FUNCTION eventstore.requeue_subscription_dead_letters(subscription text,
	ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_requeue_subscription_dead_letters';

CREATE FUNCTION eventstore.discard_subscription_dead_letters(subscription text,
	ids bigint[]) RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_discard_subscription_dead_letters';

-- Per subscription and partition: how far behind it is and who consumes it.
-- 'behind' counts the matching events after the checkpoint (its cost grows
-- with the backlog); 'pid' is the backend whose transaction holds the lease.
-- It reads the events with its reader's rights (security_invoker), so that
-- a filter cannot be used to learn what events hold without SELECT on them.
CREATE VIEW eventstore.subscription_lag WITH (security_invoker = true) AS
	SELECT s.name AS subscription, p.partition, p.checkpoint, h.head,
		   b.behind,
		   pg_catalog.now() - b.oldest AS oldest_age,
		   l.pid, p.acked_at, p.attempts
	FROM eventstore.subscriptions s
	JOIN eventstore.subscription_partitions p ON p.subscription = s.name
	CROSS JOIN (SELECT coalesce(max(global_position), 0) AS head
				FROM eventstore.events) h
	CROSS JOIN LATERAL (
		SELECT count(*) AS behind, min(e.recorded_at) AS oldest
		FROM eventstore.events e
		WHERE e.global_position > p.checkpoint
		  AND (s.category IS NULL OR e.category = s.category)
		  AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
		  AND eventstore.stream_partition(e.stream_id, s.partitions) = p.partition
		  AND (s.filter IS NULL OR jsonb_path_match(to_jsonb(e.*), s.filter, '{}', true)
			   IS NOT FALSE)) b
	LEFT JOIN pg_catalog.pg_locks l
		ON l.locktype = 'advisory' AND l.objsubid = 17747 AND l.granted
		   AND l.database = (SELECT oid FROM pg_catalog.pg_database
							 WHERE datname = pg_catalog.current_database())
		   AND l.classid::integer = s.id AND l.objid::integer = p.partition;

REVOKE ALL ON FUNCTION
	eventstore.stream_partition(text, integer),
	eventstore.in_partition(text, integer, integer),
	eventstore.create_subscription(text, text, text[], jsonpath, bigint, integer, text),
	eventstore.drop_subscription(text),
	eventstore.poll(text, integer, interval, integer),
	eventstore.ack(text, bigint, integer),
	eventstore.nack(text, bigint, text, integer),
	eventstore.requeue_subscription_dead_letters(text, bigint[]),
	eventstore.discard_subscription_dead_letters(text, bigint[])
	FROM PUBLIC;
