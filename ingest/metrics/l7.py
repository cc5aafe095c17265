"""L7 metrics derived from the stored flows, named and labelled like Hubble's own.

`flowlog_http_requests_total` and `flowlog_http_request_duration_seconds` (counted on
responses, as Hubble's httpV2), `flowlog_dns_queries_total` and
`flowlog_dns_responses_total`. Fed once per committed batch with the rows actually
inserted, so a flow stored once is counted once.

Cardinality is bounded, where Hubble's metrics are not (cilium/cilium#23162, #31889):
each metric exposes at most `max_series` series, a histogram's label set counting as
its buckets, `_sum` and `_count` (14 series); past that, new label sets have their
namespace and workload labels folded into `other`; series not updated for
`series_ttl_s` are dropped at the next scrape. A scrape copies the values under the
lock and builds the page outside it, so it never holds up a commit's `observe`.
"""

from __future__ import annotations

import bisect
import threading
import time
from operator import itemgetter

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..store.schema import DNS_FLOWS, HTTP_FLOWS

# Hubble's httpV2 buckets (Prometheus' defaults).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OTHER = "other"
ENDPOINT_LABELS = ("source_namespace", "source_workload", "destination_namespace", "destination_workload")


class _Series:
    """Label tuples -> values, capped (in exposed series) and expiring."""

    def __init__(self, max_series: int, folded_positions: tuple[int, ...], exposed_per_label_set: int = 1):
        # The label sets that fit, one of them kept for `other`.
        self.max_series = max(1, max_series // exposed_per_label_set - 1)
        self.folded_positions = folded_positions
        self.values: dict[tuple, list] = {}
        self.seen: dict[tuple, float] = {}
        self.folded = 0

    def slot(self, labels: tuple, new_value, now: float) -> list:
        value = self.values.get(labels)
        if value is None:
            if len(self.values) >= self.max_series:
                self.folded += 1
                labels = tuple(OTHER if i in self.folded_positions else v for i, v in enumerate(labels))
                value = self.values.get(labels)
            if value is None:
                value = self.values[labels] = new_value()
        self.seen[labels] = now
        return value

    def expire(self, older_than: float) -> None:
        for labels in [k for k, seen in self.seen.items() if seen < older_than]:
            del self.values[labels], self.seen[labels]


def _http_fields():
    names = HTTP_FLOWS.column_names
    return itemgetter(*(names.index(c) for c in (
        "l7_type", "src_namespace", "src_workload", "dst_namespace", "dst_workload", "method", "status_code",
        "traffic_direction", "latency_ns", "aggregate_count")))


def _dns_fields():
    names = DNS_FLOWS.column_names
    return itemgetter(*(names.index(c) for c in (
        "l7_type", "src_namespace", "src_workload", "dst_namespace", "dst_workload", "qtypes", "rcode_name", "ips",
        "aggregate_count")))


class L7Metrics(Collector):
    def __init__(self, max_series: int = 2000, series_ttl_s: float = 600.0, clock=time.monotonic):
        self.clock = clock
        self.series_ttl_s = series_ttl_s
        endpoints = (0, 1, 2, 3)
        self.http_requests = _Series(max_series, endpoints)
        self.http_durations = _Series(max_series, endpoints, exposed_per_label_set=len(DURATION_BUCKETS) + 3)
        self.dns_queries = _Series(max_series, (0, 1))
        self.dns_responses = _Series(max_series, (0, 1))
        self._lock = threading.Lock()
        self._http = _http_fields()
        self._dns = _dns_fields()

    def observe(self, table_name: str, rows: list[tuple]) -> None:
        if table_name == HTTP_FLOWS.name:
            self._observe_http(rows)
        elif table_name == DNS_FLOWS.name:
            self._observe_dns(rows)

    def _observe_http(self, rows: list[tuple]) -> None:
        now = self.clock()
        buckets = len(DURATION_BUCKETS) + 1
        with self._lock:
            for row in rows:
                l7_type, src_ns, src_wl, dst_ns, dst_wl, method, status, direction, latency_ns, aggregated = \
                    self._http(row)
                if l7_type != "RESPONSE":
                    continue
                flows = aggregated or 1  # an aggregated exporter line counts as the flows it stands for
                # A response travels server -> client: the client is its destination.
                reporter = "server" if direction == "INGRESS" else "client"
                endpoints = (dst_ns, dst_wl, src_ns, src_wl)
                self.http_requests.slot(endpoints + (method, str(status), reporter), lambda: [0], now)[0] += flows
                histogram = self.http_durations.slot(endpoints + (method, reporter), lambda: [0] * buckets + [0.0],
                                                     now)
                seconds = latency_ns / 1e9
                histogram[bisect.bisect_left(DURATION_BUCKETS, seconds)] += flows
                histogram[-1] += seconds * flows

    def _observe_dns(self, rows: list[tuple]) -> None:
        now = self.clock()
        with self._lock:
            for row in rows:
                l7_type, src_ns, src_wl, dst_ns, dst_wl, qtypes, rcode_name, ips, aggregated = self._dns(row)
                flows = aggregated or 1
                qtypes = ",".join(qtypes)
                if l7_type == "RESPONSE":
                    # The asking pod is the destination of a response.
                    self.dns_responses.slot((dst_ns, dst_wl, rcode_name, qtypes, str(len(ips))), lambda: [0],
                                            now)[0] += flows
                elif l7_type == "REQUEST":
                    self.dns_queries.slot((src_ns, src_wl, qtypes), lambda: [0], now)[0] += flows

    def describe(self):
        return []

    def collect(self):
        with self._lock:
            oldest = self.clock() - self.series_ttl_s
            for series in (self.http_requests, self.http_durations, self.dns_queries, self.dns_responses):
                series.expire(oldest)
            http_requests = [(labels, value[0]) for labels, value in self.http_requests.values.items()]
            http_durations = [(labels, list(histogram)) for labels, histogram in self.http_durations.values.items()]
            dns_queries = [(labels, value[0]) for labels, value in self.dns_queries.values.items()]
            dns_responses = [(labels, value[0]) for labels, value in self.dns_responses.values.items()]
            folded_counts = [(metric, series.folded) for metric, series in (
                ("flowlog_http_requests_total", self.http_requests),
                ("flowlog_http_request_duration_seconds", self.http_durations),
                ("flowlog_dns_queries_total", self.dns_queries), ("flowlog_dns_responses_total", self.dns_responses))]
        # Outside the lock: building the page is most of a scrape's cost.
        requests = CounterMetricFamily(
            "flowlog_http_requests", "HTTP responses seen, by client, server, method, status and reporter",
            labels=ENDPOINT_LABELS + ("method", "status", "reporter"))
        for labels, value in http_requests:
            requests.add_metric(labels, value)
        durations = HistogramMetricFamily(
            "flowlog_http_request_duration_seconds", "Time from request to response, as Hubble's proxy saw it",
            labels=ENDPOINT_LABELS + ("method", "reporter"))
        for labels, histogram in http_durations:
            cumulative, running = [], 0
            for bound, count in zip(DURATION_BUCKETS + (float("inf"),), histogram[:-1]):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            durations.add_metric(labels, cumulative, histogram[-1])
        queries = CounterMetricFamily("flowlog_dns_queries", "DNS queries seen, by asking workload and types",
                                      labels=("source_namespace", "source_workload", "qtypes"))
        for labels, value in dns_queries:
            queries.add_metric(labels, value)
        responses = CounterMetricFamily(
            "flowlog_dns_responses", "DNS responses seen, by asking workload, rcode, types and answer count",
            labels=("source_namespace", "source_workload", "rcode", "qtypes", "ips_returned"))
        for labels, value in dns_responses:
            responses.add_metric(labels, value)
        folded = CounterMetricFamily(
            "flowlog_metric_series_folded", "Observations whose workload labels were folded into 'other' "
            "because the metric reached its series cap", labels=("metric",))
        for metric, count in folded_counts:
            folded.add_metric((metric,), count)
        return [requests, durations, queries, responses, folded]
