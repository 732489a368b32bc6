#!/usr/bin/env python3
"""AI agent benchmark: a release wahook, `wahook loadgen`, and a local OpenAI-compatible
provider + Graph API (this script) on this machine. SQLite or PostgreSQL.

usage: scripts/bench_agent.py sqlite|postgres isolation|overhead

isolation: 1,000 messages/s for 30 s to a number without an agent, twice: alone, then while
           one conversation of a number with an agent keeps a provider call that takes 5 s in
           flight (a message every 0.5 s). Reports the others' ack-to-processed lag p50/p99
           (from the database) for both runs.
overhead:  500 conversations, one message each, to the agent number with a provider that
           answers at once; reports the mean turn time, the mean provider request time, and
           the difference: the agent's own cost per turn (context, tokenizer, the records
           before and after the send, the local Graph send, the outbound message's commit).
"""
import hashlib, hmac, json, os, re, signal, subprocess, sys, threading, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench_processing import metric, sh  # the same helpers (this folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.environ.get("WAHOOK_BIN", os.path.join(TARGET, "release", "wahook"))
PORT, FAKE = 18083, 18084
WORK = "/tmp/wahook-bench-agent"
PG = "postgres://postgres@127.0.0.1:5432/test"
SECRET = b"bench-secret"
DELAY = {"provider": 0.0}


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path.endswith("/chat/completions"):
            time.sleep(DELAY["provider"])
            out = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Thanks, noted."},
                                "finish_reason": "stop"}], "usage": {"prompt_tokens": 30, "completion_tokens": 4}}
        elif "typing_indicator" in body:
            out = {"success": True}
        else:
            out = {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.bench.{time.time_ns()}"}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def sql(backend, query):
    if backend == "sqlite":
        import sqlite3
        con = sqlite3.connect(os.path.join(WORK, "bench.db"), timeout=60)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()
    out = sh("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-At", "-F", "|",
             "-c", f"SET search_path TO benchagent; {query}")
    return [l.split("|") for l in out.splitlines() if l and l != "SET"]


def message(pnid, sender, wamid):
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000002", "phone_number_id": pnid},
        "contacts": [{"profile": {"name": "Bench"}, "wa_id": sender}],
        "messages": [{"from": sender, "id": wamid, "timestamp": str(int(time.time())), "type": "text",
                      "text": {"body": "hello, is this available?"}}]}}]}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}/webhooks/whatsapp", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("X-Hub-Signature-256", "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest())
    urllib.request.urlopen(req, timeout=10).read()


def start(backend):
    subprocess.run(["rm", "-rf", WORK])
    os.makedirs(WORK)
    with open(os.path.join(WORK, "wahook.toml"), "w") as f:
        f.write(f"""
[graph]
base_url = "http://127.0.0.1:{FAKE}"
version = "v23.0"
request_timeout_ms = 10000

[agents.bench]
base_url = "http://127.0.0.1:{FAKE}/v1"
model = "gpt-4o-mini"
system_prompt = "You are a helpful shop assistant. Answer briefly."
request_timeout_ms = 20000
reply_debounce_ms = 200

[[accounts]]
workspace = "bench"
phone_number_id = "100000000000001"
app_secret = "bench-secret"
verify_token = "v1"

[[accounts]]
workspace = "bench"
phone_number_id = "100000000000002"
app_secret = "bench-secret"
verify_token = "v2"
agent = "bench"
access_token = "bench-token"
""")
    env = dict(os.environ, WAHOOK_CONFIG=os.path.join(WORK, "wahook.toml"),
               WAHOOK_SERVER__LISTEN=f"127.0.0.1:{PORT}", WAHOOK_LOG__FILTER="warn")
    if backend == "sqlite":
        env["WAHOOK_DATABASE__URL"] = f"sqlite://{WORK}/bench.db"
    else:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc",
                        "DROP SCHEMA IF EXISTS benchagent CASCADE"], capture_output=True)
        env["WAHOOK_DATABASE__URL"] = PG
        env["WAHOOK_DATABASE__SCHEMA"] = "benchagent"
    server = subprocess.Popen([BIN, "serve"], env=env, stderr=open(os.path.join(WORK, "server.log"), "w"))
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
            return server
        except Exception:
            time.sleep(0.05)
    sys.exit("wahook did not start")


