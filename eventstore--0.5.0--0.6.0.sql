\echo Use "ALTER EXTENSION eventstore UPDATE TO '0.6.0'" to load this file. \quit

-- 0.5.0 -> 0.6.0: reads on hot standbys (see CHANGELOG.md).

-- A server still running the library it preloaded before the new one was
-- installed would pair these objects with old code (restart it first).  An
-- older library lacks this symbol, and the update stops here with "could
-- not find function".
CREATE FUNCTION eventstore.library_check() RETURNS void
LANGUAGE C AS 'MODULE_PATHNAME', 'eventstore_library_0_6';
DROP FUNCTION eventstore.library_check();

-- The horizon the primary's relay publishes for hot standbys, where it is
-- read_all's and poll's horizon (docs/reference.md, "Reads on a hot
-- standby").  Not dumped: a restored database's relay publishes its own.
CREATE SEQUENCE eventstore.events_published_horizon;
