/*
 * compat.h
 *		Differences between the PostgreSQL major versions eventstore's C code
 *		builds against (14 to 17: poll needs SPI_execute_plan_extended; only
 *		15 is tested).  The install script of 0.3.0 needs 15 or later:
 *		eventstore.subscription_lag is a security_invoker view.
 */
#ifndef EVENTSTORE_COMPAT_H
#define EVENTSTORE_COMPAT_H

#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/tuplestore.h"

/* PostgreSQL 17 moved the local transaction id into PGPROC.vxid */
#if PG_VERSION_NUM >= 170000
#define EsMyLocalXid() (MyProc->vxid.lxid)
#else
#define EsMyLocalXid() (MyProc->lxid)
#endif

/* PostgreSQL 16 replaced pg_proc_aclcheck() by object_aclcheck() */
#if PG_VERSION_NUM >= 160000
#define EsProcAclCheck(proc, user) \
	object_aclcheck(ProcedureRelationId, (proc), (user), ACL_EXECUTE)
#else
#define EsProcAclCheck(proc, user) pg_proc_aclcheck((proc), (user), ACL_EXECUTE)
#endif

/* PostgreSQL 16 replaced pg_proc_ownercheck() by object_ownercheck() */
#if PG_VERSION_NUM >= 160000
#define EsProcOwnerCheck(proc, user) \
	object_ownercheck(ProcedureRelationId, (proc), (user))
#else
#define EsProcOwnerCheck(proc, user) pg_proc_ownercheck((proc), (user))
#endif

/* A random number in [0, 1): pg_prng arrived in PostgreSQL 15 */
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#define EsRandomDouble() pg_prng_double(&pg_global_prng_state)
#else
#define EsRandomDouble() ((double) random() / ((double) PG_INT32_MAX + 1))
#endif

/* InitMaterializedSRF() arrived in PostgreSQL 15 */
#if PG_VERSION_NUM < 150000
static inline void
InitMaterializedSRF(FunctionCallInfo fcinfo, bits32 flags)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext oldcontext;
	TupleDesc	tupdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("materialize mode required, but it is not allowed in this context")));
	oldcontext = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(oldcontext);
}
#endif

/* CreateWaitEventSet takes a resource owner from PostgreSQL 17 on */
#if PG_VERSION_NUM >= 170000
#define EsCreateWaitEventSet(n) CreateWaitEventSet(NULL, (n))
#else
#define EsCreateWaitEventSet(n) CreateWaitEventSet(CurrentMemoryContext, (n))
#endif

#endif							/* EVENTSTORE_COMPAT_H */
