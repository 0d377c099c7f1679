\echo Use "ALTER EXTENSION eventstore UPDATE TO '0.2.0'" to load this file. \quit

-- 0.1.0 -> 0.2.0 (see CHANGELOG.md).  Most of 0.2.0's fixes are in the C
-- library, which serves both versions' SQL objects.

-- pg_dump dumps the identity sequences' values, so that a restored database
-- goes on from the positions and ids it had.
SELECT pg_catalog.pg_extension_config_dump('eventstore.events_global_position_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.dead_letters_id_seq', '');
