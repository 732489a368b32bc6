#!/usr/bin/env python3
"""Hostile clients drill: good traffic runs twice at the same rate, first alone (quiet), then
beside hostile clients: slow-loris connections trickling their headers, bodies of 3 MiB + 1,
10,000 bad signatures per second, signed garbage, deeply nested JSON and truncated bodies.
The server stays up, its memory stays bounded, the hostile requests get their 4xx (or their
connection closed), every acknowledged good message is stored exactly once, and the good
traffic's ack p99 stays within 2x of the quiet run (reported; the drill fails past 3x and 5 ms more).

Usage: scripts/drills/hostile.py sqlite|postgres [--build]"""

import hashlib
import hmac
import os
import json
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

BACKEND = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "sqlite"
if "--build" in sys.argv:
    drill.build()

GOOD_RATE = 500
GOOD_REQUESTS = 3000  # 6 s at GOOD_RATE
ROUNDS = int(os.environ.get("HOSTILE_ROUNDS", "5"))
BAD_SIGNATURES_PER_S = 10_000
SLOW_LORIS = 300
HEADER_TIMEOUT_MS = 2000
BODY_LIMIT = 3 * 1024 * 1024
SECRET = b"demo-app-secret-change-me"
RSS_LIMIT_MB = 512
# The target is 2x; on this 2-core machine the median ratio ranged 1.15-2.51 on SQLite
# and 1.16-2.68 on PostgreSQL (RELIABILITY.md), so the drill reports the target and fails only
# when the hostile p99 is both past 3x the quiet one and more than 5 ms above it — as the log
# flood it found (a line per rejected request: 3.0 -> 9.3 ms) was.
RATIO_GATE = 3.0
EXCESS_GATE_MS = 5.0
# Which hostile clients run (all by default; a subset shows what each one costs).
PARTS = set(os.environ.get("HOSTILE_PARTS", "loris,bodies,badsig").split(","))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1


def raw_request(port, head, body=b"", send_all=True, timeout=10):
    """Sends bytes on a fresh connection; returns the status code of the answer, or a word."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        if send_all:
            s.sendall(body)
        else:
            # Truncated: less than Content-Length promised, then the write side closes.
            s.sendall(body[: len(body) // 2])
            s.shutdown(socket.SHUT_WR)
        data = s.recv(64)
        if not data:
            return "closed"
        return data.split(b" ", 2)[1].decode()
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except socket.timeout:
        return "timeout"
    finally:
        s.close()


def post_head(length, signature, extra=b""):
    return (b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: drill\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(length).encode() + b"\r\nX-Hub-Signature-256: " + signature
            + b"\r\nConnection: close\r\n" + extra + b"\r\n")


def sign(body):
    return b"sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest().encode()


def slow_loris(port, stop, tally):
    """Opens a connection and trickles header bytes until the server closes it."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        tally.add("connect_failed")
        return
    started = time.monotonic()
    s.settimeout(0.5)
    try:
        s.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: drill\r\n")
        while not stop.is_set():
            s.sendall(b"X-Slow: a\r\n")
            try:
                if s.recv(64) == b"":
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                break
        else:
            tally.add("still_open_at_end")
            return
        tally.add("cut")
        tally.add(("cut_after_ms", int((time.monotonic() - started) * 1000)))
    except (BrokenPipeError, ConnectionResetError):
        tally.add("cut")
        tally.add(("cut_after_ms", int((time.monotonic() - started) * 1000)))
    finally:
        s.close()


