#!/usr/bin/env bash
# Proves the Grafana dashboard and the alert rules against a real Prometheus: starts wahook
# and a Prometheus scraping it every second, drives traffic (loadgen, rejected signatures, a
# Kapso event), then evaluates every PromQL expression of config/grafana/wahook.json and
# config/prometheus/alerts.yml through Prometheus's HTTP API. Fails on a parse error or an
# empty result. Also runs promtool on the rules and the shipped scrape config.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "installing Debian's prometheus"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

promtool check rules config/prometheus/alerts.yml
promtool check config config/prometheus/prometheus.yml

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build -q --bin wahook
BIN="$TARGET_DIR/debug/wahook"

WORK=$(mktemp -d)
WAHOOK_PORT=${WAHOOK_CHECK_PORT:-18190}
PROM_PORT=${PROM_CHECK_PORT:-19190}
cleanup() {
  [ -n "${PROM_PID:-}" ] && kill "$PROM_PID" 2>/dev/null || true
  [ -n "${WAHOOK_PID:-}" ] && kill "$WAHOOK_PID" 2>/dev/null || true
  [ -n "${FAKE_PID:-}" ] && kill "$FAKE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A local OpenAI-compatible provider and Graph API, so the agent's series have data: the
# demo number takes the load, a second number of the workspace has the agent.
FAKE_PORT=${FAKE_CHECK_PORT:-18290}
python3 - "$FAKE_PORT" <<'PY' 2>"$WORK/fake.log" &
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Fake(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path.endswith("/chat/completions"):
            out = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the check"},
                                "finish_reason": "stop"}], "usage": {"prompt_tokens": 20, "completion_tokens": 5}}
        elif "typing_indicator" in body:
            out = {"success": True}
        else:
            out = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.check.reply"}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Fake).serve_forever()
PY
FAKE_PID=$!
cat > "$WORK/wahook.toml" <<TOML
[graph]
base_url = "http://127.0.0.1:$FAKE_PORT"
version = "v23.0"
request_timeout_ms = 5000

[agents.demo]
base_url = "http://127.0.0.1:$FAKE_PORT/v1"
model = "gpt-4o-mini"
system_prompt = "You are the demo assistant."
reply_debounce_ms = 100

[[accounts]]
workspace = "demo"
phone_number_id = "100000000000001"
app_secret = "demo-app-secret-change-me"
verify_token = "demo-verify-token-change-me"
kapso_secret = "demo-kapso-secret-change-me"

[[accounts]]
workspace = "demo"
phone_number_id = "100000000000002"
app_secret = "demo-app-secret-change-me"
verify_token = "demo-verify-token-2"
agent = "demo"
access_token = "check-token"
TOML

WAHOOK_CONFIG="$WORK/wahook.toml" \
WAHOOK_SERVER__LISTEN="127.0.0.1:$WAHOOK_PORT" \
WAHOOK_DATABASE__URL="sqlite://$WORK/wahook.db" \
WAHOOK_HEALTH__GAUGE_INTERVAL_MS=500 \
WAHOOK_LOG__FILTER=warn \
  "$BIN" serve 2>"$WORK/wahook.log" &
WAHOOK_PID=$!

cat > "$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/config/prometheus/alerts.yml
scrape_configs:
  - job_name: wahook
    static_configs:
      - targets: ["127.0.0.1:$WAHOOK_PORT"]
YML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn 2>"$WORK/prometheus.log" &
PROM_PID=$!

python3 - "$WAHOOK_PORT" "$PROM_PORT" "$BIN" <<'PY'
import hashlib, hmac, json, re, subprocess, sys, time, urllib.parse, urllib.request

wahook_port, prom_port, binary = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{wahook_port}"
prom = f"http://127.0.0.1:{prom_port}"

