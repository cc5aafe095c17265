"""`flowlog demo`: the real ingester against an in-process Hubble serving generated traffic.

The stand-in server holds two minutes of history (as a node's ring buffer would) and
then receives a second of traffic every second; the ingester follows it through the
same `run` path into the configured store (by default the embedded one), and the
summary at the end is computed by SQL from what was stored.
"""

from __future__ import annotations

import logging
import threading
import time

from ..config import MetricsConfig
from .traffic import DemoTraffic
from .observer import FlowBuffer, ObserverServer
from ..runner import Ingester

log = logging.getLogger(__name__)

HISTORY_S = 120

# On a response the server is the source: Hubble swaps the endpoints of replies.
HTTP_SUMMARY = """
SELECT
    if(src_namespace != '', src_namespace || '/' || src_workload_name, src_workload_name) AS destination,
    count() AS responses,
    round(countIf(status_code >= 500) / count() * 100, 1) AS error_pct,
    round(quantileExact(0.50)(latency_ns) / 1e6, 1) AS p50_ms,
    round(quantileExact(0.95)(latency_ns) / 1e6, 1) AS p95_ms,
    round(quantileExact(0.99)(latency_ns) / 1e6, 1) AS p99_ms
FROM {db:Identifier}.http_flows
WHERE l7_type = 'RESPONSE' AND time >= fromUnixTimestamp64Nano({since:Int64})
GROUP BY destination
ORDER BY responses DESC
"""

DNS_SUMMARY = """
SELECT
    query AS name,
    count() AS responses,
    arrayStringConcat(arraySort(groupUniqArray(rcode_name)), ',') AS rcodes,
    arrayStringConcat(arraySort(groupUniqArrayArray(ips)), ',') AS answers
FROM {db:Identifier}.dns_flows
WHERE l7_type = 'RESPONSE' AND time >= fromUnixTimestamp64Nano({since:Int64})
GROUP BY name
ORDER BY responses DESC, name
LIMIT 10
"""


def _feed(buffer: FlowBuffer, traffic: DemoTraffic, first_live_ns: int, stop: threading.Event) -> None:
    """Adds each second of traffic when that second has passed, as a live node would."""
    second_ns = first_live_ns
    while not stop.is_set():
        wait = (second_ns + 1_000_000_000 - time.time_ns()) / 1e9
        if wait > 0 and stop.wait(wait):
            return
        buffer.extend(traffic.second(second_ns))
        second_ns += 1_000_000_000


def run_demo(config, client, duration_s: float, seed: int, lock=None) -> int:
    traffic = DemoTraffic(seed)
    now_ns = time.time_ns() // 1_000_000_000 * 1_000_000_000
    history_start_ns = now_ns - HISTORY_S * 1_000_000_000
    buffer = FlowBuffer(r for s in range(HISTORY_S) for r in traffic.second(history_start_ns + s * 1_000_000_000))
    stop = threading.Event()
    if config.metrics.address == MetricsConfig().address:
        # A demo should not fail because something (a real ingester?) holds the usual port.
        config.metrics.address = "127.0.0.1:0"
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        ingester = Ingester(config, client, stop, lock)
        feeder = threading.Thread(target=_feed, args=(buffer, traffic, now_ns, stop), daemon=True)
        runner = threading.Thread(target=ingester.run, daemon=True)
        feeder.start()
        runner.start()
        print(f"demo: a Hubble stand-in on {server.address} holds {len(buffer)} flows of the last "
              f"{HISTORY_S} s and streams new ones for {duration_s:g} s; storing in {config.store.database}")
        if ingester.endpoint is not None:
            print(f"demo: the ingester's metrics are on http://{ingester.endpoint.address}/metrics")
        try:
            stop.wait(duration_s)
        except KeyboardInterrupt:
            pass
        ingester.request_stop()
        runner.join()
        feeder.join()
    ingester.checkpoint.path.unlink(missing_ok=True)  # that server is gone for good
    params = {"db": config.store.database, "since": history_start_ns}
    print("\nHTTP latency and errors per destination workload (responses, computed by SQL):")
    print(client.raw_query(HTTP_SUMMARY, parameters=params, fmt="PrettyCompactMonoBlock").decode())
    print("Top DNS names with their rcodes and answers:")
    print(client.raw_query(DNS_SUMMARY, parameters=params, fmt="PrettyCompactMonoBlock").decode())
    print(f"Stored: {ingester.writer.stored}. Explore with: flowlog sql \"SELECT ... FROM http_flows\"")
    return 0
