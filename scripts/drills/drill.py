"""What every drill needs: a release build, a server it can start and kill, the database it
writes (SQLite file or a PostgreSQL schema of its own), loadgen, and one summary line."""

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "wahook")
PG_URL = "postgres://postgres@127.0.0.1:5432/test"


def build():
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "wahook"], cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A wahook on a loopback port with its own database; `kill()` is kill -9."""

    def __init__(self, backend, name, extra_env=None):
        self.backend = backend
        self.work = tempfile.mkdtemp(prefix=f"wahook-drill-{name}-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env.update({
            "WAHOOK_SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "WAHOOK_LOG__FILTER": "warn",
            "WAHOOK_HEALTH__GAUGE_INTERVAL_MS": "500",
        })
        if backend == "sqlite":
            self.db_path = os.path.join(self.work, "wahook.db")
            self.env["WAHOOK_DATABASE__URL"] = f"sqlite://{self.db_path}"
        else:
            self.schema = f"drill_{name}_{os.getpid()}"
            self.env["WAHOOK_DATABASE__URL"] = PG_URL
            self.env["WAHOOK_DATABASE__SCHEMA"] = self.schema
        self.env.update(extra_env or {})
        self.proc = None
        self.log = open(os.path.join(self.work, "wahook.log"), "ab")
        subprocess.run([BIN, "migrate"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def start(self, timeout=30):
        self.proc = subprocess.Popen([BIN, "serve"], env=self.env, stdout=self.log, stderr=self.log)
        return self.wait_healthy(timeout)

    def wait_healthy(self, timeout=30):
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                urllib.request.urlopen(self.base + "/health", timeout=1).read()
                return time.monotonic() - started
            except Exception:
                time.sleep(0.05)
        sys.exit(f"wahook did not answer /health within {timeout} s (log: {self.log.name})")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def query(self, sql):
        """Rows of a query, as lists of strings."""
        if self.backend == "sqlite":
            with sqlite3.connect(self.db_path, timeout=30) as db:
                return [[str(v) for v in row] for row in db.execute(sql).fetchall()]
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-At", "-F", "\t",
             "-c", f"SET search_path TO {self.schema}; {sql}"],
            check=True, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.splitlines() if line and line != "SET"]

    def scalar(self, sql):
        return int(self.query(sql)[0][0])

    def wait_settled(self, timeout=120):
        """Until no event is pending (processing caught up); returns the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.scalar("SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'") == 0:
                return time.monotonic() - started
            time.sleep(0.2)
        sys.exit("events still pending after %d s" % timeout)

    def cleanup(self):
        self.stop()
        if self.backend == "postgres":
            subprocess.run(
                ["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                 f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"],
                env={**os.environ, "PGOPTIONS": "--client-min-messages=warning"}, check=False)


