/*
 * eventstore.h
 *		Declarations shared by the eventstore extension's source files.
 */
#ifndef EVENTSTORE_H
#define EVENTSTORE_H

#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "utils/jsonb.h"

/* SQLSTATEs of our own (class SE: event store) */
#define ERRCODE_ES_WRONG_EXPECTED_VERSION	MAKE_SQLSTATE('S','E','0','0','1')
#define ERRCODE_ES_DUPLICATE_EVENT_ID		MAKE_SQLSTATE('S','E','0','0','2')

/* The user a write ran as before EsBecomeOwner() */
typedef struct EsSavedUser
{
	Oid			userid;
	int			sec_context;
} EsSavedUser;

/* common.c */
extern Oid	EsSchemaOid(void);
extern void EsBecomeOwner(EsSavedUser *saved);
extern void EsRestoreUser(const EsSavedUser *saved);
extern SPIPlanPtr EsPlan(SPIPlanPtr *cache, const char *sql, int nargs,
						 const Oid *argtypes);
extern void EsSpiExec(SPIPlanPtr plan, Datum *values, const char *nulls,
					  bool read_only, int expected);
extern text *EsCheckStreamId(FunctionCallInfo fcinfo, int argno);
extern int64 EsStreamVersion(text *stream_id);
extern char *EsCategoryOf(const char *stream_id);
extern bool EsJsonbEqual(Jsonb *a, Jsonb *b);

/* horizon.c */
extern void EsHoldHorizon(void);

/* aggregate.c */
extern int32 EsSnapshotRevision(const char *category);

#endif							/* EVENTSTORE_H */
