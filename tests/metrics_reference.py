"""The L7 metrics' page as prometheus_client writes it from its own metric families: the
reference `L7Metrics.page` is compared with (tests/test_metrics.py) and measured against
(bench/scrape.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from ingest.metrics.l7 import DURATION_BUCKETS, ENDPOINT_LABELS, L7Metrics

# What Prometheus 2.x and 3.x send when scraping with their default scrape protocols.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;"
                     "q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")


class _Families:
    def __init__(self, l7: L7Metrics):
        self.l7 = l7

    def collect(self):
        l7 = self.l7
        requests = CounterMetricFamily(
            "flowlog_http_requests", "HTTP responses seen, by client, server, method, status and reporter",
            labels=ENDPOINT_LABELS + ("method", "status", "reporter"))
        for labels, value in l7.http_requests.values.items():
            requests.add_metric(labels, value[0])
        durations = HistogramMetricFamily(
            "flowlog_http_request_duration_seconds", "Time from request to response, as Hubble's proxy saw it",
            labels=ENDPOINT_LABELS + ("method", "reporter"))
        for labels, histogram in l7.http_durations.values.items():
            cumulative, running = [], 0
            for bound, count in zip(DURATION_BUCKETS + (float("inf"),), histogram[:-1]):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            durations.add_metric(labels, cumulative, histogram[-1])
        queries = CounterMetricFamily("flowlog_dns_queries", "DNS queries seen, by asking workload and types",
                                      labels=("source_namespace", "source_workload", "qtypes"))
        for labels, value in l7.dns_queries.values.items():
            queries.add_metric(labels, value[0])
        responses = CounterMetricFamily(
            "flowlog_dns_responses", "DNS responses seen, by asking workload, rcode, types and answer count",
            labels=("source_namespace", "source_workload", "rcode", "qtypes", "ips_returned"))
        for labels, value in l7.dns_responses.values.items():
            responses.add_metric(labels, value[0])
        folded = CounterMetricFamily(
            "flowlog_metric_series_folded", "Observations whose workload labels were folded into 'other' "
            "because the metric reached its series cap", labels=("metric",))
        for metric, series in (("flowlog_http_requests_total", l7.http_requests),
                               ("flowlog_http_request_duration_seconds", l7.http_durations),
                               ("flowlog_dns_queries_total", l7.dns_queries),
                               ("flowlog_dns_responses_total", l7.dns_responses)):
            folded.add_metric((metric,), series.folded)
        return [requests, durations, queries, responses, folded]


def reference_page(l7: L7Metrics, openmetrics: bool = False) -> bytes:
    """prometheus_client's page for the values `l7` holds now (less OpenMetrics' `# EOF`)."""
    registry = CollectorRegistry()
    registry.register(_Families(l7))
    if openmetrics:
        return generate_openmetrics(registry)[:-len(b"# EOF\n")]
    return generate_latest(registry)
