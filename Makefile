# eventstore: PGXS build.  `make && make install`, then see README.md.

EXTENSION = eventstore
EXTVERSION = 0.6.0
MODULE_big = eventstore
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c))
# The install script of every version, and the upgrade scripts between them
DATA = $(wildcard $(EXTENSION)--*.sql)
PGFILEDESC = "eventstore - event store and transactional outbox"

PG_CPPFLAGS = -Isrc
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = -lrdkafka -lrabbitmq -lnats

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --load-extension=$(EXTENSION)
ISOLATION = $(patsubst test/specs/%.spec,%,$(sort $(wildcard test/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test --load-extension=$(EXTENSION)
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Every object depends on the shared headers (PGXS tracks no dependencies)
$(OBJS): $(wildcard src/*.h)

# Makefile.global resets PROVE_FLAGS, so this comes after the include
PROVE_FLAGS = -I test/perl

# The one-command demo: a throw-away server and the mock Kafka cluster
demo:
	bash demo/run.sh
.PHONY: demo

# Every benchmark in one run; rewrites docs/performance.md
bench:
	bash bench/run
.PHONY: bench
