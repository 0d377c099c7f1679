\echo Use "CREATE EXTENSION eventstore" to load this file. \quit

-- The head of each stream: one row per stream, locked by appenders so that
-- appends to one stream serialise while appends to different streams never
-- wait for each other.
CREATE TABLE eventstore.streams (
	stream_id text PRIMARY KEY,
	version bigint NOT NULL CHECK (version >= 0)
);

-- Every event ever appended.  Rows are immutable (see the trigger below).
CREATE TABLE eventstore.events (
	global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	stream_id text NOT NULL,
	stream_version bigint NOT NULL CHECK (stream_version > 0),
	event_id uuid NOT NULL UNIQUE,
	event_type text NOT NULL CHECK (event_type <> ''),
	data jsonb NOT NULL,
	metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
	recorded_at timestamptz NOT NULL DEFAULT now(),
	category text NOT NULL GENERATED ALWAYS AS (split_part(stream_id, '-', 1)) STORED,
	UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_category_position_idx
	ON eventstore.events (category, global_position);

-- Snapshots of folded aggregate state.  A snapshot belongs to one revision of
-- its category's reducer; load_aggregate ignores snapshots of other revisions.
CREATE TABLE eventstore.snapshots (
	stream_id text NOT NULL,
	stream_version bigint NOT NULL CHECK (stream_version > 0),
	state jsonb NOT NULL,
	revision integer NOT NULL DEFAULT 0,
	created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (stream_id, revision, stream_version)
);

-- The aggregate registry: one reducer per category.
CREATE TABLE eventstore.aggregates (
	category text PRIMARY KEY,
	reducer regprocedure NOT NULL,
	snapshot_every integer NOT NULL CHECK (snapshot_every > 0),
	revision integer NOT NULL CHECK (revision > 0),
	registered_at timestamptz NOT NULL DEFAULT now()
);

SELECT pg_catalog.pg_extension_config_dump('eventstore.streams', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.events', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.snapshots', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.aggregates', '');

-- Events are immutable: refuse UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION eventstore.refuse_event_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
	RAISE EXCEPTION 'events are immutable: % on eventstore.events is not allowed', TG_OP
		USING ERRCODE = 'restrict_violation',
			  HINT = 'Append a compensating event instead.';
END
$$;
CREATE TRIGGER events_immutable
	BEFORE UPDATE OR DELETE ON eventstore.events
	FOR EACH STATEMENT EXECUTE FUNCTION eventstore.refuse_event_change();
CREATE TRIGGER events_no_truncate
	BEFORE TRUNCATE ON eventstore.events
	FOR EACH STATEMENT EXECUTE FUNCTION eventstore.refuse_event_change();

CREATE FUNCTION eventstore.append(stream_id text, expected_version bigint, events jsonb)
RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_append';

CREATE FUNCTION eventstore.append_event(stream_id text, expected_version bigint,
	event_type text, data jsonb, metadata jsonb DEFAULT NULL, event_id uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_append_event';

CREATE FUNCTION eventstore.stream_version(stream_id text) RETURNS bigint
LANGUAGE sql STABLE STRICT
RETURN coalesce((SELECT s.version FROM eventstore.streams s
				 WHERE s.stream_id OPERATOR(pg_catalog.=) stream_version.stream_id), 0);

CREATE FUNCTION eventstore.read_stream(stream_id text, from_version bigint DEFAULT 1,
	max_count integer DEFAULT NULL)
RETURNS SETOF eventstore.events
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF stream_id IS NULL THEN
		RAISE EXCEPTION 'stream_id must not be null' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF max_count < 0 THEN
		RAISE EXCEPTION 'max_count must not be negative: %', max_count
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	RETURN QUERY
		SELECT e.* FROM eventstore.events e
		WHERE e.stream_id = read_stream.stream_id
		  AND e.stream_version >= coalesce(from_version, 1)
		ORDER BY e.stream_version
		LIMIT max_count;
END
$$;

-- The position below which every event that will ever commit is already
-- visible (see docs/reference.md, "read_all and the horizon").
CREATE FUNCTION eventstore.read_horizon() RETURNS bigint
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_read_horizon';

-- The horizon the primary's relay publishes for hot standbys, where it is
-- read_all's and poll's horizon (docs/reference.md, "Reads on a hot
-- standby").  Not dumped: a restored database's relay publishes its own.
CREATE SEQUENCE eventstore.events_published_horizon;

CREATE FUNCTION eventstore.read_all(from_position bigint DEFAULT 0,
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

-- The open transactions that hold read_all's horizon back, oldest first.
CREATE VIEW eventstore.horizon_holders AS
	SELECT l.pid,
		   ((l.classid::bigint << 32) | l.objid::bigint) AS holds_from_position,
		   a.xact_start,
		   pg_catalog.now() - a.xact_start AS xact_age,
		   a.state,
		   a.application_name,
		   a.query
	FROM pg_catalog.pg_locks l
	LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
	WHERE l.locktype = 'advisory'
	  AND l.objsubid = 17745
	  AND l.granted
	  AND l.database = (SELECT oid FROM pg_catalog.pg_database
						WHERE datname = pg_catalog.current_database())
	ORDER BY holds_from_position;

CREATE FUNCTION eventstore.load_aggregate(stream_id text, as_of_version bigint DEFAULT NULL)
RETURNS TABLE(stream_id text, version bigint, state jsonb, snapshot_version bigint, events jsonb)
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_load_aggregate';

CREATE FUNCTION eventstore.save_snapshot(stream_id text, version bigint, state jsonb)
RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_save_snapshot';

CREATE FUNCTION eventstore.register_aggregate(category text, reducer regprocedure,
	snapshot_every integer DEFAULT 100, revision integer DEFAULT 1)
RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_register_aggregate';

-- Routes: while a route exists, append() also enqueues each appended event
-- of the category for the topic of the sink (the broker: kafka, rabbitmq or
-- nats).  Category '*' routes every category that has no route of its own.
CREATE TABLE eventstore.routes (
	category text PRIMARY KEY,
	topic text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now(),
	sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'))
);

-- Every backend caches the routes (append() consults them on each call);
-- any statement that changes them invalidates those caches.
CREATE FUNCTION eventstore.routes_changed() RETURNS trigger
LANGUAGE C AS 'MODULE_PATHNAME', 'eventstore_routes_changed';
CREATE TRIGGER routes_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eventstore.routes
	FOR EACH STATEMENT EXECUTE FUNCTION eventstore.routes_changed();

-- The transactional outbox.  A row for a routed event only points at the
-- event (event_position); the relay builds the message from it.  A row leaves
-- the outbox once the broker acknowledged it.  Rows come and go all the time,
-- so autovacuum visits the table after every 1000 dead rows, whatever its
-- size, and without cost-based sleeps.
CREATE TABLE eventstore.outbox (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	topic text NOT NULL,
	message_key text,
	payload jsonb,
	headers jsonb NOT NULL DEFAULT '{}',
	event_position bigint,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
	attempts integer NOT NULL DEFAULT 0,
	next_attempt_at timestamptz,
	first_failed_at timestamptz,
	last_error text,
	sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'))
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
		autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000,
		autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000,
		autovacuum_vacuum_cost_delay = 0);
-- The keys that wait for a retry: later messages of such a key wait too.
CREATE INDEX outbox_retry_key_idx ON eventstore.outbox (message_key, id)
	WHERE next_attempt_at IS NOT NULL;
-- When a sink's next retry is due: the relay asks after every round that was
-- not a full batch, so it must not scan the table (after a burst, mostly dead
-- rows), nor another sink's retries (its broker may be down).
CREATE INDEX outbox_next_attempt_idx ON eventstore.outbox (sink, next_attempt_at)
	WHERE next_attempt_at IS NOT NULL;

-- Messages the relay gave up on, as they were in the outbox.
CREATE TABLE eventstore.dead_letters (
	id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	outbox_id bigint NOT NULL,
	topic text NOT NULL,
	message_key text,
	payload jsonb,
	headers jsonb NOT NULL,
	event_position bigint,
	created_at timestamptz NOT NULL,
	attempts integer NOT NULL,
	last_error text NOT NULL,
	first_failed_at timestamptz NOT NULL,
	last_failed_at timestamptz NOT NULL,
	sink text NOT NULL DEFAULT 'kafka' CHECK (sink IN ('kafka', 'rabbitmq', 'nats'))
);
-- In park mode a key with a dead letter is held back.
CREATE INDEX dead_letters_key_idx ON eventstore.dead_letters (message_key);

SELECT pg_catalog.pg_extension_config_dump('eventstore.routes', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.dead_letters', '');
-- The identity sequences too, so that a restored dump goes on from the
-- positions and ids it had (pg_dump then dumps their values as setval).
SELECT pg_catalog.pg_extension_config_dump('eventstore.events_global_position_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.dead_letters_id_seq', '');

CREATE FUNCTION eventstore.publish(topic text, key text, payload jsonb, headers jsonb DEFAULT NULL,
	sink text DEFAULT 'kafka')
RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_publish';

CREATE FUNCTION eventstore.add_route(category text, topic text, sink text DEFAULT 'kafka')
RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_add_route';

CREATE FUNCTION eventstore.remove_route(category text) RETURNS void
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_remove_route';

-- The Kafka headers of a routed event: CloudEvents binary content mode, as
-- the relay sends them (both are built by the same C code).
CREATE FUNCTION eventstore.cloudevent_headers(e eventstore.events, source text)
RETURNS jsonb
LANGUAGE C STABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'eventstore_cloudevent_headers';

-- Dead letters back into the outbox, in their original order.
CREATE FUNCTION eventstore.requeue_dead_letters(ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_requeue_dead_letters';

CREATE FUNCTION eventstore.discard_dead_letters(ids bigint[]) RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_discard_dead_letters';

-- Re-publish stored events, in global order, to a topic through the outbox.
CREATE FUNCTION eventstore.replay(topic text, category text DEFAULT NULL,
	from_position bigint DEFAULT 0, to_position bigint DEFAULT NULL, sink text DEFAULT 'kafka')
RETURNS bigint
LANGUAGE C CALLED ON NULL INPUT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_replay';

-- What the relay is doing: one row per sink that is configured or has
-- messages waiting.
CREATE FUNCTION eventstore.relay_status(
	OUT sink text, OUT pid integer, OUT state text, OUT pending bigint, OUT oldest_pending_age interval,
	OUT sent_total bigint, OUT retries_total bigint, OUT dead_letters_total bigint,
	OUT last_error text, OUT last_error_at timestamptz, OUT last_delivery_at timestamptz,
	OUT latency_p50_ms double precision, OUT latency_p99_ms double precision,
	OUT in_flight integer)
RETURNS SETOF record
LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'eventstore_relay_status';

-- Per sink and topic: messages waiting in the outbox and the age of the oldest.
CREATE VIEW eventstore.outbox_lag AS
	SELECT topic, count(*) AS pending, pg_catalog.now() - min(created_at) AS oldest_age,
		   count(*) FILTER (WHERE attempts > 0) AS retrying, sink
	FROM eventstore.outbox
	GROUP BY sink, topic;

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

-- Nothing is granted to PUBLIC: see docs/reference.md, "Privileges".
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA eventstore FROM PUBLIC;
