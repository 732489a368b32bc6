"""Cluster drill: three wahook nodes (one PostgreSQL schema, the local RabbitMQ, a queue prefix of
their own), loadgen spreading signed webhooks over all three, `kill -9` of the node that owns
the most partitions under load, then its restart.

Passes when every acknowledged message is stored exactly once (0 lost, 0 duplicated,
conversation counts equal their rows), the dead node's partitions are owned again and processing
goes on within 5 s of the kill (read from the survivors' /metrics), each conversation's messages
are stored in the order they were acknowledged (a message acknowledged before the next one of
its conversation was sent is stored before it), and, once the three run again, each holds its
share of the partitions within ±25 %.

  python3 scripts/drills/cluster.py [--bench N]

`--bench N` instead measures ack and processed rates with 1..N nodes (no kill) for BENCHMARKS.md.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

PARTITIONS = 64
SENDERS = 300


def amqp_up():
    """Starts RabbitMQ when it is down (as CI does)."""
    if subprocess.run(["rabbitmqctl", "-q", "status"], capture_output=True).returncode == 0:
        return
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    for _ in range(60):
        if subprocess.run(["rabbitmqctl", "-q", "status"], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    sys.exit("RabbitMQ did not start")


def delete_queues(prefix):
    for p in range(PARTITIONS):
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", f"{prefix}.p.{p}"],
                       capture_output=True, check=False)


class Node(drill.Server):
    def __init__(self, name, schema, prefix, extra=None):
        env = {
            "WAHOOK_DATABASE__SCHEMA": schema,
            "WAHOOK_CLUSTER__MODE": "rabbitmq",
            "WAHOOK_CLUSTER__NODE_ID": name,
            "WAHOOK_CLUSTER__QUEUE_PREFIX": prefix,
            # A crash between commit and confirm is swept after 5 s (default 30 s).
            "WAHOOK_CLUSTER__SWEEP_AFTER_MS": "5000",
            "WAHOOK_HEALTH__GAUGE_INTERVAL_MS": "200",
        }
        env.update(extra or {})
        super().__init__("postgres", f"cluster_{name}", env)
        self.schema = schema
        self.name = name

    def owned(self):
        try:
            return int(drill.metric_sum(self, "wahook_cluster_partitions_owned"))
        except Exception:
            return 0


def wait_spread(nodes, timeout=30):
    """Until the live nodes hold every partition between them; returns their shares."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        shares = [n.owned() for n in nodes]
        if sum(shares) == PARTITIONS and max(shares) - min(shares) <= 1:
            return shares
        time.sleep(0.1)
    return [n.owned() for n in nodes]


def order_violations(server, record):
    """Messages stored before one of their conversation acknowledged before they were sent."""
    stored = {w: int(i) for w, i in server.query(
        "SELECT wamid, id FROM messages WHERE wamid LIKE 'wamid.lg.%'")}
    by_sender = {}
    with open(record) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] != "messages" or len(parts) < 4:
                continue
            wamid = parts[1].split(",")[0]
            n = int(wamid.split(".")[3])
            by_sender.setdefault(n % SENDERS, []).append((int(parts[2]), int(parts[3]), stored.get(wamid)))
    violations = 0
    for msgs in by_sender.values():
        by_ack = sorted(msgs, key=lambda m: m[1])
        latest, i = -1, 0
        for sent, _, row in sorted(msgs, key=lambda m: m[0]):
            while i < len(by_ack) and by_ack[i][1] < sent:
                if by_ack[i][2] is not None:
                    latest = max(latest, by_ack[i][2])
                i += 1
            if row is not None and row < latest:
                violations += 1
    return violations


def start_nodes(count, schema, prefix):
    nodes = [Node(f"n{i + 1}", schema, prefix) for i in range(count)]
    for n in nodes:
        n.proc = subprocess.Popen([drill.BIN, "serve"], env=n.env, stdout=n.log, stderr=n.log)
    for n in nodes:
        n.wait_healthy()
    return nodes


