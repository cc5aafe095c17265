"""What the history server (`flowlog serve`, or `flowlog run --serve`) tells Prometheus.

In a registry of their own, `HISTORY`, so that a server's pod does not expose the
ingester's metrics at zero (`flowlog_hubble_connected 0` would look like a broken
ingester) and an ingester that does not serve exposes none of these. `flowlog serve`
adds `SERVER_PROCESS`; `flowlog run --serve` has those in the default registry already.
"""

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector)

HISTORY = CollectorRegistry(auto_describe=True)

# The process's own (RSS, CPU, open files; Python's version and collector), which the
# default registry holds for `flowlog run`: for a process that only serves.
SERVER_PROCESS = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=SERVER_PROCESS)
PlatformCollector(registry=SERVER_PROCESS)
GCCollector(registry=SERVER_PROCESS)

CALLS = Counter("flowlog_history_calls_total", "Calls of Hubble's API answered, by method and gRPC status code "
                "(CANCELLED: the client left)", ["method", "code"], registry=HISTORY)
STREAMS_OPEN = Gauge("flowlog_history_streams_open", "GetFlows calls being answered (at most serve.max_streams)",
                     registry=HISTORY)
FLOWS_SENT = Counter("flowlog_history_flows_sent_total", "Flows sent to GetFlows callers", registry=HISTORY)
GAPS_SENT = Counter("flowlog_history_gaps_sent_total", "Recorded gaps sent to GetFlows callers (as lost_events or "
                    "node_status)", registry=HISTORY)
STORE_QUERIES = Histogram("flowlog_history_store_query_duration_seconds", "Time of one query to the store, by "
                          "outcome (ok, over_budget, failed)", ["outcome"], registry=HISTORY,
                          buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
STORE_UP = Gauge("flowlog_history_store_up", "1 while the store answered the last health check (every 10 s)",
                 registry=HISTORY)
