#!/usr/bin/env python3
"""The whole product under an independent client: wrk posts pre-signed, distinct Meta webhooks
(scripts/wrk/signed-posts.lua) as fast as a fixed number of connections allows, against a
release wahook that also processes them. Prints the ack rate and latency (wrk's), the
end-to-end processed rate (accepted events / time until the last is processed), the processing
lag p99 (the server's histogram) and the server's CPU.

Usage: scripts/bench-wrk.py sqlite|postgres [--seconds 30] [--connections 64] [--build]
Needs wrk (apt-get install wrk) and `cargo build --release`."""

import argparse
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "drills"))
import drill  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("backend", choices=["sqlite", "postgres"])
p.add_argument("--seconds", type=int, default=30)
p.add_argument("--connections", type=int, default=64)
p.add_argument("--bodies", type=int, default=0, help="distinct bodies (default 15,000 per second)")
p.add_argument("--build", action="store_true")
p.add_argument("--perf", metavar="FILE", help="also record the server with `perf record` into FILE")
p.add_argument("--metrics", metavar="FILE", help="also save the server's /metrics after the run into FILE")
args = p.parse_args()
if args.build:
    drill.build()

SECRET = b"demo-app-secret-change-me"


def bodies(path, n, run):
    """n distinct signed text-message webhooks from 1,000 senders, like loadgen's."""
    now = int(time.time())
    with open(path, "w") as f:
        for i in range(n):
            sender = f"49170{(i % 1000):07d}"
            body = json.dumps({"object": "whatsapp_business_account", "entry": [{
                "id": "102290129340398", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp", "metadata": {
                        "display_phone_number": "15550000001",
                        "phone_number_id": "100000000000001"},
                    "contacts": [{"profile": {"name": f"Lead {i % 1000}"}, "wa_id": sender}],
                    "messages": [{"from": sender, "id": f"wamid.wrk.{run}.{i}",
                                  "timestamp": str(now), "type": "text",
                                  "text": {"body": f"Hola, ¿tienen el modelo {i} en stock?"}}]}}]}]},
                separators=(",", ":"))
            sig = hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
            f.write(f"sha256={sig}\t{body}\n")