def hostile_bodies(port, stop, tally):
    """Oversize, signed garbage, deeply nested, truncated: in turn until stopped."""
    big = b"{" + b" " * (BODY_LIMIT - 1) + b"}"  # 3 MiB + 1
    garbage = os.urandom(2048)
    nested = b"[" * 10_000 + b"]" * 10_000  # 78 times the parser's depth limit
    truncated = b'{"object":"whatsapp_business_account","entry":[' + b" " * 4000 + b"]}"
    # Heads signed once: the drill should spend the machine's two cores on the server.
    heads = {name: post_head(len(body), sign(body)) for name, body in (
        ("oversize", big), ("garbage", garbage), ("nested", nested), ("truncated", truncated))}
    kinds = [
        ("oversize", lambda: raw_request(port, heads["oversize"], big)),
        ("garbage", lambda: raw_request(port, heads["garbage"], garbage)),
        ("nested", lambda: raw_request(port, heads["nested"], nested)),
        ("truncated", lambda: raw_request(port, heads["truncated"], truncated, send_all=False)),
    ]
    i = 0
    while not stop.is_set():
        name, send = kinds[i % len(kinds)]
        i += 1
        try:
            tally.add((name, send()))
        except OSError as e:
            tally.add((name, type(e).__name__))
        # Signed junk can only come from a holder of the app secret, and is kept (as `dead`
        # rows, each up to 200 kB here): a few a second, not a flood.
        time.sleep(0.1)


def good_run(server, label):
    record = os.path.join(server.work, f"acked-{label}.tsv")
    proc = drill.loadgen(server, record, requests=GOOD_REQUESTS, rate=GOOD_RATE,
                         extra=["--run-id", f"{label}x{os.getpid()}"])
    return proc, record


