#!/usr/bin/env python3
"""Crash drill: signed load at about half the measured throughput while the server is killed
with SIGKILL at random moments five times and restarted each time. At the end every
acknowledged message exists exactly once, every event is processed or in the DLQ with a
reason, conversation counters equal their rows, and nothing but 503 was a 5xx.

Usage: scripts/drills/crash.py sqlite|postgres [--build]"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
if "--build" in sys.argv:
    drill.build()
random.seed(int(os.environ.get("DRILL_SEED", "7")))
KILLS = 5
server = drill.Server(backend, "crash")
try:
    server.start()
    record = os.path.join(server.work, "acked.tsv")
    # About half of the measured throughput (BENCHMARKS.md: 3,000+ acknowledged/s).
    load = drill.loadgen(server, record, requests=9000, rate=1500, extra=("--status-every", "5"))
    recoveries = drill.kill_and_restart(server, KILLS, lambda: random.uniform(0.4, 1.0))
    report = drill.loadgen_report(load)
    settle = server.wait_settled()
    wamids = drill.acked(record)
    lost, duplicated = drill.exactly_once(server, wamids)
    bad_counts = drill.counts_agree(server)
    open_events = drill.unsettled(server)
    ok = (lost == 0 and duplicated == 0 and bad_counts == 0 and open_events == 0
          and report["other_5xx"] == 0 and report["acked"] > 0)
    sys.exit(drill.summary(
        "crash", backend, ok,
        kills=KILLS, sent=report["sent"], acknowledged=report["acked"],
        acked_messages=len(wamids), lost=lost, duplicated=duplicated,
        **{"503s": report["503"], "other_5xx": report["other_5xx"]},
        transport_errors=report["transport_errors"], unsettled_events=open_events,
        count_mismatches=bad_counts,
        recovery_max_s=f"{max(recoveries):.2f}", settle_s=f"{settle:.1f}"))
finally:
    server.cleanup()
