#!/usr/bin/env python3
"""wahook against its peer, one after the other in one run, under the same wrk client and the
same bodies (distinct wamids from --senders senders, signed for each server's secret): the
Node.js receiver of ../shared/peers (whatsapp-api-js: verifies the HMAC, persists nothing; two
processes), then wahook on SQLite, on PostgreSQL, and one cluster-mode node (PostgreSQL and
RabbitMQ), each a release build with processing on. Prints per server the ack rate, the ack p99,
how busy the host was (all cores, /proc/stat) and the ratio to the Node receiver; for wahook
also the end-to-end processed rate and its server CPU per event.

These machines vary by 2x between days: only the ratios of one run carry. BENCHMARKS.md keeps
them with the machine and the day.

Usage: scripts/bench-peers.py [--seconds 15] [--connections 64] [--senders 10000]
                              [--only node,sqlite,postgres,cluster] [--build] [--perf DIR]
Needs wrk (apt-get install wrk), node and npm (the peer is installed once into
~/.cache/wahook-peer), RabbitMQ for the cluster node, and `cargo build --release`."""

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "drills"))
import drill  # noqa: E402
import cluster as cluster_drill  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--seconds", type=int, default=15)
p.add_argument("--connections", type=int, default=64)
p.add_argument("--senders", type=int, default=10_000)
p.add_argument("--only", default="node,sqlite,postgres,cluster")
p.add_argument("--peer", default=os.path.join(HERE, "..", "..", "shared", "peers"),
               help="the peer's folder (server.mjs, package.json)")
p.add_argument("--build", action="store_true")
p.add_argument("--perf", metavar="DIR",
               help="record each wahook server with `perf record --call-graph dwarf` during its load, into DIR/<server>.data (slows it: not for the figures)")
args = p.parse_args()
if args.build:
    drill.build()
if not shutil.which("wrk"):
    sys.exit("wrk is missing: apt-get install wrk")

LUA = os.path.join(HERE, "wrk", "signed-posts.lua")
WAHOOK_SECRET = b"demo-app-secret-change-me"
PEER_SECRET = b"peer-secret"
RUN = os.getpid()


def write_bodies(path, n, secret, tag):
    """n signed text-message webhooks from args.senders senders, distinct wamids."""
    now = int(time.time())
    with open(path, "w") as f:
        for i in range(n):
            sender = f"49170{(i % args.senders):07d}"
            body = json.dumps({"object": "whatsapp_business_account", "entry": [{
                "id": "102290129340398", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp", "metadata": {
                        "display_phone_number": "15550000001",
                        "phone_number_id": "100000000000001"},
                    "contacts": [{"profile": {"name": f"Lead {i % args.senders}"}, "wa_id": sender}],
                    "messages": [{"from": sender, "id": f"wamid.peers.{RUN}.{tag}.{i}",
                                  "timestamp": str(now), "type": "text",
                                  "text": {"body": f"Hola, ¿tienen el modelo {i} en stock?"}}]}}]}]},
                separators=(",", ":"))
            sig = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
            f.write(f"sha256={sig}\t{body}\n")