def peak_rss_until_done(proc, pid):
    """The server's largest RSS (MB) sampled every 0.2 s until `proc` (a loadgen) ends."""
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, rss_mb(pid))
        time.sleep(0.2)
    return peak


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def attack(port, seconds):
    """The slow-loris and body attackers, in this (niced) process; prints their tally."""
    stop = threading.Event()
    tally = Tally()
    threads = [threading.Thread(target=slow_loris, args=(port, stop, tally), daemon=True)
               for _ in range(SLOW_LORIS if "loris" in PARTS else 0)]
    threads += [threading.Thread(target=hostile_bodies, args=(port, stop, tally), daemon=True)
                for _ in range(2 if "bodies" in PARTS else 0)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    print(json.dumps([[list(k) if isinstance(k, tuple) else k, v]
                      for k, v in tally.counts.items()]))


if "--attack" in sys.argv:
    i = sys.argv.index("--attack")
    attack(int(sys.argv[i + 1]), float(sys.argv[i + 2]))
    sys.exit(0)

server = drill.Server(BACKEND, "hostile", extra_env={
    "WAHOOK_SERVER__HEADER_READ_TIMEOUT_MS": str(HEADER_TIMEOUT_MS),
    "WAHOOK_SERVER__REQUEST_TIMEOUT_MS": "5000",
})
try:
    server.start()
    pid = server.proc.pid
    rss_start = rss_mb(pid)
    rss_max = rss_start
    quiet, hostile, records = [], [], []
    counts, bad_sent, bad_acked, attack_total = {}, 0, 0, 0.0
    # Quiet and hostile rounds alternate, so a slow patch of this shared machine does not
    # fall on one side only; the medians of their ack p99s are compared.
    for rnd in range(ROUNDS):
        proc, record = good_run(server, f"quiet{rnd}")
        rss_max = max(rss_max, peak_rss_until_done(proc, pid))
        quiet.append(drill.loadgen_report(proc))
        records.append(record)

        # The attackers run under `nice -n 19`: on this one machine their own CPU (in
        # production: theirs) must not count against the server; its work on their requests does.
        attack_seconds = GOOD_REQUESTS / GOOD_RATE + 2
        attack_total += attack_seconds
        attackers = subprocess.Popen(
            ["nice", "-n", "19", sys.executable, __file__, BACKEND, "--attack", str(server.port),
             str(attack_seconds)], stdout=subprocess.PIPE, text=True)
        bad_sigs = drill.loadgen(
            server, os.path.join(server.work, "bad.tsv"),
            requests=int(BAD_SIGNATURES_PER_S * attack_seconds) if "badsig" in PARTS else 1,
            rate=BAD_SIGNATURES_PER_S, connections=16, nice=19,
            extra=["--secret", "not-the-app-secret", "--run-id", f"bad{rnd}"])
        time.sleep(1)
        proc, record = good_run(server, f"hostile{rnd}")
        rss_max = max(rss_max, peak_rss_until_done(proc, pid))
        hostile.append(drill.loadgen_report(proc))
        records.append(record)
        bad = drill.loadgen_report(bad_sigs)
        bad_sent += bad["sent"]
        bad_acked += bad["acked"]
        out, _ = attackers.communicate()
        for k, v in json.loads(out):
            k = tuple(k) if isinstance(k, list) else k
            counts[k] = counts.get(k, 0) + v
        rss_max = max(rss_max, rss_mb(pid))

    alive = server.proc.poll() is None and server.wait_healthy(5) is not None
    server.wait_settled()
    wamids = [w for r in records for w in drill.acked(r)]
    lost, duplicated = drill.exactly_once(server, wamids)
    cut = counts.get("cut", 0)
    cut_ms = sorted(k[1] for k in counts if isinstance(k, tuple) and k[0] == "cut_after_ms")
    by_kind = {name: {k[1]: v for k, v in counts.items() if isinstance(k, tuple) and k[0] == name}
               for name in ("oversize", "garbage", "nested", "truncated")}
    print("hostile answers:", by_kind, flush=True)
    good = quiet + hostile
    p99_quiet = median(r["ack_p99_ms"] for r in quiet)
    p99_hostile = median(r["ack_p99_ms"] for r in hostile)
    print("ack p99 ms, quiet rounds:", [r["ack_p99_ms"] for r in quiet],
          "hostile rounds:", [r["ack_p99_ms"] for r in hostile], flush=True)
    ratio = p99_hostile / max(p99_quiet, 1e-9)
    oversize_ok = by_kind["oversize"] and set(by_kind["oversize"]) <= {"413", "reset", "closed"}
    garbage_ok = set(by_kind["garbage"]) == {"400"}
    nested_ok = set(by_kind["nested"]) == {"400"}
    truncated_ok = by_kind["truncated"] and "200" not in by_kind["truncated"] and not any(
        s.startswith("5") for s in by_kind["truncated"])
    other_5xx = sum(r["other_5xx"] for r in good)
    s503 = sum(r["503"] for r in good)
    ok = (alive and lost == 0 and duplicated == 0 and other_5xx == 0 and s503 == 0
          and bad_acked == 0 and cut == SLOW_LORIS * ROUNDS
          and (ratio <= RATIO_GATE or p99_hostile - p99_quiet <= EXCESS_GATE_MS)
          and rss_max < RSS_LIMIT_MB and oversize_ok and garbage_ok and nested_ok
          and truncated_ok)
    sys.exit(drill.summary(
        "hostile", BACKEND, ok,
        sent=sum(r["sent"] for r in good), acknowledged=sum(r["acked"] for r in good),
        lost=lost, duplicated=duplicated, **{"503s": s503}, other_5xx=other_5xx,
        ack_p99_quiet_ms=p99_quiet, ack_p99_hostile_ms=p99_hostile, ratio=f"{ratio:.2f}",
        target_2x="met" if ratio <= 2.0 else "missed",
        slow_loris_cut=f"{cut}/{SLOW_LORIS * ROUNDS}",
        slow_loris_cut_ms_max=cut_ms[-1] if cut_ms else None,
        bad_signatures_per_s=int(bad_sent / attack_total), bad_signatures_accepted=bad_acked,
        hostile_bodies=sum(sum(v.values()) for v in by_kind.values()),
        rss_mb_start=int(rss_start), rss_mb_max=int(rss_max)))
finally:
    server.cleanup()
