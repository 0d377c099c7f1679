/*
 * eventstore.c
 *		Module entry point of the eventstore extension.
 */
#include "postgres.h"

#include "fmgr.h"

#include "eventstore.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Module load: nothing to set up yet for the event store itself */
void
_PG_init(void)
{
}