def host_ticks():
    """(busy, total) jiffies of all cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(base, bodies):
    """Runs wrk; returns (rate, p99 ms, non-2xx, host busy fraction, its output)."""
    b0, t0 = host_ticks()
    out = subprocess.run(
        ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", LUA,
         base, "--", bodies, "2"], capture_output=True, text=True, check=True).stdout
    b1, t1 = host_ticks()
    rate = float(re.search(r"rate (\d+)/s", out).group(1))
    p99 = float(re.search(r"p99 ([0-9.]+)", out).group(1))
    non2xx = int(re.search(r"non_2xx (\d+)", out).group(1))
    if "ran out of bodies" in out:
        sys.exit("wrk ran out of bodies (duplicates would be measured): raise the count")
    return rate, p99, non2xx, (b1 - b0) / max(t1 - t0, 1), out


def counter(base, name, label):
    text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


def peer_dir():
    """The peer, installed once (npm) outside the clone."""
    cache = os.path.expanduser("~/.cache/wahook-peer")
    if not os.path.exists(os.path.join(cache, "node_modules", "whatsapp-api-js")):
        os.makedirs(cache, exist_ok=True)
        for name in ("server.mjs", "package.json"):
            shutil.copy(os.path.join(args.peer, name), cache)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=cache, check=True)
    return cache


def run_node(n):
    port = drill.free_port()
    proc = subprocess.Popen(["node", os.path.join(peer_dir(), "server.mjs")],
                            env=dict(os.environ, WORKERS="2", PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/_count", timeout=1).read()
                break
            except Exception:
                time.sleep(0.05)
        bodies = os.path.join("/tmp", f"bench-peers-{RUN}-node.tsv")
        write_bodies(bodies, n, PEER_SECRET, "node")
        rate, p99, non2xx, busy, _ = wrk(base, bodies)
        os.unlink(bodies)
        return {"rate": rate, "p99": p99, "non2xx": non2xx, "busy": busy}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def run_wahook(server, n, tag):
    server.start()
    try:
        bodies = os.path.join(server.work, "bodies.tsv")
        write_bodies(bodies, n, WAHOOK_SECRET, tag)
        cpu0 = cpu_seconds(server.proc.pid)
        perf = None
        if args.perf:
            os.makedirs(args.perf, exist_ok=True)
            perf = subprocess.Popen(["perf", "record", "-F", "199", "--call-graph", "dwarf,16384", "-p", str(server.proc.pid),
                                     "-o", os.path.join(args.perf, f"{tag}.data")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.monotonic()
        rate, p99, non2xx, busy, out = wrk(server.base, bodies)
        acked_at = time.monotonic()
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        accepted = counter(server.base, "wahook_webhooks_received_total", 'outcome="accepted"')
        while counter(server.base, "wahook_events_processed_total", 'outcome="processed"') < accepted:
            if time.monotonic() - acked_at > 300:
                sys.exit(f"{tag}: processing did not catch up within 300 s")
            time.sleep(0.05)
        done = time.monotonic()
        cpu = cpu_seconds(server.proc.pid) - cpu0
        return {"rate": rate, "p99": p99, "non2xx": non2xx, "busy": busy,
                "processed": accepted / (done - started), "catch_up": done - acked_at,
                "cpu_us": cpu / max(accepted, 1) * 1e6}
    finally:
        server.stop()
        server.cleanup()


only = args.only.split(",")
n = 40_000 * args.seconds  # more than the fastest server takes: never a repeated body
results = {}
if "node" in only:
    results["node"] = run_node(n)
if "sqlite" in only:
    results["sqlite"] = run_wahook(drill.Server("sqlite", "peers"), n, "sqlite")
if "postgres" in only:
    results["postgres"] = run_wahook(drill.Server("postgres", "peers"), n, "postgres")
if "cluster" in only:
    cluster_drill.amqp_up()
    schema, prefix = f"bench_peers_{RUN}", f"peers{RUN}"
    node = cluster_drill.Node("peers-1", schema, prefix)
    try:
        results["cluster"] = run_wahook(node, n, "cluster")
    finally:
        cluster_drill.delete_queues(prefix)

node_rate = results.get("node", {}).get("rate")
pg_rate = results.get("postgres", {}).get("rate")
print(f"bench peers: {args.seconds} s each, {args.connections} connections, {args.senders} senders, "
      f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
print("| server | acks/s | p99 ms | host busy | vs Node | processed/s | CPU/event | non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name, r in results.items():
    ratio = f"{r['rate'] / node_rate:.2f}x" if node_rate else "-"
    if name == "cluster" and pg_rate:
        ratio += f" ({r['rate'] / pg_rate:.2f}x PostgreSQL)"
    processed = f"{r['processed']:.0f}" if "processed" in r else "-"
    cpu = f"{r['cpu_us']:.0f} us" if "cpu_us" in r else "-"
    print(f"| {name} | {r['rate']:.0f} | {r['p99']:.1f} | {r['busy'] * 100:.0f} % | {ratio} | "
          f"{processed} | {cpu} | {r['non2xx']} |")
