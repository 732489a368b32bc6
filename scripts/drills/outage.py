#!/usr/bin/env python3
"""Database outage drill (PostgreSQL): wahook reaches PostgreSQL through a TCP proxy this script
cuts for 10 s under load (every connection dropped, new ones refused). Intake answers 503 with
Retry-After (never another 5xx, never 200 without a commit), /ready goes 503 with its reason;
once the proxy lets traffic through again wahook recovers by itself, without a restart, and
every acknowledged message exists exactly once.

Usage: scripts/drills/outage.py [postgres] [--build]"""

import asyncio
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import drill  # noqa: E402

if "--build" in sys.argv:
    drill.build()
CUT_SECONDS = 10


class Proxy:
    """127.0.0.1:<port> → 127.0.0.1:5432, cuttable."""

    def __init__(self):
        self.port = drill.free_port()
        self.cut = False
        self.writers = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self.serve(), self.loop).result()

    async def serve(self):
        self.server = await asyncio.start_server(self.client, "127.0.0.1", self.port)

    async def client(self, reader, writer):
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5432)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except Exception:
                pass
            finally:
                dst.close()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def set_cut(self, cut):
        def apply():
            self.cut = cut
            if cut:
                for w in list(self.writers):
                    w.transport.abort()
                self.writers.clear()
        self.loop.call_soon_threadsafe(apply)


proxy = Proxy()
server = drill.Server("postgres", "outage", extra_env={
    "WAHOOK_DATABASE__URL": f"postgres://postgres@127.0.0.1:{proxy.port}/test",
    "WAHOOK_DATABASE__ACQUIRE_TIMEOUT_MS": "1000",
})
try:
    server.start()
    record = os.path.join(server.work, "acked.tsv")
    load = drill.loadgen(server, record, requests=25000, rate=1000)
    time.sleep(3)
    proxy.set_cut(True)
    not_ready, probe = drill.reasons_while(server, CUT_SECONDS, probe=True)
    proxy.set_cut(False)
    recovery = drill.seconds_until_ready(server, "the database's return")
    report = drill.loadgen_report(load)
    server.wait_settled()
    wamids = drill.acked(record)
    lost, duplicated = drill.exactly_once(server, wamids)
    open_events = drill.unsettled(server)
    ok = (lost == 0 and duplicated == 0 and open_events == 0 and report["other_5xx"] == 0
          and report["503"] > 0 and probe == (503, probe[1]) and probe[1] is not None
          and not_ready)
    print("during the outage: probe answered", probe, "/ready reasons", not_ready)
    sys.exit(drill.summary(
        "outage", "postgres", ok,
        cut_s=CUT_SECONDS, sent=report["sent"], acknowledged=report["acked"], lost=lost,
        duplicated=duplicated, **{"503s": report["503"], "other_5xx": report["other_5xx"]},
        transport_errors=report["transport_errors"], unsettled_events=open_events,
        ready_503_seen=bool(not_ready), retry_after=probe[1],
        recovery_s=f"{recovery:.2f}"))
finally:
    server.cleanup()
