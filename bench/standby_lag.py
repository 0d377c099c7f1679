#!/usr/bin/python3
"""standby_lag.py: how long after an append's commit on the primary its
event can be read on a hot standby (bench/standby.sh).

    bench/standby_lag.py PRIMARY_CONNINFO STANDBY_CONNINFO [COUNT]

COUNT (default 100) one-event appends to new streams on the primary, one
every 20 ms.  From the moment each append's commit returned, one standby
connection asks in a tight loop, in one statement, whether
  (a) the event's row is there (a SELECT by its position: replication
      alone), and
  (b) read_all(position - 1, 1) returns it (replication, and the read
      horizon the primary's relay publishes),
and notes when each first was.  An event not seen within 5 s counts as
missed; an error of read_all (no horizon published yet) counts as not
seen.  Runs with Debian's /usr/bin/python3 (python3-psycopg2).  Prints one
line:

    plain_p50_ms=.. plain_p99_ms=.. plain_max_ms=.. read_all_p50_ms=..
    read_all_p99_ms=.. read_all_max_ms=.. plain_missed=N read_all_missed=N
    read_all_errors=N
"""
import sys
import time

import psycopg2

CHECK = """SELECT EXISTS (SELECT FROM eventstore.events WHERE global_position = %(p)s),
    EXISTS (SELECT FROM eventstore.read_all(%(p)s - 1, 1) WHERE global_position = %(p)s)"""
PLAIN = "SELECT EXISTS (SELECT FROM eventstore.events WHERE global_position = %(p)s), false"


def pct(values, q):
    """The q-th percentile (nearest rank) of values, or -1 when empty."""
    if not values:
        return -1
    v = sorted(values)
    i = max(0, min(len(v) - 1, int(len(v) * q + 0.999999) - 1))
    return v[i]


def main():
    """Run the appends and the standby's checks; print the figures."""
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    count = int(sys.argv[3]) if len(sys.argv) == 4 else 100
    primary = psycopg2.connect(sys.argv[1])
    primary.autocommit = True
    standby = psycopg2.connect(sys.argv[2])
    standby.autocommit = True
    pc = primary.cursor()
    sc = standby.cursor()
    plain, read_all = [], []
    plain_missed = read_all_missed = errors = 0
    for i in range(count):
        stream = f"lag-{time.time_ns()}-{i}"
        pc.execute("SELECT eventstore.append(%s, 0, '[{\"type\": \"Lagged\", \"data\": {}}]')",
                   (stream,))
        t0 = time.monotonic()
        # append returns the stream's version: the position from the primary
        pc.execute("SELECT global_position FROM eventstore.events WHERE stream_id = %s", (stream,))
        pos = pc.fetchone()[0]
        t_plain = t_read = None
        query = CHECK
        while time.monotonic() - t0 < 5 and (t_plain is None or t_read is None):
            try:
                sc.execute(query, {"p": pos})
                seen_plain, seen_read = sc.fetchone()
            except psycopg2.Error:
                # read_all refused (no horizon on the standby): note it once
                # per event, then look for the row alone
                errors += 1
                query = PLAIN
                continue
            now = time.monotonic()
            if seen_plain and t_plain is None:
                t_plain = now
            if seen_read and t_read is None:
                t_read = now
            if query is PLAIN and t_plain is not None:
                break
        if t_plain is None:
            plain_missed += 1
        else:
            plain.append((t_plain - t0) * 1000)
        if t_read is None:
            read_all_missed += 1
        else:
            read_all.append((t_read - t0) * 1000)
        time.sleep(0.02)
    print(f"plain_p50_ms={pct(plain, 0.5):.3f} plain_p99_ms={pct(plain, 0.99):.3f} "
          f"plain_max_ms={max(plain, default=-1):.3f} read_all_p50_ms={pct(read_all, 0.5):.3f} "
          f"read_all_p99_ms={pct(read_all, 0.99):.3f} read_all_max_ms={max(read_all, default=-1):.3f} "
          f"plain_missed={plain_missed} read_all_missed={read_all_missed} read_all_errors={errors}")


if __name__ == "__main__":
    main()
