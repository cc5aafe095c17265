"""What one /metrics scrape of the derived L7 metrics costs when workloads are many.

    python bench/scrape.py [--workloads 20000] [--max-series 2000]

Feeds the L7 metrics one HTTP response for each of N distinct server workloads (50
clients, 5 statuses), then answers a scrape as Prometheus asks for it (OpenMetrics,
gzip) and prints the page's size, the series on it, and the CPU it took, beside
prometheus_client writing the same values from its metric families (the baseline,
measured in the same run); then what keeping the L7 metrics costs a stored flow (the
`metrics.l7` option). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import REGISTRY  # noqa: E402

from ingest import metrics  # noqa: E402,F401  (the ingester's own metrics, in REGISTRY)
from ingest.metrics.endpoint import metrics_page  # noqa: E402
from ingest.metrics.l7 import L7Metrics  # noqa: E402
from ingest.store.schema import DNS_FLOWS, HTTP_FLOWS  # noqa: E402
from tests.metrics_reference import PROMETHEUS_ACCEPT, reference_page  # noqa: E402


def row(table, **values) -> tuple:
    """A row of the table with these values, the others empty, as the decoder lays them out."""
    filled = dict.fromkeys(table.column_names, "") | {"aggregate_count": 0} | values
    return tuple(filled[c] for c in table.column_names)


def response_row(server: str, client: str, status: int) -> tuple:
    return row(HTTP_FLOWS, l7_type="RESPONSE", method="GET", status_code=status, traffic_direction="EGRESS",
               latency_ns=5_000_000, src_namespace="ns", src_workload=server, dst_namespace="ns", dst_workload=client)


def observe_cost_us(flows: int = 200_000, batch: int = 1000) -> float:
    """What `observe` costs a committed flow: half HTTP, half DNS, half of each responses,
    40 servers and 25 clients, in batches as commits feed it; the least of 3 runs."""
    http = [row(HTTP_FLOWS, l7_type="RESPONSE" if i % 2 else "REQUEST", method="GET", status_code=200 + i % 3,
                traffic_direction="EGRESS", latency_ns=i * 1000, src_namespace="ns", src_workload=f"api-{i % 40}",
                dst_namespace="ns", dst_workload=f"c-{i % 25}") for i in range(flows // 2)]
    dns = [row(DNS_FLOWS, l7_type="RESPONSE" if i % 2 else "REQUEST", src_namespace="ns", src_workload=f"api-{i % 40}",
               dst_namespace="ns", dst_workload=f"c-{i % 25}", qtypes=["A"], rcode_name="NOERROR", ips=["10.0.0.1"])
           for i in range(flows // 2)]

    def feed():
        l7 = L7Metrics()
        for start in range(0, flows // 2, batch):
            l7.observe("http_flows", http[start:start + batch])
            l7.observe("dns_flows", dns[start:start + batch])
    return cpu_ms(feed, repeat=3)[0] * 1000 / flows


def cpu_ms(work, repeat: int = 5) -> tuple[float, object]:
    """The least CPU of `repeat` runs, in ms: the others carry the machine's noise."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.process_time()
        result = work()
        best = min(best, time.process_time() - started)
    return best * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", type=int, default=20_000)
    parser.add_argument("--max-series", type=int, default=2000)
    args = parser.parse_args()
    l7 = L7Metrics(max_series=args.max_series)
    l7.observe("http_flows", [response_row(f"api-{i}", f"client-{i % 50}", 200 + i % 5)
                              for i in range(args.workloads)])
    l7_ms, page = cpu_ms(lambda: l7.page(openmetrics=True))
    baseline_ms, baseline = cpu_ms(lambda: reference_page(l7, openmetrics=True))
    assert page == baseline, "the page differs from prometheus_client's"
    scrape_ms, (headers, body) = cpu_ms(lambda: metrics_page((REGISTRY,), (l7.page,), PROMETHEUS_ACCEPT, "gzip"))
    raw = gzip.decompress(body)
    level1_ms, _ = cpu_ms(lambda: gzip.compress(raw, compresslevel=1))
    level9_ms, level9 = cpu_ms(lambda: gzip.compress(raw))
    observe_us = observe_cost_us()
    series = sum(1 for line in page.decode().splitlines() if line and not line.startswith("#"))
    print(f"{args.workloads} workloads, max_series {args.max_series}: L7 page {len(page) / 1e6:.2f} MB, "
          f"{series} series")
    print(f"  L7 page: {l7_ms:.1f} ms of CPU; prometheus_client, same bytes: {baseline_ms:.1f} ms "
          f"({l7_ms / baseline_ms:.2f} of it)")
    print(f"  whole scrape as Prometheus asks (OpenMetrics, gzip level 1): {scrape_ms:.1f} ms of CPU, "
          f"{len(raw) / 1e6:.2f} MB as {len(body) / 1e3:.0f} kB")
    print(f"  gzip of that page: level 1 {level1_ms:.1f} ms, {len(body) / 1e3:.0f} kB; "
          f"prometheus_client's level 9 {level9_ms:.1f} ms, {len(level9) / 1e3:.0f} kB")
    print(f"  keeping the L7 metrics (metrics.l7): {observe_us:.2f} µs of CPU a stored flow")


if __name__ == "__main__":
    main()