def loadgen(server, record, requests, rate, connections=8, extra=(), nice=None):
    """Starts `wahook loadgen` against the server (persisting through restarts)."""
    args = ([] if nice is None else ["nice", "-n", str(nice)]) + [BIN, "loadgen", "--quiet", "--persist", "--url", server.base + "/webhooks/whatsapp",
            "--requests", str(requests), "--rate", str(rate), "--connections", str(connections),
            "--record", record, "--max-seconds", "120", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def loadgen_report(proc):
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit("loadgen failed:\n" + out)
    m = re.search(r"requests: (\d+) sent, (\d+) ok \(200\), (\d+) non-200 \((\d+) × 503, (\d+) other 5xx\), (\d+) transport errors", out)
    p99 = re.search(r"p99 ([0-9.]+)", out)
    sent, ok, non200, s503, s5xx, errors = map(int, m.groups())
    return {"sent": sent, "acked": ok, "non_200": non200, "503": s503, "other_5xx": s5xx,
            "transport_errors": errors, "ack_p99_ms": float(p99.group(1)) if p99 else 0.0,
            "text": out}


def acked(record):
    """The wamids of acknowledged message payloads, from loadgen's record file."""
    wamids = []
    with open(record) as f:
        for line in f:
            kind, ids = line.rstrip("\n").split("\t")[:2]
            if kind == "messages":
                wamids.extend(ids.split(","))
    return wamids


def exactly_once(server, wamids):
    """(lost, duplicated) among acknowledged wamids, read from the database."""
    counts = {w: int(n) for w, n in server.query(
        "SELECT wamid, COUNT(*) FROM messages WHERE wamid LIKE 'wamid.lg.%' GROUP BY wamid")}
    lost = sum(1 for w in wamids if counts.get(w, 0) == 0)
    duplicated = sum(1 for n in counts.values() if n > 1)
    return lost, duplicated


def counts_agree(server):
    """Conversations whose message_count differs from their stored messages."""
    return server.scalar(
        "SELECT COUNT(*) FROM conversations c WHERE c.message_count <> "
        "(SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id AND m.message_type <> 'pending')")


def unsettled(server):
    """Events neither processed nor in the DLQ."""
    return server.scalar(
        "SELECT COUNT(*) FROM webhook_events e WHERE e.status <> 'processed' "
        "AND NOT EXISTS (SELECT 1 FROM webhook_dlq d WHERE d.event_id = e.id)")


def summary(name, backend, ok, **figures):
    line = f"drill {name} [{backend}]: " + ", ".join(f"{k} {v}" for k, v in figures.items())
    print(("PASS " if ok else "FAIL ") + line, flush=True)
    return 0 if ok else 1


def metric_sum(server, series):
    """The sum of a series over its label sets in the server's /metrics (`name` or `name{…}`)."""
    text = urllib.request.urlopen(server.base + "/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(series + " ") or line.startswith(series + "{"))


def metric_quantile(server, name, q):
    """The q-quantile of a histogram in the server's /metrics (linear within a bucket)."""
    text = urllib.request.urlopen(server.base + "/metrics", timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[float("inf") if le == "+Inf" else float(le)] = buckets.get(
                float("inf") if le == "+Inf" else float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return 0.0
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le in bounds:
        n = buckets[le]
        if n >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
    return prev_le


def signed_post(server):
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {
            "display_phone_number": "15550000001", "phone_number_id": "100000000000001"},
            "contacts": [{"profile": {"name": "Probe"}, "wa_id": "491799999999"}],
            "messages": [{"from": "491799999999", "id": f"wamid.probe.{time.time_ns()}",
                          "timestamp": str(int(time.time())), "type": "text",
                          "text": {"body": "probe"}}]}}]}]}).encode()
    sig = "sha256=" + hmac.new(b"demo-app-secret-change-me", body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(server.base + "/webhooks/whatsapp", data=body, headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": sig})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, res.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Retry-After")


def ready(server):
    try:
        with urllib.request.urlopen(server.base + "/ready", timeout=5) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def reasons_while(server, seconds, probe=None):
    """Watches `/ready` for `seconds` (and, with `probe`, posts a signed webhook until one gets
    503): returns (the first 503's reasons or None, the probe's last (status, Retry-After))."""
    started, not_ready, answer = time.monotonic(), None, (None, None)
    while time.monotonic() - started < seconds:
        if probe and answer[0] != 503:
            answer = signed_post(server)
        if not_ready is None:
            status, body = ready(server)
            if status == 503:
                not_ready = body.get("reasons")
        time.sleep(0.2)
    return not_ready, answer


def seconds_until_ready(server, what, timeout=60):
    """From now until `/ready` answers 200; exits the drill naming `what` past `timeout`."""
    started = time.monotonic()
    while ready(server)[0] != 200:
        if time.monotonic() - started > timeout:
            sys.exit(f"wahook did not become ready within {timeout} s of {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def kill_and_restart(server, kills, gap):
    """SIGKILL the server `kills` times, `gap()` seconds apart, restarting it each time;
    returns each restart's seconds until `/health` answered."""
    recoveries = []
    for _ in range(kills):
        time.sleep(gap())
        server.kill()
        killed = time.monotonic()
        server.start()
        recoveries.append(time.monotonic() - killed)
    return recoveries
