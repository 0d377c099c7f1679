/*
 * bench_util.h
 *		Helpers the benchmark drivers share (commit_to_consume.c,
 *		subscribe.c): the clock, fatal errors, a counter shared between
 *		threads, percentiles.  Each includer defines BENCH_PROGRAM first.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define NS_PER_SEC INT64_C(1000000000)

/* Guards the variables shared between threads (shared()) */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* CLOCK_MONOTONIC now, in ns */
static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

/* Print an error and exit 1 */
static void
die(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	fputs(BENCH_PROGRAM ": ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	exit(1);
}

/* One of the variables shared between threads */
static long
shared(long *var)
{
	long		v;

	pthread_mutex_lock(&lock);
	v = *var;
	pthread_mutex_unlock(&lock);
	return v;
}

/* qsort order of doubles */
static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a,
				y = *(const double *) b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile pct of n sorted values (0 when there are none) */
static double
percentile(const double *sorted, long n, int pct)
{
	long		rank = (n * pct + 99) / 100;

	return n == 0 ? 0.0 : sorted[rank - 1];
}

#endif							/* BENCH_UTIL_H */
