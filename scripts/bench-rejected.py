#!/usr/bin/env python3
"""What a hostile request costs the server, measured from outside on a release build:

1. Unsigned 3 MB bodies (a wrong signature) against a server with 300 accounts of distinct app
   secrets (3 workspaces of 100): one kind names no phone number or WABA, one names a known
   phone number. For each: the server's CPU time per rejected request (utime + stime from
   /proc) and its peak RSS (VmHWM) above what it held before.
2. Six concurrent `GET /api/v1/events?limit=200` over 20 stored events of 3 MB each: the peak
   RSS above what the server held before the lists.

Usage: scripts/bench-rejected.py [--bin PATH] [--requests N]
(default binary: $CARGO_TARGET_DIR/release/wahook). SQLite, in a temporary directory.
Run it against two builds on the same day and compare; absolute figures vary between days."""

import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "drills"))
import drill  # noqa: E402

ARGS = sys.argv[1:]
BIN = ARGS[ARGS.index("--bin") + 1] if "--bin" in ARGS else drill.BIN
REQUESTS = int(ARGS[ARGS.index("--requests") + 1]) if "--requests" in ARGS else 10
ACCOUNTS = 300
PAD = 3 * 1024 * 1024 - 4096
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pid):
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def post(port, path, body, headers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def get(port, path, token):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, len(data)


def config(work):
    # 100 per workspace: the default tenants.max_accounts_per_workspace (and readable by builds
    # that predate the key).
    lines = []
    for i in range(ACCOUNTS):
        lines += [
            "[[accounts]]",
            f'workspace = "ws{i // 100}"',
            f'phone_number_id = "{100000000000000 + i}"',
            f'app_secret = "secret-{i:04d}-xxxxxxxx"',
            f'verify_token = "verify-{i}"',
            "",
        ]
    path = os.path.join(work, "wahook.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def rejected(pid, port, body, label):
    before_cpu = cpu_seconds(pid)
    rss_before = status_kb(pid, "VmRSS")
    reset_peak(pid)
    statuses = set()
    for _ in range(REQUESTS):
        statuses.add(post(port, "/webhooks/whatsapp", body, {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
        }))
    cpu = (cpu_seconds(pid) - before_cpu) / REQUESTS
    peak = status_kb(pid, "VmHWM")
    print(f"{label}: {REQUESTS} requests answered {sorted(statuses)}; "
          f"CPU {cpu * 1000:.1f} ms per request; peak RSS +{(peak - rss_before) / 1024:.1f} MB "
          f"(from {rss_before / 1024:.1f} MB)")


def main():
    work = tempfile.mkdtemp(prefix="wahook-bench-rejected-")
    port = drill.free_port()
    env = dict(os.environ)
    env.update({
        "WAHOOK_CONFIG": config(work),
        "WAHOOK_SERVER__LISTEN": f"127.0.0.1:{port}",
        "WAHOOK_DATABASE__URL": f"sqlite://{work}/wahook.db",
        "WAHOOK_LOG__FILTER": "error",
    })
    # Run in the work directory: each build then uses its own compiled-in defaults, not this
    # tree's config/default.toml (an older build does not know the newer keys).
    subprocess.run([BIN, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL, cwd=work)
    token = subprocess.run(
        [BIN, "user", "create", "--workspace", "ws0", "--name", "Bench", "--email",
         "bench@example.com", "--role", "admin"],
        env=env, check=True, capture_output=True, text=True, cwd=work).stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=work)
    try:
        for _ in range(200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        pad = "a" * PAD
        nameless = json.dumps({"object": "whatsapp_business_account", "entry": [
            {"changes": [{"field": "messages", "value": {"pad": pad}}]}]}).encode()
        named = json.dumps({"object": "whatsapp_business_account", "entry": [
            {"id": "1", "changes": [{"field": "messages", "value": {
                "metadata": {"phone_number_id": "100000000000000"}, "pad": pad}}]}]}).encode()
        print(f"binary: {BIN}; {ACCOUNTS} accounts with distinct app secrets; "
              f"bodies of {len(nameless) / 1e6:.2f} MB with a wrong signature")
        rejected(proc.pid, port, nameless, "names no phone number")
        rejected(proc.pid, port, named, "names a known phone number")

        # Large events, then six lists at once.
        secret = b"secret-0000-xxxxxxxx"
        for i in range(20):
            body = json.dumps({"object": "whatsapp_business_account", "entry": [
                {"id": "1", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"phone_number_id": "100000000000000"},
                    "statuses": [], "pad": f"{i}" + pad}}]}]}).encode()
            sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            status = post(port, "/webhooks/whatsapp", body, {
                "Content-Type": "application/json", "X-Hub-Signature-256": sig})
            assert status == 200, status
        time.sleep(1)
        rss_before = status_kb(proc.pid, "VmRSS")
        reset_peak(proc.pid)
        sizes = []
        threads = [threading.Thread(target=lambda: sizes.append(
            get(port, "/api/v1/events?limit=200", token))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = status_kb(proc.pid, "VmHWM")
        print(f"six concurrent event lists over 20 events of 3 MB: answers {sizes}; "
              f"peak RSS +{(peak - rss_before) / 1024:.1f} MB (from {rss_before / 1024:.1f} MB)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
