#!/usr/bin/env python3
"""Disk-full drill (SQLite): the database lives on a small tmpfs, most of it taken by a filler
file, while signed load arrives. When the disk fills, intake answers 503 with Retry-After
(never another 5xx, never 200 without a commit) and /ready goes 503 with the reason; events
already acknowledged wait (no DLQ). Then the filler is deleted: wahook recovers without a
restart and every acknowledged message exists exactly once.

Needs root (mount). Usage: scripts/drills/disk_full.py [--build]"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

if "--build" in sys.argv:
    drill.build()
DISK_MB = 256
FREE_MB = 8  # left for the database (and its 4 MB WAL) when the drill starts
FULL_SECONDS = 5

mount = tempfile.mkdtemp(prefix="wahook-drill-disk-")
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", mount], check=True)
server = None
try:
    db = os.path.join(mount, "wahook.db")
    server = drill.Server("sqlite", "disk", extra_env={"WAHOOK_DATABASE__URL": f"sqlite://{db}"})
    server.db_path = db
    filler = os.path.join(mount, "filler")
    used = sum(os.path.getsize(os.path.join(mount, f)) for f in os.listdir(mount))
    with open(filler, "wb") as f:
        f.write(b"\0" * ((DISK_MB - FREE_MB) * 1024 * 1024 - used))
    server.start()
    record = os.path.join(server.work, "acked.tsv")
    load = drill.loadgen(server, record, requests=40000, rate=800)
    # Until the disk is full: the first 503.
    started = time.monotonic()
    probe = (None, None)
    while time.monotonic() - started < 60:
        probe = drill.signed_post(server)
        if probe[0] == 503:
            break
        time.sleep(0.1)
    if probe[0] != 503:
        sys.exit("the disk did not fill within 60 s")
    not_ready, _ = drill.reasons_while(server, FULL_SECONDS)
    os.remove(filler)
    recovery = drill.seconds_until_ready(server, "the space returning")
    report = drill.loadgen_report(load)
    server.wait_settled()
    wamids = drill.acked(record)
    lost, duplicated = drill.exactly_once(server, wamids)
    open_events = drill.unsettled(server)
    parked = server.scalar("SELECT COUNT(*) FROM webhook_dlq")
    print("while full: probe answered", probe, "/ready reasons", not_ready, flush=True)
    ok = (lost == 0 and duplicated == 0 and open_events == 0 and parked == 0
          and report["other_5xx"] == 0 and report["503"] > 0 and probe[1] is not None
          and bool(not_ready))
    sys.exit(drill.summary(
        "disk-full", "sqlite", ok,
        disk_mb=DISK_MB, sent=report["sent"], acknowledged=report["acked"], lost=lost,
        duplicated=duplicated, **{"503s": report["503"], "other_5xx": report["other_5xx"]},
        transport_errors=report["transport_errors"], unsettled_events=open_events,
        parked=parked, ready_503_seen=bool(not_ready), retry_after=probe[1],
        recovery_s=f"{recovery:.2f}"))
finally:
    if server:
        server.cleanup()
    subprocess.run(["umount", "-l", mount], check=False)
    os.rmdir(mount)