def lag_run(backend, with_agent):
    server = start(backend)
    stop = threading.Event()
    sent = [0]

    def agent_traffic():
        i = 0
        while not stop.is_set():
            message("100000000000002", "15559990001", f"wamid.agent.{i}")
            sent[0] += 1
            i += 1
            stop.wait(0.5)

    try:
        if with_agent:
            DELAY["provider"] = 5.0
            t = threading.Thread(target=agent_traffic)
            t.start()
        out = sh(BIN, "loadgen", "--url", f"http://127.0.0.1:{PORT}/webhooks/whatsapp", "--quiet",
                 "--phone-number-id", "100000000000001", "--secret", "bench-secret",
                 "--requests", "30000", "--rate", "1000", "--connections", "32", "--senders", "5000")
        stop.set()
        if with_agent:
            t.join()
        while int(sql(backend, "SELECT COUNT(*) FROM webhook_events WHERE status = 'pending'")[0][0]) > 0:
            time.sleep(0.05)
        if backend == "sqlite":
            q = ("SELECT (julianday(processed_at) - julianday(received_at)) * 86400000.0 FROM webhook_events "
                 "WHERE account_id = (SELECT id FROM whatsapp_accounts WHERE phone_number_id = '100000000000001')")
        else:
            q = ("SELECT EXTRACT(EPOCH FROM (processed_at - received_at)) * 1000 FROM webhook_events "
                 "WHERE account_id = (SELECT id FROM whatsapp_accounts WHERE phone_number_id = '100000000000001')")
        lags = sorted(float(r[0]) for r in sql(backend, q))
        p = lambda x: lags[min(len(lags) - 1, int(x * (len(lags) - 1)))]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()
        turns = metric(metrics, "wahook_agent_turn_duration_seconds_count")
        label = "with the agent (5 s provider)" if with_agent else "without the agent"
        print(f"{label}: {out.splitlines()[1]}; {len(lags)} events; lag ms p50 {p(0.5):.1f} p99 {p(0.99):.1f} "
              f"max {lags[-1]:.1f}; agent messages {sent[0]}, turns finished {turns:.0f}")
        return p(0.99)
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def overhead(backend):
    DELAY["provider"] = 0.0
    server = start(backend)
    try:
        n = 500
        for i in range(n):
            message("100000000000002", f"1555800{i:05d}", f"wamid.ov.{i}")
            time.sleep(0.02)
        while int(sql(backend, "SELECT COUNT(*) FROM outbound_messages WHERE state = 'sent'")[0][0]) < n:
            time.sleep(0.05)
        time.sleep(1)
        m = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()
        turn = metric(m, "wahook_agent_turn_duration_seconds_sum") / metric(m, "wahook_agent_turn_duration_seconds_count")
        prov = (metric(m, "wahook_agent_provider_request_duration_seconds_sum")
                / metric(m, "wahook_agent_provider_request_duration_seconds_count"))
        print(f"{n} turns: mean turn {turn * 1e6:.0f} µs, mean provider request {prov * 1e6:.0f} µs, "
              f"agent overhead per turn {(turn - prov) * 1e6:.0f} µs")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main():
    backend, mode = sys.argv[1], sys.argv[2]
    fake = ThreadingHTTPServer(("127.0.0.1", FAKE), Fake)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    if mode == "isolation":
        base = lag_run(backend, False)
        loaded = lag_run(backend, True)
        print(f"others' lag p99: {base:.1f} ms alone, {loaded:.1f} ms beside the agent "
              f"({100 * (loaded - base) / base:+.1f} %)")
    else:
        overhead(backend)


if __name__ == "__main__":
    main()
