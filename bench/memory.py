"""What `flowlog run` holds in memory while the store is down and flows are large.

The case of issue 16: the store down, the spool full, every flow carrying a 100 KB
header. Before the byte budgets, reading went on until 50,000 items waited in memory
(RSS 498 -> 838 MB). Now the queue holds at most `batch.queue_mb` and a batch at most
`batch.max_mb` of flows (counted as their protobuf size), so what the ingester holds
beyond its idle size should follow those two keys, whatever the flows' size.

Each budget B runs the real Ingester in a child process of its own (queue_mb = max_mb =
B, spool.max_mb = 2 B, the embedded engine as the store, made unreachable once the
tables exist), against a Hubble stand-in in this process that offers more flows than
budgets and spool can take. The child reports its RSS once the ingester is built
(before any flow: the engine and the libraries) and its peak (VmHWM, reset at that
point) once reading has paused; the growth is the peak minus the first.

    python bench/memory.py [--flows 4000] [--header-kb 100] [--budgets 8,16,32,64]

It prints one row per budget, the fit growth = a x (queue_mb + max_mb) + c, and each
growth against the bound the README states: queue_mb + 2 x max_mb + 20 MB (the queue, a
batch, and the bytes of its spool file while it is written). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.api.flow import flow_pb2  # noqa: E402
from ingest.demo.observer import FlowBuffer, ObserverServer  # noqa: E402
from ingest.demo.traffic import DemoTraffic  # noqa: E402

_MB = 1024 * 1024
# What the README states: RSS grows by at most queue_mb + 2 x max_mb + this, over idle.
STATED_CONSTANT_MB = 20
# Reading counts as paused when nothing moved for this long.
_STEADY_S = 4.0


def large_flows(count: int, header_kb: int) -> list:
    """count HTTP flows of the demo's traffic, each with one header of header_kb KB."""
    flows, second = [], 1_700_000_000 * 10**9
    traffic = DemoTraffic(seed=7)
    while len(flows) < count:
        for response in traffic.second(second):
            if response.flow.l7.HasField("http") and len(flows) < count:
                response.flow.l7.http.headers.append(flow_pb2.HTTPHeader(key="X-Big", value="v" * header_kb * 1024))
                flows.append(response)
        second += 10**9
    return flows


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key + ":"))


class _DownStore:
    """The real client for what is not sent to the store; every call that would reach it fails."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        if name in ("insert", "query", "command", "raw_query", "raw_insert"):
            def unreachable(*args, **kwargs):
                raise ConnectionError("bench: the store is down")
            return unreachable
        return getattr(self._client, name)


def child(address: str, budget_mb: int, workdir: Path) -> dict:
    from ingest import config as config_mod
    from ingest.cli import large_allocations_return_to_the_os
    from ingest.runner import Ingester
    from ingest.store.connection import open_store

    config = config_mod.load(env={}, overrides={
        "store.dsn": f"chdb://{workdir / 'store'}", "state_dir": str(workdir / "state"),
        "source.address": address, "metrics.address": "",
        "batch.queue_mb": str(budget_mb), "batch.max_mb": str(budget_mb), "spool.max_mb": str(2 * budget_mb),
        "store.retry_initial_s": "0.5", "store.retry_max_s": "1",
    })
    large_allocations_return_to_the_os()  # as `flowlog run` does
    client = open_store(config)
    stop = threading.Event()
    ingester = Ingester(config, client, stop)
    ingester.sink.client = _DownStore(client)
    idle_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from here
    runner = threading.Thread(target=ingester.run, daemon=True)
    runner.start()
    last, since, inbox_peak = None, time.monotonic(), 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.2)
        inbox_peak = max(inbox_peak, ingester.batcher.inbox_bytes)
        now = (ingester.batcher.inbox_bytes, len(ingester.spool), ingester.writer.holding)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > _STEADY_S and len(ingester.spool) > 0:
            break
    peak_kb = _status_kb("VmHWM")
    spool_bytes = sum(p.stat().st_size for p in (workdir / "state" / "spool").glob("*.batch"))
    stop.set()
    runner.join(timeout=30)
    return {"budget_mb": budget_mb, "idle_mb": idle_kb / 1024, "peak_mb": peak_kb / 1024,
            "growth_mb": (peak_kb - idle_kb) / 1024, "inbox_peak_mb": inbox_peak / _MB,
            "spool_mb": spool_bytes / _MB, "spooled_batches": last[1] if last else 0}


def _fit(rows: list[dict]) -> tuple[float, float]:
    """Least squares growth = a x (queue_mb + max_mb) + c."""
    xs = [2 * r["budget_mb"] for r in rows]
    ys = [r["growth_mb"] for r in rows]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    a = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else 0.0
    return a, mean_y - a * mean_x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=4000)
    parser.add_argument("--header-kb", type=int, default=100)
    parser.add_argument("--budgets", default="8,16,32,64", help="MB, comma-separated")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", nargs=3, metavar=("ADDRESS", "BUDGET_MB", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), Path(args.child[2]))))
        return 0
    flows = large_flows(args.flows, args.header_kb)
    offered_mb = sum(r.flow.ByteSize() for r in flows) / _MB
    print(f"{len(flows)} flows of {offered_mb / len(flows) * 1024:.0f} KB, {offered_mb:.0f} MB offered; store down")
    rows = []
    with ObserverServer(FlowBuffer(flows)) as server:
        for budget in [int(b) for b in args.budgets.split(",")]:
            with tempfile.TemporaryDirectory() as workdir:
                done = subprocess.run([sys.executable, __file__, "--child", server.address, str(budget), workdir],
                                      capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"queue_mb = max_mb = {budget:3d}, spool.max_mb = {2 * budget:3d}: idle {row['idle_mb']:.0f} MB, "
                  f"peak {row['peak_mb']:.0f} MB, growth {row['growth_mb']:.0f} MB "
                  f"({row['growth_mb'] / (2 * budget):.2f} x the budgets); queue peak {row['inbox_peak_mb']:.1f} MB, "
                  f"spool {row['spool_mb']:.0f} MB in {row['spooled_batches']} batches")
    a, c = _fit(rows)
    print(f"fit: growth = {a:.2f} x (queue_mb + max_mb) + {c:.0f} MB")
    for row in rows:
        bound = 3 * row["budget_mb"] + STATED_CONSTANT_MB
        print(f"queue_mb + 2 x max_mb + {STATED_CONSTANT_MB} MB = {bound} MB at {row['budget_mb']}: growth "
              f"{row['growth_mb']:.0f} MB, {'within' if row['growth_mb'] <= bound else 'BEYOND'}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "slope": a, "constant_mb": c}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