def get(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()

def wait(what, ok, tries=120):
    for _ in range(tries):
        try:
            if ok():
                return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit(f"timed out waiting for {what}")

wait("wahook", lambda: "ok" in get(base + "/health"))
wait("prometheus", lambda: "Ready" in get(prom + "/-/ready"))

# Traffic: signed Meta messages (and statuses), a few rejections, one Kapso event.
subprocess.run([binary, "loadgen", "--url", base + "/webhooks/whatsapp", "--requests", "3000",
                "--rate", "600", "--connections", "8", "--status-every", "5"], check=True)
for sig in ["sha256=" + "0" * 64, None, "sha256=zz"]:
    req = urllib.request.Request(base + "/webhooks/whatsapp", data=b'{"entry":[]}', method="POST")
    if sig:
        req.add_header("X-Hub-Signature-256", sig)
    try:
        urllib.request.urlopen(req, timeout=5)
    except urllib.error.HTTPError:
        pass
kapso = b'{"message":{"id":"wamid.check.kapso","timestamp":"1767225600","type":"text","text":{"body":"hi"},"kapso":{"direction":"inbound"}},"conversation":{"phone_number":"+15550009999","phone_number_id":"100000000000001"},"phone_number_id":"100000000000001"}'
req = urllib.request.Request(base + "/webhooks/kapso", data=kapso, method="POST")
req.add_header("X-Webhook-Signature", hmac.new(b"demo-kapso-secret-change-me", kapso, hashlib.sha256).hexdigest())
req.add_header("X-Webhook-Event", "whatsapp.message.received")
req.add_header("X-Idempotency-Key", "check-observability-1")
urllib.request.urlopen(req, timeout=5)

# One message to the number with the agent: a turn, a provider call, a reply sent.
now = str(int(time.time()))
agent_msg = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
    "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000002", "phone_number_id": "100000000000002"},
    "contacts": [{"profile": {"name": "Check"}, "wa_id": "15550001234"}],
    "messages": [{"from": "15550001234", "id": "wamid.check.agent", "timestamp": now, "type": "text", "text": {"body": "hello agent"}}]}}]}]}).encode()
req = urllib.request.Request(base + "/webhooks/whatsapp", data=agent_msg, method="POST")
req.add_header("X-Hub-Signature-256", "sha256=" + hmac.new(b"demo-app-secret-change-me", agent_msg, hashlib.sha256).hexdigest())
urllib.request.urlopen(req, timeout=5)

def query(expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    return body

def accepted():
    r = query('sum(wahook_webhooks_received_total{outcome="accepted"})')["data"]["result"]
    return r and float(r[0]["value"][1]) >= 3000
wait("Prometheus to scrape the traffic", accepted)
wait("processing to finish", lambda: json.loads(get(base + "/health"))["inbox"]["pending_events"] == 0)
def replied():
    r = query('sum(wahook_agent_replies_total{outcome="sent"})')["data"]["result"]
    return r and float(r[0]["value"][1]) >= 1
wait("the agent's reply", replied)
time.sleep(3)  # a few more scrapes after the last event, so rates and gauges are current

dashboard = json.load(open("config/grafana/wahook.json"))
exprs = [(f"dashboard: {p['title']} [{t['refId']}]", t["expr"])
         for p in dashboard["panels"] for t in p.get("targets", [])]
rules = open("config/prometheus/alerts.yml").read()
for name, expr in re.findall(r"- alert: (\S+)\n\s+expr: (.+)", rules):
    exprs.append((f"alert: {name}", expr.strip()))
    # The alert's query without its threshold must have data.
    m = re.match(r"(.*\S)\s*(>|<|>=|<=|==|!=)\s*[0-9.]+$", expr.strip())
    if not m:
        sys.exit(f"alert {name}: expected `<query> <op> <number>`")
    exprs.append((f"alert query: {name}", m.group(1)))

failures = 0
for name, expr in exprs:
    concrete = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    body = query(concrete)
    if body.get("status") != "success":
        print(f"FAIL {name}: {body.get('error')}\n     {concrete}")
        failures += 1
        continue
    result = body["data"]["result"]
    empty_ok = name.startswith("alert: ")  # a firing condition is empty while healthy
    if not result and not empty_ok:
        print(f"FAIL {name}: empty result\n     {concrete}")
        failures += 1
        continue
    print(f"ok   {name}: {len(result)} series")
print(f"PromQL expressions: {len(exprs) - failures} ok, {failures} failing")
sys.exit(1 if failures else 0)
PY
