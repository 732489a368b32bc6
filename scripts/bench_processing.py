#!/usr/bin/env python3
"""End-to-end processing benchmark: a release wahook and `wahook loadgen` on this machine.

usage: scripts/bench_processing.py sqlite|postgres throughput|lag|memory

throughput: 50,000 one-message payloads from 10,000 senders at full speed; processed/s from
            the first request to the last event marked processed; statements per message.
lag:        the same at a fixed rate (half the measured throughput, --rate); ack-to-processed
            lag p50/p99 from the database (processed_at - received_at).
memory [S]: 100,000 payloads from 100,000 distinct senders with actors.idle_timeout_ms=2000
            (or WAHOOK_ACTORS__IDLE_TIMEOUT_MS); RSS with the actors alive, then each second for
            S seconds (4) while they stop idle.
live [N]:   100,000 payloads from N (100,000) senders, every actor kept alive (no idle stop,
            actors.max_live = 0): the RSS of N live conversations, and the processed rate.
"""
import os, re, signal, subprocess, sys, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "wahook")
PORT = 18082
WORK = "/tmp/wahook-bench-processing"
PG = "postgres://postgres@127.0.0.1:5432/test"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def sql(backend, query):
    if backend == "sqlite":
        import sqlite3
        con = sqlite3.connect(os.path.join(WORK, "bench.db"), timeout=60)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()
    out = sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-At", "-F", "|",
             "-c", f"SET search_path TO bench; {query}")
    rows = [l.split("|") for l in out.splitlines() if l and l != "SET"]
    return rows


def metric(text, name):
    """The sum of the series of `name` (its labelled series too, never another metric whose
    name starts with it: `wahook_conversation_actors` is not `…_evicted_total`)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    backend, mode = sys.argv[1], sys.argv[2]
    subprocess.run(["rm", "-rf", WORK])
    os.makedirs(WORK)
    env = dict(os.environ, WAHOOK_SERVER__LISTEN=f"127.0.0.1:{PORT}", WAHOOK_LOG__FILTER="warn")
    if backend == "sqlite":
        env["WAHOOK_DATABASE__URL"] = f"sqlite://{WORK}/bench.db"
    else:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc",
                        "DROP SCHEMA IF EXISTS bench CASCADE"], capture_output=True)
        env["WAHOOK_DATABASE__URL"] = PG
        env["WAHOOK_DATABASE__SCHEMA"] = "bench"
    requests, senders, extra = 50_000, 10_000, []
    if mode == "memory":
        requests, senders = 100_000, 100_000
        # 2 s unless the environment says otherwise (with WAHOOK_ACTORS__MAX_LIVE=0 and an idle
        # time longer than the load, all 100,000 are live at once, then stop together).
        env.setdefault("WAHOOK_ACTORS__IDLE_TIMEOUT_MS", "2000")
    if mode == "live":
        # Every conversation stays alive: no idle stop, no bound (what 100,000 live cost).
        requests, senders = 100_000, int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
        env["WAHOOK_ACTORS__IDLE_TIMEOUT_MS"] = "3600000"
        env["WAHOOK_ACTORS__MAX_LIVE"] = "0"
    if mode == "lag":
        extra = ["--rate", sys.argv[3] if len(sys.argv) > 3 else "3000"]
    server = subprocess.Popen([BIN, "serve"], env=env, stderr=open(os.path.join(WORK, "server.log"), "w"))
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        started = time.time()
        out = sh(BIN, "loadgen", "--url", f"http://127.0.0.1:{PORT}/webhooks/whatsapp",
                 "--requests", str(requests), "--connections", "64", "--senders", str(senders), *extra)
        print(out.strip())
        while True:
            done = int(sql(backend, "SELECT COUNT(*) FROM webhook_events WHERE status = 'processed'")[0][0])
            if done >= requests:
                break
            time.sleep(0.02)
        elapsed = time.time() - started
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()
        statements = metric(metrics, 'wahook_db_statements_total{component="store"}')
        batches = metric(metrics, "wahook_store_batch_size_count")
        sets = metric(metrics, "wahook_store_batch_size_sum")
        commit = metric(metrics, "wahook_store_commit_duration_seconds_sum")
        print(f"processed: {requests} messages in {elapsed:.2f} s = {requests / elapsed:.0f} messages/s end to end")
        print(f"store: {batches:.0f} transactions, mean {sets / batches:.1f} change sets, "
              f"mean commit {1000 * commit / batches:.2f} ms, {statements:.0f} statements = "
              f"{statements / requests:.3f} per message")
        if backend == "sqlite":
            lag = sql(backend, "SELECT (julianday(processed_at) - julianday(received_at)) * 86400000.0 FROM webhook_events")
        else:
            lag = sql(backend, "SELECT EXTRACT(EPOCH FROM (processed_at - received_at)) * 1000 FROM webhook_events")
        lags = sorted(float(r[0]) for r in lag)
        q = lambda p: lags[min(len(lags) - 1, int(p * (len(lags) - 1)))]
        print(f"ack-to-processed lag ms: p50 {q(0.5):.1f}  p95 {q(0.95):.1f}  p99 {q(0.99):.1f}  max {lags[-1]:.1f}")
        rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{server.pid}/status").read()).group(1)) // 1024
        live_now = metric(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode(),
                          "wahook_conversation_actors")
        print(f"RSS now: {rss()} MB with {live_now:.0f} live conversation actors")
        stat = open(f"/proc/{server.pid}/stat").read().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        print(f"server CPU: {cpu:.2f} s = {1e6 * cpu / requests:.0f} µs per event")
        if mode == "memory":
            # Past actors.idle_timeout_ms (2 s), or as long as asked (`memory SECONDS`): the live
            # count and the RSS every second meanwhile.
            wait = float(sys.argv[3]) if len(sys.argv) > 3 else 4
            waited = 0
            while waited < wait:
                time.sleep(1)
                waited += 1
                live = metric(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode(),
                              "wahook_conversation_actors")
                print(f"  +{waited} s: {live:.0f} live, RSS {rss()} MB")
            live = metric(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode(),
                          "wahook_conversation_actors")
            conversations = sql(backend, "SELECT COUNT(*) FROM conversations")[0][0]
            print(f"after idle stop: {live:.0f} live actors, {conversations} conversations, RSS {rss()} MB")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
