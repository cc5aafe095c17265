"""The ingester's /metrics, /healthz and /readyz, and the derived L7 metrics' values and bounds."""

from __future__ import annotations

import gzip
import random
import urllib.request
from collections import Counter

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from ingest.metrics.l7 import L7Metrics
from ingest.demo.observer import FlowBuffer, ObserverServer
from ingest.store.schema import DNS_FLOWS, HTTP_FLOWS

from .metrics_reference import PROMETHEUS_ACCEPT, reference_page
from .helpers import DNS_330, HTTP_348, fixture_lines, responses_of, RunningIngester, wait_for
from ingest.decode.decoder import workload_of


def scrape(address: str, path: str = "/metrics", accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://{address}{path}", headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def samples(text: str, name: str) -> list[tuple[dict, float]]:
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def test_endpoint_serves_metrics_health_and_readiness_while_ingesting(config, client):
    config.metrics.address = "127.0.0.1:0"
    lines = fixture_lines(HTTP_348) + fixture_lines(DNS_330)
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            service = server.service
            wait_for(lambda: service.caught_up() and ingester.writer.committed_ns >= service.newest_sent_ns)
            address = ingester.endpoint.address
            assert scrape(address, "/healthz")[0] == 200
            assert scrape(address, "/readyz")[:1] == (200,)
            status, content_type, text = scrape(address)
            assert status == 200 and content_type.startswith("text/plain")
            _, openmetrics_type, openmetrics = scrape(address, accept="application/openmetrics-text")
            assert openmetrics_type.startswith("application/openmetrics-text") and openmetrics.endswith("# EOF\n")

    # flowlog_http_requests_total: 503 responses per server workload, as the fixture implies.
    expected = Counter()
    for line in fixture_lines(HTTP_348):
        flow = line["flow"]
        if flow["l7"]["type"] == "RESPONSE" and flow["l7"]["http"].get("code") == 503:
            expected[flow["source"].get("namespace", ""), workload_of_json(flow["source"])] += 1
    got = Counter()
    for labels, value in samples(text, "flowlog_http_requests_total"):
        if labels["status"] == "503":
            got[labels["destination_namespace"], labels["destination_workload"]] += value
    assert got == expected and sum(got.values()) == 151
    durations = samples(text, "flowlog_http_request_duration_seconds_count")
    assert sum(v for _, v in durations) == 173
    responses = samples(text, "flowlog_dns_responses_total")
    assert sum(v for labels, v in responses if labels["rcode"] == "NXDOMAIN") == 102
    assert sum(v for _, v in samples(text, "flowlog_dns_queries_total")) == 165
    assert samples(text, "flowlog_rows_inserted_total")
    lag = samples(text, "flowlog_ingest_lag_seconds")
    assert lag and lag[0][1] > 0  # the fixtures are from 2021


def test_not_ready_while_hubble_is_unreachable(config, client):
    config.metrics.address = "127.0.0.1:0"
    config.source.address = "127.0.0.1:1"
    with RunningIngester(config, client) as ingester:
        status, _, body = scrape(ingester.endpoint.address, "/readyz")
        assert (status, body) == (503, "not ready: hubble\n")
        assert scrape(ingester.endpoint.address, "/healthz")[0] == 200


def workload_of_json(endpoint: dict) -> str:
    from google.protobuf import json_format
    from ingest.api.flow import flow_pb2
    return workload_of(json_format.ParseDict(endpoint, flow_pb2.Endpoint()))


def http_response_row(**values) -> tuple:
    row = dict.fromkeys(HTTP_FLOWS.column_names, "")
    row.update(l7_type="RESPONSE", method="GET", status_code=200, traffic_direction="EGRESS", latency_ns=5_000_000)
    row.update(values)
    return tuple(row[c] for c in HTTP_FLOWS.column_names)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def parsed(l7: L7Metrics) -> dict:
    """The L7 page read back by prometheus_client's parser."""
    return {f.name: f for f in text_string_to_metric_families(l7.page().decode())}


def test_ten_thousand_pods_cannot_blow_up_the_series_count():
    clock = FakeClock()
    l7 = L7Metrics(max_series=500, series_ttl_s=600, clock=clock)
    rows = [http_response_row(src_namespace="ns", src_workload=f"api-{i}", dst_namespace="ns",
                              dst_workload=f"client-{i}") for i in range(10_000)]
    l7.observe("http_flows", rows)
    families = parsed(l7)
    requests = families["flowlog_http_requests"].samples
    assert len(requests) == 500  # 499 label sets and "other"
    assert sum(s.value for s in requests) == 10_000  # nothing dropped: the overflow is counted under "other"
    other = [s for s in requests if s.labels["destination_workload"] == "other"]
    assert len(other) == 1 and other[0].value == 10_000 - 499
    # A histogram's label set exposes 14 series (11 buckets, +Inf, _sum, _count): the cap counts them all.
    durations = families["flowlog_http_request_duration_seconds"].samples
    assert 500 - 14 < len(durations) <= 500 and len(durations) % 14 == 0
    assert sum(s.value for s in durations if s.name.endswith("_count")) == 10_000
    folded = {s.labels["metric"]: s.value for s in families["flowlog_metric_series_folded"].samples}
    assert folded["flowlog_http_requests_total"] == 10_000 - 499
    assert folded["flowlog_http_request_duration_seconds"] == 10_000 - (500 // 14 - 1)


def test_a_scrape_does_not_hold_up_a_commit(monkeypatch):
    """Building a 6 MB page took 0.4-1.2 s, all of it under the lock that each commit's
    observe takes. Here a scrape stalls while it builds the page: a commit goes on."""
    import threading

    from ingest.metrics import l7 as l7_module

    l7 = L7Metrics(max_series=500)
    l7.observe("http_flows", [http_response_row(src_workload=f"api-{i}") for i in range(50)])
    building, release = threading.Event(), threading.Event()
    format_value = l7_module.floatToGoString

    def slow_format_value(value):
        building.set()
        release.wait(10)
        return format_value(value)

    monkeypatch.setattr(l7_module, "floatToGoString", slow_format_value)
    scrape = threading.Thread(target=l7.page)
    scrape.start()
    assert building.wait(10)
    committed = threading.Thread(target=l7.observe, args=("http_flows", [http_response_row(src_workload="late")]))
    committed.start()
    committed.join(5)
    still_blocked = committed.is_alive()
    release.set()
    scrape.join(10)
    assert not still_blocked, "observe waited for the scrape"


def test_a_response_of_no_known_latency_counts_as_a_request_not_as_0_seconds():
    l7 = L7Metrics()
    l7.observe("http_flows", [http_response_row(latency_ns=30_000_000),
                              http_response_row(latency_ns=0, aggregate_count=20)])  # an aggregated exporter line
    families = parsed(l7)
    assert sum(s.value for s in families["flowlog_http_requests"].samples) == 21
    buckets = {s.labels["le"]: s.value for s in families["flowlog_http_request_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert (buckets["0.005"], buckets["0.05"], buckets["+Inf"]) == (0, 1, 1)


def test_series_of_workloads_gone_quiet_are_removed():
    clock = FakeClock()
    l7 = L7Metrics(max_series=500, series_ttl_s=600, clock=clock)
    l7.observe("http_flows", [http_response_row(src_workload="old", dst_workload="a")])
    clock.now += 300
    l7.observe("http_flows", [http_response_row(src_workload="new", dst_workload="a")])
    clock.now += 400
    families = parsed(l7)
    workloads = {s.labels["destination_workload"] for s in families["flowlog_http_requests"].samples}
    assert workloads == {"new"}


def test_histogram_buckets_are_hubbles_and_cumulative():
    l7 = L7Metrics()
    l7.observe("http_flows", [http_response_row(latency_ns=ns) for ns in (1_000_000, 30_000_000, 20_000_000_000)])
    histogram = parsed(l7)["flowlog_http_request_duration_seconds"]
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert list(buckets) == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0",
                             "+Inf"]
    assert (buckets["0.005"], buckets["0.05"], buckets["10.0"], buckets["+Inf"]) == (1, 2, 2, 3)


def dns_row(**values) -> tuple:
    row = dict.fromkeys(DNS_FLOWS.column_names, "")
    row.update(l7_type="RESPONSE", qtypes=["A"], rcode_name="NOERROR", ips=["10.0.0.1"], aggregate_count=0)
    row.update(values)
    return tuple(row[c] for c in DNS_FLOWS.column_names)


@pytest.mark.parametrize("openmetrics", [False, True], ids=["prometheus-text", "openmetrics"])
def test_the_page_is_the_bytes_prometheus_client_writes(openmetrics):
    """The page is written by hand for speed; prometheus_client's own exposition of the same
    values is the reference, label values that need escaping and the series cap included."""
    rng = random.Random(20)
    odd = ['back\\slash', 'new\nline', 'quo"te', 'ünï', 'sp ace', '{x="y"}', '']
    clock = FakeClock()
    l7 = L7Metrics(max_series=300, series_ttl_s=600, clock=clock)
    l7.observe("http_flows", [http_response_row(src_workload="gone")])
    clock.now += 700
    l7.observe("http_flows", [http_response_row(
        src_namespace=rng.choice(odd), src_workload=f"api-{rng.randrange(400)}", dst_workload=rng.choice(odd),
        method=rng.choice(["GET", "POST"]), status_code=rng.choice([200, 503]), latency_ns=rng.randrange(2 * 10**10),
        traffic_direction=rng.choice(["INGRESS", "EGRESS"]), aggregate_count=rng.choice([0, 0, 3]))
        for _ in range(2000)])
    l7.observe("dns_flows", [dns_row(
        l7_type=rng.choice(["REQUEST", "RESPONSE"]), src_workload=rng.choice(odd), dst_workload=f"c-{i % 500}",
        qtypes=rng.sample(["A", "AAAA"], rng.randint(1, 2)), rcode_name=rng.choice(["NOERROR", "NXDOMAIN"]))
        for i in range(2000)])
    page = l7.page(openmetrics)
    assert page == reference_page(l7, openmetrics)
    assert b"gone" not in page and b'destination_workload="other"' in page


def test_an_openmetrics_scrape_parses_strictly(config, client):
    config.metrics.address = "127.0.0.1:0"
    with ObserverServer(FlowBuffer(responses_of(fixture_lines(HTTP_348)))) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            service = server.service
            wait_for(lambda: service.caught_up() and ingester.writer.committed_ns >= service.newest_sent_ns)
            request = urllib.request.Request(f"http://{ingester.endpoint.address}/metrics", headers={
                "Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["Content-Encoding"] == "gzip"
                text = gzip.decompress(response.read()).decode()
    # The OpenMetrics parser refuses a line after `# EOF`, a family split in two, a counter sample without `_total`.
    families = {f.name: f for f in openmetrics_families(text)}
    assert sum(s.value for s in families["flowlog_http_requests"].samples) == 173
    assert families["flowlog_rows_inserted"].samples


def test_with_metrics_l7_off_nothing_is_derived_or_exposed(config, client):
    """Hubble exports the same L7 metrics itself: an operator who scrapes those turns ours off."""
    config.metrics.address = "127.0.0.1:0"
    config.metrics.l7 = False
    with ObserverServer(FlowBuffer(responses_of(fixture_lines(HTTP_348)))) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            service = server.service
            wait_for(lambda: service.caught_up() and ingester.writer.committed_ns >= service.newest_sent_ns)
            _, _, text = scrape(ingester.endpoint.address)
            assert ingester.l7_metrics is None
    assert samples(text, "flowlog_rows_inserted_total")
    assert not any(name in text for name in ("flowlog_http_requests", "flowlog_http_request_duration_seconds",
                                             "flowlog_dns_queries", "flowlog_dns_responses",
                                             "flowlog_metric_series_folded"))


def test_a_scraper_asking_for_another_name_escaping_gets_one_escaping_it_is_told_of():
    """Prometheus 3 may ask for dots or values escaping; the hand-written L7 page is written
    with names as they are, so the whole page is answered with underscores escaping, which
    leaves legacy names as they are, and the content type says so."""
    from prometheus_client import REGISTRY

    from ingest.metrics.endpoint import metrics_page

    l7 = L7Metrics()
    l7.observe("http_flows", [http_response_row()])
    for accept in ("application/openmetrics-text;version=1.0.0;escaping=dots",
                   "text/plain;version=1.0.0;escaping=values"):
        headers, body = metrics_page((REGISTRY,), (l7.page,), accept, None)
        assert dict(headers)["Content-Type"].endswith("escaping=underscores"), headers
        text = body.decode()
        assert "flowlog_http_requests_total{" in text and "flowlog_build_info" in text
        assert "flowlog__" not in text and "U__" not in text
