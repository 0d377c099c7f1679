/*
 * eventstore.c
 *		Module entry point: settings, shared memory and the launcher of the
 *		relay workers.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "eventstore.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *es_kafka_brokers = NULL;
char	   *es_kafka_config = NULL;
char	   *es_rabbitmq_url = NULL;
char	   *es_nats_url = NULL;
char	   *es_nats_credentials = NULL;
int			es_rabbitmq_unroutable = ES_UNROUTABLE_DEAD_LETTER;
char	   *es_database = NULL;
int			es_max_relays = 8;
char	   *es_cloudevents_source = NULL;
char	   *es_dead_letter_topic = NULL;
int			es_relay_batch_size = 1000;
int			es_max_attempts = 10;
int			es_retry_backoff_initial = 1000;
int			es_retry_backoff_max = 32000;
int			es_delivery_timeout = 30000;
int			es_on_dead_letter = ES_DEAD_LETTER_CONTINUE;
int			es_relay_idle_interval = 5000;
int			es_relay_window_messages = 10000;
int			es_relay_window_memory = 65536;	/* kB */

static const struct config_enum_entry es_rabbitmq_unroutable_options[] = {
	{"dead_letter", ES_UNROUTABLE_DEAD_LETTER, false},
	{"retry", ES_UNROUTABLE_RETRY, false},
	{NULL, 0, false}
};

static const struct config_enum_entry es_on_dead_letter_options[] = {
	{"continue", ES_DEAD_LETTER_CONTINUE, false},
	{"park", ES_DEAD_LETTER_PARK, false},
	{NULL, 0, false}
};

/*
 * Check hook of eventstore.cloudevents_source: empty (the default source) or
 * the characters of a URI-reference, since ce_source must be one
 */
static bool
EsCheckCloudEventsSource(char **newval, void **extra, GucSource source)
{
	if (EsCloudEventsSourceIsValid(*newval))
		return true;
	GUC_check_errdetail("A CloudEvents source is a URI-reference: percent-encode spaces, control characters and non-ASCII characters (%%20).");
	return false;
}

