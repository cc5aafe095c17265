"""What one /metrics scrape of the derived L7 metrics costs when workloads are many.

    python bench/scrape.py [--workloads 20000] [--max-series 2000]

Feeds the L7 metrics one HTTP response for each of N distinct server workloads (50
clients, 5 statuses), then renders the page as Prometheus would scrape it and prints
its size, the series on it, and the CPU the rendering took. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from ingest.metrics.l7 import L7Metrics  # noqa: E402
from ingest.store.schema import HTTP_FLOWS  # noqa: E402


def response_row(server: str, client: str, status: int) -> tuple:
    row = dict.fromkeys(HTTP_FLOWS.column_names, "")
    row.update(l7_type="RESPONSE", method="GET", status_code=status, traffic_direction="EGRESS",
               latency_ns=5_000_000, src_namespace="ns", src_workload=server, dst_namespace="ns",
               dst_workload=client)
    return tuple(row[c] for c in HTTP_FLOWS.column_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=20_000)
    parser.add_argument("--max-series", type=int, default=2000)
    args = parser.parse_args()
    metrics = L7Metrics(max_series=args.max_series)
    metrics.observe("http_flows", [response_row(f"api-{i}", f"client-{i % 50}", 200 + i % 5)
                                   for i in range(args.workloads)])
    registry = CollectorRegistry()
    registry.register(metrics)
    started = time.process_time()
    page = generate_latest(registry)
    cpu = time.process_time() - started
    series = sum(1 for line in page.decode().splitlines() if line and not line.startswith("#"))
    print(f"{args.workloads} workloads, max_series {args.max_series}: page {len(page) / 1e6:.2f} MB, "
          f"{series} series, {cpu * 1000:.0f} ms of CPU to render")


if __name__ == "__main__":
    main()
