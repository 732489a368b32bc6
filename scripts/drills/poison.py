#!/usr/bin/env python3
"""Poison flood drill: the same signed load twice on fresh servers, once clean and once with
1 % of the events poison (valid, signed, but naming no sender: processing must park them). The
poison ends in the DLQ with its error; the rest is processed exactly once, and its processing
lag p99 stays within 2× of the clean run.

Usage: scripts/drills/poison.py sqlite|postgres [--build]"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

backend = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
if "--build" in sys.argv:
    drill.build()
REQUESTS, RATE = 6000, 1500


def run(poison_every):
    server = drill.Server(backend, "poison" if poison_every else "clean")
    try:
        server.start()
        record = os.path.join(server.work, "acked.tsv")
        extra = ("--poison-every", str(poison_every)) if poison_every else ()
        report = drill.loadgen_report(drill.loadgen(server, record, REQUESTS, RATE, extra=extra))
        server.wait_settled()
        # Parked events are written a moment after their event settles.
        poisons = sum(1 for line in open(record) if line.startswith("poison\t"))
        for _ in range(100):
            parked = server.scalar(
                "SELECT COUNT(*) FROM webhook_dlq WHERE error LIKE '%cannot be attributed%'")
            if parked >= poisons:
                break
            drill.time.sleep(0.1)
        lost, duplicated = drill.exactly_once(server, drill.acked(record))
        lag_p99 = drill.metric_quantile(server, "wahook_processing_lag_seconds", 0.99)
        return report, poisons, parked, lost, duplicated, lag_p99, drill.unsettled(server)
    finally:
        server.cleanup()


clean = run(0)
dirty = run(100)
report, poisons, parked, lost, duplicated, lag_p99, open_events = dirty
ratio = lag_p99 / max(clean[5], 1e-6)
# Within 2×, or both under 50 ms (below that, the ratio measures scheduling noise).
lag_ok = ratio <= 2.0 or lag_p99 <= 0.05
ok = (poisons > 0 and parked == poisons and lost == 0 and duplicated == 0 and clean[3] == 0
      and open_events == 0 and report["other_5xx"] == 0 and lag_ok)
sys.exit(drill.summary(
    "poison", backend, ok,
    sent=report["sent"], acknowledged=report["acked"], poison=poisons, parked_with_reason=parked,
    lost=lost, duplicated=duplicated, **{"503s": report["503"], "other_5xx": report["other_5xx"]},
    lag_p99_clean_ms=f"{clean[5] * 1000:.1f}", lag_p99_poison_ms=f"{lag_p99 * 1000:.1f}",
    ratio=f"{ratio:.2f}"))