/* Define the eventstore.* settings */
static void
EsDefineSettings(void)
{
	DefineCustomStringVariable("eventstore.kafka_brokers",
							   "Kafka bootstrap servers the relay delivers to (host:port,...); empty turns the relay off.",
							   NULL, &es_kafka_brokers, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("eventstore.kafka_config",
							   "Extra librdkafka producer properties: key=value pairs separated by semicolons, or @file with one pair per line.",
							   "Visible to superusers only. Put secrets in a file: a reload logs a changed setting's value.",
							   &es_kafka_config, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("eventstore.rabbitmq_url",
							   "RabbitMQ server the relay delivers to (amqp:// or amqps:// URL, or @file holding one); empty turns that sink off.",
							   "Visible to superusers only. Put a URL with a password in a file: a reload logs a changed setting's value.",
							   &es_rabbitmq_url, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomEnumVariable("eventstore.rabbitmq_unroutable",
							 "What an unroutable RabbitMQ message (returned: no queue bound for its routing key) is: a dead_letter at once, or a retriable error (retry) until a queue is bound or max_attempts.",
							 NULL, &es_rabbitmq_unroutable, ES_UNROUTABLE_DEAD_LETTER,
							 es_rabbitmq_unroutable_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("eventstore.nats_url",
							   "NATS servers the relay publishes to through JetStream (nats:// URLs separated by commas, or @file holding them); empty turns that sink off.",
							   "Visible to superusers only. Put a URL with a password in a file: a reload logs a changed setting's value.",
							   &es_nats_url, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("eventstore.nats_credentials",
							   "NATS credentials file (JWT and NKey seed) the relay connects with; empty: none.",
							   "Visible to superusers only.",
							   &es_nats_credentials, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY, NULL, NULL, NULL);
	DefineCustomStringVariable("eventstore.cloudevents_source",
							   "CloudEvents source (ce_source) of relayed events, a URI-reference; empty means /eventstore/<database>, percent-encoded.",
							   NULL, &es_cloudevents_source, "",
							   PGC_SIGHUP, 0, EsCheckCloudEventsSource, NULL, NULL);
	DefineCustomStringVariable("eventstore.dead_letter_topic",
							   "Topic dead letters are forwarded to (%s stands for the original topic); empty keeps them in eventstore.dead_letters.",
							   NULL, &es_dead_letter_topic, "",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
	/* Postmaster-level settings can only be defined while preloading */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomStringVariable("eventstore.database",
								   "The one database whose outbox is relayed; empty: every database with the extension. Needs a server restart.",
								   NULL, &es_database, "",
								   PGC_POSTMASTER, 0, NULL, NULL, NULL);
		DefineCustomIntVariable("eventstore.max_relays",
								"Most relay workers (one per database with the extension). Needs a server restart.",
								"Each relay also takes a background worker slot (max_worker_processes), and the launcher one more.",
								&es_max_relays, 8, 1, 128,
								PGC_POSTMASTER, 0, NULL, NULL, NULL);
	}
	DefineCustomIntVariable("eventstore.relay_batch_size",
							"Outbox rows the relay reads at a time, and acknowledged rows it deletes at a time.",
							NULL, &es_relay_batch_size, 1000, 1, 100000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.relay_window_messages",
							"Most messages the relay has sent and not yet recorded as acknowledged.",
							NULL, &es_relay_window_messages, 10000, 1, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.relay_window_memory",
							"Most bytes of keys, values and headers the relay has sent and not yet recorded as acknowledged.",
							NULL, &es_relay_window_memory, 65536, 64, 2 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.max_attempts",
							"Delivery attempts of a message before it is dead-lettered.",
							NULL, &es_max_attempts, 10, 1, 1000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.retry_backoff_initial",
							"Wait before the first retry of a failed message; doubles per attempt.",
							NULL, &es_retry_backoff_initial, 1000, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.retry_backoff_max",
							"Longest wait between two attempts of a message.",
							NULL, &es_retry_backoff_max, 32000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.relay_idle_interval",
							"How long an idle relay sleeps before it looks at the outbox anyway.",
							"A safety net: transactions that enqueued messages wake the relay as they end.",
							&es_relay_idle_interval, 5000, 10, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("eventstore.delivery_timeout",
							"How long one delivery attempt of a batch may wait for the broker.",
							NULL, &es_delivery_timeout, 30000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomEnumVariable("eventstore.on_dead_letter",
							 "What later messages of a dead letter's key do: continue, or park until it is requeued or discarded.",
							 NULL, &es_on_dead_letter, ES_DEAD_LETTER_CONTINUE,
							 es_on_dead_letter_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("eventstore");
#else
	EmitWarningsOnPlaceholders("eventstore");
#endif
}

/*
 * Module load.  The settings exist in every process; shared memory and the
 * launcher (which starts the relays) only when loaded through
 * shared_preload_libraries.
 */
void
_PG_init(void)
{
	EsDefineSettings();
	RegisterXactCallback(EsOutboxXactCallback, NULL);
	RegisterXactCallback(EsSubscriptionXactCallback, NULL);

	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;
	EsShmemInit();
	EsInstallUtilityHook();
	RegisterResourceReleaseCallback(EsOutboxResourceRelease, NULL);
	EsRegisterLauncher();
}

PG_FUNCTION_INFO_V1(eventstore_library_0_5);
PG_FUNCTION_INFO_V1(eventstore_library_0_6);

/*
 * Found only in a library of 0.5.0 (0.6.0) or later: the update script to
 * that version declares a function on it, so that an update in a server
 * still running an older library (preloaded before the new one was
 * installed) fails instead of pairing the new SQL objects with the old code
 */
Datum
eventstore_library_0_5(PG_FUNCTION_ARGS)
{
	PG_RETURN_VOID();
}

/* See eventstore_library_0_5 */
Datum
eventstore_library_0_6(PG_FUNCTION_ARGS)
{
	PG_RETURN_VOID();
}