def counter(server, name, label):
    text = urllib.request.urlopen(server.base + "/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def mean(server, name):
    """Mean of a histogram (sum / count) over the run."""
    text = urllib.request.urlopen(server.base + "/metrics", timeout=5).read().decode()
    got = {}
    for line in text.splitlines():
        for part in ("_sum", "_count"):
            if line.startswith(name + part):
                got[part] = got.get(part, 0.0) + float(line.rsplit(" ", 1)[1])
    return got.get("_sum", 0.0) / got["_count"] if got.get("_count") else 0.0, got.get("_count", 0)


def steps(server):
    """Per writer step (wahook_db_step_duration_seconds{step}): (count, total seconds)."""
    text = urllib.request.urlopen(server.base + "/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'wahook_(?:db_step_duration|write_gate_wait)_seconds_(sum|count)\{(?:step|writer)="([a-z_]+)"\} (\S+)', line)
        if m:
            key = m.group(2) if "step" in line else "gate wait (" + m.group(2) + ")"
            out.setdefault(key, [0.0, 0.0])[0 if m.group(1) == "count" else 1] += float(m.group(3))
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_checkpoints(server):
    """PostgreSQL's checkpoints so far (timed, requested), WAL bytes written and max_wal_size: a
    requested checkpoint inside the run (the log reached max_wal_size) shows in the ack p99."""
    row = server.query("SELECT checkpoints_timed, checkpoints_req, (SELECT wal_bytes FROM pg_stat_wal), "
                       "current_setting('max_wal_size') FROM pg_stat_bgwriter")[0]
    return int(row[0]), int(row[1]), int(row[2]), row[3]


server = drill.Server(args.backend, "wrk")
try:
    server.start()
    path = os.path.join(server.work, "bodies.tsv")
    n = args.bodies or 15_000 * args.seconds
    bodies(path, n, os.getpid())
    lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk", "signed-posts.lua")
    cpu0 = cpu_seconds(server.proc.pid)
    ckpt0 = pg_checkpoints(server) if args.backend == "postgres" else None
    perf = None
    if args.perf:
        perf = subprocess.Popen(["perf", "record", "-q", "-F", "199", "--call-graph", "dwarf,16384", "-o", args.perf,
                                 "-p", str(server.proc.pid), "--", "sleep", str(args.seconds)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", lua,
         server.base, "--", path, "2"], capture_output=True, text=True, check=True).stdout
    acked_at = time.monotonic()
    if perf:
        perf.wait()
    accepted = counter(server, "wahook_webhooks_received_total", 'outcome="accepted"')
    while counter(server, "wahook_events_processed_total", 'outcome="processed"') < accepted:
        if time.monotonic() - acked_at > 300:
            sys.exit("processing did not catch up within 300 s")
        time.sleep(0.05)
    processed_at = time.monotonic()
    cpu = cpu_seconds(server.proc.pid) - cpu0
    print(out.strip())
    rate = re.search(r"rate (\d+)/s", out).group(1)
    # wrk loads the bodies before its clock starts: the load began its duration before it ended.
    load_started = acked_at - float(re.search(r"seconds ([0-9.]+)", out).group(1))
    lat = re.search(r"p50 ([0-9.]+) p90 [0-9.]+ p99 ([0-9.]+)", out)
    non2xx = re.search(r"non_2xx (\d+)", out).group(1)
    lag = drill.metric_quantile(server, "wahook_processing_lag_seconds", 0.99)
    print(f"bench wrk [{args.backend}]: connections {args.connections}, seconds {args.seconds}, "
          f"ack_rate {rate}/s, ack_p50_ms {lat.group(1)}, ack_p99_ms {lat.group(2)}, "
          f"non_2xx {non2xx}, accepted {int(accepted)}, "
          f"processed_rate {accepted / (processed_at - load_started):.0f}/s, "
          f"catch_up_s {processed_at - acked_at:.1f}, lag_p99_ms {lag * 1000:.0f}, "
          f"server_cpu_s {cpu:.1f} ({cpu / (processed_at - load_started):.2f} cores)", flush=True)
    inbox_ms, inbox_n = mean(server, "wahook_inbox_commit_duration_seconds")
    inbox_size, _ = mean(server, "wahook_inbox_batch_size")
    store_ms, store_n = mean(server, "wahook_store_commit_duration_seconds")
    store_size, _ = mean(server, "wahook_store_batch_size")
    print(f"bench wrk [{args.backend}]: inbox commits {inbox_n:.0f} x {inbox_size:.1f} requests, "
          f"{inbox_ms * 1000:.2f} ms each; store commits {store_n:.0f} x {store_size:.1f} sets, "
          f"{store_ms * 1000:.2f} ms each; server CPU per accepted event "
          f"{cpu / max(accepted, 1) * 1e6:.0f} us", flush=True)
    parts = ", ".join(f"{k} {n:.0f} x {t / n * 1e3:.2f} ms = {t / max(accepted, 1) * 1e6:.1f} us/event"
                      for k, (n, t) in steps(server).items() if n)
    print(f"bench wrk [{args.backend}]: writer steps: {parts}", flush=True)
    if ckpt0:
        ckpt1 = pg_checkpoints(server)
        print(f"bench wrk [postgres]: server checkpoints during the run: timed {ckpt1[0] - ckpt0[0]}, "
              f"requested {ckpt1[1] - ckpt0[1]} (max_wal_size {ckpt1[3]}); WAL written "
              f"{(ckpt1[2] - ckpt0[2]) / 2**20:.0f} MB, {(ckpt1[2] - ckpt0[2]) / max(accepted, 1) / 1024:.1f} kB "
              f"per accepted event", flush=True)
    if args.metrics:
        with open(args.metrics, "wb") as f:
            f.write(urllib.request.urlopen(server.base + "/metrics", timeout=5).read())
finally:
    server.cleanup()
