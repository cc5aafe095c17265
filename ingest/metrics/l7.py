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

The page is written here rather than by prometheus_client, whose per-sample label
formatting made a scrape at the cap cost 57-98 ms of CPU: each label set's text is
escaped and sorted once, when the set first appears, and the bytes are the ones
prometheus_client would write (tests/test_metrics.py compares them).
"""

from __future__ import annotations

import bisect
import threading
import time
from operator import itemgetter
from typing import NamedTuple

from prometheus_client.utils import floatToGoString

from ..store.schema import DNS_FLOWS, HTTP_FLOWS

# Hubble's httpV2 buckets (Prometheus' defaults).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = tuple(repr(bound) for bound in DURATION_BUCKETS) + ("+Inf",)
OTHER = "other"
ENDPOINT_LABELS = ("source_namespace", "source_workload", "destination_namespace", "destination_workload")


class _Family(NamedTuple):
    name: str
    kind: str  # counter or histogram
    help: str
    label_names: tuple[str, ...]

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def header(self, openmetrics: bool) -> str:
        # Prometheus text names a counter by its sample; OpenMetrics by the family.
        name = self.name if openmetrics else self.sample_name
        text = self.help.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            text = text.replace('"', r'\"')
        return f"# HELP {name} {text}\n# TYPE {name} {self.kind}\n"


HTTP_REQUESTS = _Family("flowlog_http_requests", "counter",
                        "HTTP responses seen, by client, server, method, status and reporter",
                        ENDPOINT_LABELS + ("method", "status", "reporter"))
HTTP_DURATIONS = _Family("flowlog_http_request_duration_seconds", "histogram",
                         "Time from request to response, as Hubble's proxy saw it",
                         ENDPOINT_LABELS + ("method", "reporter"))
DNS_QUERIES = _Family("flowlog_dns_queries", "counter", "DNS queries seen, by asking workload and types",
                      ("source_namespace", "source_workload", "qtypes"))
DNS_RESPONSES = _Family("flowlog_dns_responses", "counter",
                        "DNS responses seen, by asking workload, rcode, types and answer count",
                        ("source_namespace", "source_workload", "rcode", "qtypes", "ips_returned"))
_FAMILIES = (HTTP_REQUESTS, HTTP_DURATIONS, DNS_QUERIES, DNS_RESPONSES)
_FOLDED = _Family("flowlog_metric_series_folded", "counter",
                  "Observations whose workload labels were folded into 'other' because the metric reached its "
                  "series cap", ("metric",))


def _label_text(names: tuple[str, ...], values: tuple) -> str:
    """`name="value",...` sorted by name and escaped, as the exposition formats write labels."""
    return ",".join(f'{name}="{value}"' for name, value in sorted(zip(names, (
        str(v).replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"') for v in values))))


def _histogram_text(names: tuple[str, ...], values: tuple) -> tuple[str, tuple[str, ...]]:
    """A histogram's label text for `_count` and `_sum`, and for each bucket with its `le`."""
    return _label_text(names, values), tuple(_label_text(names + ("le",), values + (le,)) for le in _LE)


def _histogram_lines(name: str, samples: list) -> list[str]:
    lines = []
    for (labels, bucket_labels), histogram in samples:
        running = 0
        for le_labels, count in zip(bucket_labels, histogram[:-1]):
            running += count
            lines.append(f"{name}_bucket{{{le_labels}}} {floatToGoString(running)}\n")
        lines.append(f"{name}_count{{{labels}}} {floatToGoString(running)}\n")
        lines.append(f"{name}_sum{{{labels}}} {floatToGoString(histogram[-1])}\n")
    return lines


class _Series:
    """Label tuples -> values, capped (in exposed series) and expiring, each label tuple's
    text for the page made once."""

    def __init__(self, family: _Family, max_series: int, folded_positions: tuple[int, ...]):
        histogram = family.kind == "histogram"
        # The label sets that fit, one of them kept for `other`; a histogram's label set is
        # exposed as its buckets, +Inf, _sum and _count.
        self.max_series = max(1, max_series // (len(_LE) + 2 if histogram else 1) - 1)
        self.folded_positions = folded_positions
        self.label_names = family.label_names
        self.render = _histogram_text if histogram else _label_text
        self.values: dict[tuple, list] = {}
        self.seen: dict[tuple, float] = {}
        self.text: dict[tuple, object] = {}
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
                self.text[labels] = self.render(self.label_names, labels)
        self.seen[labels] = now
        return value

    def expire(self, older_than: float) -> None:
        for labels in [k for k, seen in self.seen.items() if seen < older_than]:
            del self.values[labels], self.seen[labels], self.text[labels]


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


class L7Metrics:
    def __init__(self, max_series: int = 2000, series_ttl_s: float = 600.0, clock=time.monotonic):
        self.clock = clock
        self.series_ttl_s = series_ttl_s
        endpoints = (0, 1, 2, 3)
        self.http_requests = _Series(HTTP_REQUESTS, max_series, endpoints)
        self.http_durations = _Series(HTTP_DURATIONS, max_series, endpoints)
        self.dns_queries = _Series(DNS_QUERIES, max_series, (0, 1))
        self.dns_responses = _Series(DNS_RESPONSES, max_series, (0, 1))
        self._all = (self.http_requests, self.http_durations, self.dns_queries, self.dns_responses)
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
                if not latency_ns:  # no latency known (an aggregated or masked line): not one of 0 s
                    continue
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

    def page(self, openmetrics: bool = False) -> bytes:
        """The metrics as a scrape shows them: Prometheus text (0.0.4) or OpenMetrics (less its
        closing `# EOF`), the bytes prometheus_client would write for the same values."""
        with self._lock:
            oldest = self.clock() - self.series_ttl_s
            for series in self._all:
                series.expire(oldest)
            values = [[(series.text[labels], list(value)) for labels, value in series.values.items()]
                      for series in self._all]
            folded = [(f'metric="{family.sample_name}"', [series.folded])
                      for family, series in zip(_FAMILIES, self._all)]
        # Outside the lock: building the page is most of a scrape's cost. Each label set's
        # text was escaped and sorted once, when the set first appeared.
        out = []
        for family, samples in zip(_FAMILIES + (_FOLDED,), values + [folded]):
            out.append(family.header(openmetrics))
            if family.kind == "histogram":
                out.extend(_histogram_lines(family.name, samples))
            else:
                name = family.sample_name
                out.extend(f"{name}{{{labels}}} {floatToGoString(value[0])}\n" for labels, value in samples)
        return "".join(out).encode()
