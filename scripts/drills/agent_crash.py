#!/usr/bin/env python3
"""Agent crash drill: an account with an AI agent answers 30 senders through a local
OpenAI-compatible provider and a local Graph API (both slow enough that turns are in flight)
while the server is killed with SIGKILL at random moments five times and restarted each time.
At the end no burst was sent twice (each reply names the burst's newest message, so two sends
of one text to one person are a double answer), and every send Graph received is recorded:
`sent` with Graph's wamid, or `unknown` with the reason (the process died between the send and
its record; it is never resent).

Usage: scripts/drills/agent_crash.py sqlite|postgres [--build]"""

import json
import tempfile
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

backend = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "sqlite"
if "--build" in sys.argv:
    drill.build()
random.seed(int(os.environ.get("DRILL_SEED", "11")))
KILLS = 5
AGENT_PNID = "100000000000002"
SENDERS = 30
RATE = 20
REQUESTS = 600  # 30 s at RATE

sends = []  # (to, text, wamid) as Graph received them
calls = [0]
lock = threading.Lock()


class Fake(BaseHTTPRequestHandler):
    """Chat completions (≈300 ms) and Graph's send API (≈100 ms), like the real ones."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path.endswith("/chat/completions"):
            time.sleep(random.uniform(0.2, 0.4))
            newest = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]
            with lock:
                calls[0] += 1
            out = {"id": "chatcmpl-drill", "object": "chat.completion", "model": body.get("model"),
                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                       "role": "assistant", "content": "re: " + str(newest.get("content"))}}],
                   "usage": {"prompt_tokens": 40, "completion_tokens": 8, "total_tokens": 48}}
        elif "typing_indicator" in body or body.get("status") == "read":
            out = {"success": True}
        else:
            time.sleep(random.uniform(0.05, 0.15))
            with lock:
                wamid = f"wamid.drill.reply.{len(sends)}"
                sends.append((body.get("to") or body.get("recipient"), body["text"]["body"], wamid))
            out = {"messaging_product": "whatsapp", "contacts": [{"input": body.get("to"),
                   "wa_id": body.get("to")}], "messages": [{"id": wamid}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


fake_port = drill.free_port()
class Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a killed server's half-finished requests


fake = Quiet(("127.0.0.1", fake_port), Fake)
fake.daemon_threads = True
threading.Thread(target=fake.serve_forever, daemon=True).start()

config_dir = tempfile.mkdtemp(prefix="wahook-drill-agent-config-")
config = os.path.join(config_dir, "wahook.toml")
with open(config, "w") as f:
    f.write(f"""
[graph]
base_url = "http://127.0.0.1:{fake_port}"
version = "v23.0"
request_timeout_ms = 5000

[agents.sales]
base_url = "http://127.0.0.1:{fake_port}/v1"
model = "gpt-4o-mini"
system_prompt = "You answer customers of the drill shop."
reply_debounce_ms = 100

[[accounts]]
workspace = "demo"
phone_number_id = "100000000000001"
app_secret = "demo-app-secret-change-me"
verify_token = "demo-verify-token-change-me"

[[accounts]]
workspace = "demo"
phone_number_id = "{AGENT_PNID}"
app_secret = "demo-app-secret-change-me"
verify_token = "demo-verify-token-2"
agent = "sales"
access_token = "drill-token"
""")

server = drill.Server(backend, "agent", extra_env={"WAHOOK_CONFIG": config})
try:
    server.start()
    record = os.path.join(server.work, "acked.tsv")
    load = drill.loadgen(server, record, requests=REQUESTS, rate=RATE, connections=4,
                         extra=("--phone-number-id", AGENT_PNID, "--senders", str(SENDERS)))
    time.sleep(2)
    recoveries = drill.kill_and_restart(server, KILLS, lambda: random.uniform(2.0, 5.0))
    report = drill.loadgen_report(load)
    server.wait_settled()
    # Turns still running (and bursts a kill interrupted, answered after the restart) end;
    # then nothing changes for 3 s.
    last, still = None, time.monotonic()
    while time.monotonic() - still < 3:
        now = (server.scalar("SELECT COUNT(*) FROM outbound_messages"),
               server.scalar("SELECT COUNT(*) FROM outbound_messages WHERE state = 'pending_send'"),
               len(sends))
        if now != last or now[1] > 0:
            last, still = now, time.monotonic()
        if time.monotonic() - still > 120:
            sys.exit("agent turns did not settle within 120 s")
        time.sleep(0.2)

    with lock:
        received = list(sends)
    per_reply = {}
    for to, text, _ in received:
        per_reply[(to, text)] = per_reply.get((to, text), 0) + 1
    doubled = sum(1 for n in per_reply.values() if n > 1)
    rows = server.query("SELECT state, COALESCE(body, ''), COALESCE(wamid, ''), "
                        "COALESCE(error, '') FROM outbound_messages")
    sent_wamids = {wamid for state, _, wamid, _ in rows if state == "sent"}
    unknown_bodies = {body for state, body, _, error in rows if state == "unknown" and error}
    unrecorded = sum(1 for _, text, wamid in received
                     if wamid not in sent_wamids and text not in unknown_bodies)
    states = {}
    for state, *_ in rows:
        states[state] = states.get(state, 0) + 1
    wamids = drill.acked(record)
    lost, duplicated = drill.exactly_once(server, wamids)
    open_events = drill.unsettled(server)
    ok = (doubled == 0 and unrecorded == 0 and lost == 0 and duplicated == 0
          and open_events == 0 and report["other_5xx"] == 0 and len(received) > 0
          and states.get("pending_send", 0) == 0)
    sys.exit(drill.summary(
        "agent-crash", backend, ok,
        kills=KILLS, sent=report["sent"], acknowledged=report["acked"], lost=lost,
        duplicated=duplicated, provider_calls=calls[0], graph_sends=len(received),
        bursts_sent_twice=doubled, sends_unrecorded=unrecorded,
        turns_sent=states.get("sent", 0), turns_unknown=states.get("unknown", 0),
        turns_failed=states.get("failed", 0), turns_skipped=states.get("skipped", 0),
        other_5xx=report["other_5xx"], recovery_max_s=f"{max(recoveries):.2f}"))
finally:
    server.cleanup()
    fake.shutdown()
