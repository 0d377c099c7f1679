/*
 * status.c
 *		eventstore.relay_status(): what the relay worker is doing for each
 *		sink, from its statistics in shared memory and the outbox table.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/tuplestore.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "eventstore.h"
#include "sink.h"

/* relay_status()'s names of the relay states */
static const char *const es_state_names[] = {
	[ES_RELAY_STOPPED] = "stopped",
	[ES_RELAY_DISABLED] = "disabled",
	[ES_RELAY_CONNECTING] = "connecting",
	[ES_RELAY_IDLE] = "idle",
	[ES_RELAY_SENDING] = "sending",
	[ES_RELAY_BACKING_OFF] = "backing_off",
	[ES_RELAY_BROKER_DOWN] = "broker_down",
	[ES_RELAY_ERROR] = "error",
	[ES_RELAY_NOT_SERVED] = "not_served",
	[ES_RELAY_STANDBY] = "standby",
};

/* qsort comparator for latencies */
static int
EsCompareDoubles(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

/* The q-quantile (0..1) of the sorted latencies, nearest rank */
static double
EsQuantile(const double *sorted, int n, double q)
{
	int			rank = (int) (q * n + 0.999999);

	return sorted[Max(rank, 1) - 1];
}

/*
 * Messages waiting in the outbox per sink, and the age of the oldest, into
 * pending[] and ages[] (NULL: none)
 */
static void
EsPendingPerSink(int64 *pending, Interval **ages)
{
	static SPIPlanPtr plan = NULL;
	EsSavedUser saved;
	uint64		i;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(&saved);
	EsSpiExec(EsPlan(&plan,
					 "SELECT sink, pg_catalog.count(*),"
					 " pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.min(created_at)"
					 " FROM eventstore.outbox GROUP BY sink",
					 0, NULL),
			  NULL, NULL, true, SPI_OK_SELECT);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		int			id = EsSinkByName(TextDatumGetCString(SPI_getbinval(tup, SPI_tuptable->tupdesc,
																		  1, &isnull)));
		Datum		age = SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull);

		if (id < 0)
			continue;
		pending[id] = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));
		ages[id] = isnull ? NULL : DatumGetIntervalP(SPI_datumTransfer(age, false, sizeof(Interval)));
	}
	EsRestoreUser(&saved);
	SPI_finish();
}

/* relay_status()'s row of a sink */
static HeapTuple
EsSinkStatusRow(TupleDesc tupdesc, EsSinkId sink, int64 pending, Interval *age)
{
	EsRelayStats *st = palloc0(sizeof(EsRelayStats));
	bool		have_shmem = EsRelayStatsCopy(sink, st);
	Datum		values[14];
	bool		nulls[14];

	memset(nulls, 0, sizeof(nulls));
	/* Without shared_preload_libraries there is no relay at all */
	if (!have_shmem)
		st->state = ES_RELAY_DISABLED;
	else if (RecoveryInProgress())
	{
		/* A hot standby: the launcher starts relays after a promotion */
		memset(st, 0, sizeof(EsRelayStats));
		st->state = ES_RELAY_STANDBY;
	}
	else if (!EsDatabaseIsServed())
		st->state = ES_RELAY_NOT_SERVED;
	else if (st->pid == 0 && EsRelaySlotsFull())
	{
		st->state = ES_RELAY_NOT_SERVED;
		snprintf(st->last_error, sizeof(st->last_error),
				 "every relay slot is taken by another database (eventstore.max_relays = %d)",
				 es_max_relays);
	}
	values[0] = CStringGetTextDatum(EsSinkName(sink));
	values[1] = Int32GetDatum(st->pid);
	nulls[1] = st->pid == 0;
	values[2] = CStringGetTextDatum(es_state_names[st->state]);
	values[3] = Int64GetDatum(pending);
	values[4] = PointerGetDatum(age);
	nulls[4] = age == NULL;
	values[5] = Int64GetDatum((int64) st->sent_total);
	values[6] = Int64GetDatum((int64) st->retries_total);
	values[7] = Int64GetDatum((int64) st->dead_letters_total);
	values[8] = CStringGetTextDatum(st->last_error);
	nulls[8] = st->last_error[0] == '\0';
	values[9] = TimestampTzGetDatum(st->last_error_at);
	nulls[9] = st->last_error_at == 0;
	values[10] = TimestampTzGetDatum(st->last_delivery_at);
	nulls[10] = st->last_delivery_at == 0;
	nulls[11] = nulls[12] = st->latency_count == 0;
	if (st->latency_count > 0)
	{
		qsort(st->latency_ms, st->latency_count, sizeof(double), EsCompareDoubles);
		values[11] = Float8GetDatum(EsQuantile(st->latency_ms, st->latency_count, 0.50));
		values[12] = Float8GetDatum(EsQuantile(st->latency_ms, st->latency_count, 0.99));
	}
	values[13] = Int32GetDatum(st->in_flight);
	return heap_form_tuple(tupdesc, values, nulls);
}

PG_FUNCTION_INFO_V1(eventstore_relay_status);

/*
 * SQL: eventstore.relay_status() -> a row per sink that is configured or
 * has messages waiting in the outbox; Kafka's when there is none
 */
Datum
eventstore_relay_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		pending[ES_NUM_SINKS] = {0};
	Interval   *ages[ES_NUM_SINKS] = {NULL};
	bool		shown = false;
	int			i;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (rsinfo->setDesc->natts != 14)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the eventstore extension's SQL objects are older than its library"),
				 errhint("Run ALTER EXTENSION eventstore UPDATE.")));
	EsPendingPerSink(pending, ages);
	for (i = 0; i < ES_NUM_SINKS; i++)
	{
		bool		configured = es_sinks[i] != NULL && es_sinks[i]->configured();

		if (!configured && pending[i] == 0 && (i != ES_SINK_KAFKA || shown))
			continue;
		if (i == ES_SINK_KAFKA && !configured && pending[i] == 0)
		{
			/* Kafka's row stands for a relay with no sink, unless another shows */
			int			j;
			bool		other = false;

			for (j = 1; j < ES_NUM_SINKS; j++)
				other = other || pending[j] > 0 ||
					(es_sinks[j] != NULL && es_sinks[j]->configured());
			if (other)
				continue;
		}
		tuplestore_puttuple(rsinfo->setResult,
							EsSinkStatusRow(rsinfo->setDesc, (EsSinkId) i, pending[i], ages[i]));
		shown = true;
	}
	return (Datum) 0;
}