def run_drill():
    pid = os.getpid()
    schema, prefix = f"drill_cluster_{pid}", f"drill{pid}"
    nodes = start_nodes(3, schema, prefix)
    record = tempfile.mktemp(prefix="wahook-cluster-", suffix=".record")
    try:
        before = wait_spread(nodes)
        urls = ",".join(n.base + "/webhooks/whatsapp" for n in nodes)
        load = subprocess.Popen(
            [drill.BIN, "loadgen", "--quiet", "--persist", "--url", urls, "--requests", "24000",
             "--rate", "1200", "--connections", "12", "--senders", str(SENDERS), "--record", record,
             "--max-seconds", "120"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(6)
        victim = max(nodes, key=lambda n: n.owned())
        survivors = [n for n in nodes if n is not victim]
        victim_share = victim.owned()
        victim.kill()
        killed = time.monotonic()
        reassigned = resumed = None
        while time.monotonic() - killed < 30 and resumed is None:
            owned = sum(s.owned() for s in survivors)
            if reassigned is None and owned == PARTITIONS:
                reassigned = time.monotonic() - killed
                acked_at_reassign = sum(
                    drill.metric_sum(s, 'wahook_cluster_consumed_total{outcome="acked"}') for s in survivors)
            if reassigned is not None:
                acked = sum(drill.metric_sum(s, 'wahook_cluster_consumed_total{outcome="acked"}') for s in survivors)
                if acked > acked_at_reassign:
                    resumed = time.monotonic() - killed
            time.sleep(0.05)
        time.sleep(3)
        victim.start()
        back = time.monotonic()
        after = wait_spread(nodes)
        rejoined = time.monotonic() - back
        report = drill.loadgen_report(load)
        settle = nodes[0].wait_settled(180)
        lost, duplicated = drill.exactly_once(nodes[0], drill.acked(record))
        counts = drill.counts_agree(nodes[0])
        unsettled = drill.unsettled(nodes[0])
        order = order_violations(nodes[0], record)
        fair = PARTITIONS / len(nodes)
        spread_ok = all(abs(s - fair) <= 0.25 * fair for s in after) and sum(after) == PARTITIONS
        swept = sum(drill.metric_sum(n, 'wahook_cluster_published_total{via="sweeper",outcome="confirmed"}') for n in nodes)
        ok = (lost == 0 and duplicated == 0 and counts == 0 and unsettled == 0 and order == 0
              and reassigned is not None and resumed is not None and resumed <= 5.0 and spread_ok
              and report["acked"] > 0)
        return drill.summary(
            "cluster", "postgres", ok,
            acked=report["acked"], sent=report["sent"], **{"503": report["503"]},
            transport_errors=report["transport_errors"], lost=lost, duplicated=duplicated,
            counts_differ=counts, unsettled=unsettled, order_violations=order,
            killed_share=victim_share,
            reassigned_s=f"{reassigned:.2f}" if reassigned is not None else "never",
            resumed_s=f"{resumed:.2f}" if resumed is not None else "never",
            spread_before=before, spread_after=after, rejoined_s=f"{rejoined:.2f}", swept=int(swept),
            settle_s=f"{settle:.1f}", ack_p99_ms=report["ack_p99_ms"])
    finally:
        for n in nodes:
            n.stop()
        nodes[0].cleanup()
        delete_queues(prefix)
        if os.path.exists(record):
            os.remove(record)


def cpu_seconds(pid, children=False):
    """utime + stime (and the reaped children's, for PostgreSQL's postmaster) of a process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def pid_of(pattern):
    out = subprocess.run(["pgrep", "-o", "-f", pattern], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out.strip() else None


def run_bench(max_nodes, requests=60000):
    """Ack and processed rates with 1..max_nodes nodes on this machine (no kill), and the CPU
    the broker, PostgreSQL and the nodes spent per event."""
    beam = pid_of("beam.smp")
    for count in range(1, max_nodes + 1):
        pid = os.getpid()
        schema, prefix = f"bench_cluster_{pid}_{count}", f"bench{pid}x{count}"
        nodes = start_nodes(count, schema, prefix)
        try:
            wait_spread(nodes)
            urls = ",".join(n.base + "/webhooks/whatsapp" for n in nodes)
            cpu0 = (cpu_seconds(beam) if beam else 0.0, sum(cpu_seconds(n.proc.pid) for n in nodes))
            t0 = time.monotonic()
            out = subprocess.run(
                [drill.BIN, "loadgen", "--quiet", "--url", urls, "--requests", str(requests),
                 "--connections", "64", "--senders", "10000"],
                capture_output=True, text=True, check=True).stdout
            acked_s = time.monotonic() - t0
            settle = nodes[0].wait_settled(300)
            processed_rate = requests / (acked_s + settle)
            rate = re.search(r"throughput: ([0-9.]+)", out).group(1)
            lat = re.search(r"p50 ([0-9.]+)\s+p95 ([0-9.]+)\s+p99 ([0-9.]+)", out)
            publish = [drill.metric_quantile(n, "wahook_cluster_publish_duration_seconds", 0.5) for n in nodes]
            broker_us = ((cpu_seconds(beam) if beam else 0.0) - cpu0[0]) / requests * 1e6
            nodes_us = (sum(cpu_seconds(n.proc.pid) for n in nodes) - cpu0[1]) / requests * 1e6
            print(f"nodes {count}: ack {rate}/s, p50 {lat.group(1)} ms, p99 {lat.group(3)} ms, "
                  f"processed {processed_rate:.0f}/s (catch-up {settle:.1f} s), "
                  f"publish+confirm p50 {max(publish) * 1000:.1f} ms, CPU per event: "
                  f"broker {broker_us:.0f} µs, wahook nodes {nodes_us:.0f} µs", flush=True)
        finally:
            for n in nodes:
                n.stop()
            nodes[0].cleanup()
            delete_queues(prefix)


if __name__ == "__main__":
    amqp_up()
    if len(sys.argv) > 2 and sys.argv[1] == "--bench":
        run_bench(int(sys.argv[2]))
        sys.exit(0)
    sys.exit(run_drill())
