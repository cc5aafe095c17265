"""End to end with a real Prometheus: the Debian `prometheus` binary scrapes the real
ingester every second while it streams the HTTP and DNS fixtures, in chunks, from an
in-process Hubble server into the embedded ClickHouse; then every PromQL query and
variable of the bundled dashboards, variables at All, returns data from that Prometheus."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2, observer_pb2_grpc
from ingest.history.command import start_server
from ingest.demo.observer import FlowBuffer, ObserverServer, response_time_ns

from .helpers import DNS_330, HTTP_348, fixture_lines, free_port, responses_of, RunningIngester, wait_for
from .dashboard_queries import PROMETHEUS, label_values_query, load_dashboards, render_promql, targets, variables

# Stands for $__rate_interval, $__interval and $__range: longer than the whole run, so that
# rate() and increase() see every scrape of it.
WINDOW = "5m"
CHUNKS = 5


class Prometheus:
    """The prometheus binary on loopback scraping one target every second, its TSDB in a
    temporary directory; stopped (killed if it must be) on exit."""

    def __init__(self, directory: Path, target: str):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("no prometheus binary on PATH (CI installs it: apt-get install -y prometheus)")
        directory.mkdir(parents=True)
        config = directory / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          "scrape_configs:\n  - job_name: flowlog\n    static_configs:\n"
                          f"      - targets: ['{target}']\n")
        self.address = f"127.0.0.1:{free_port()}"
        self.command = [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                        f"--web.listen-address={self.address}", "--log.level=warn"]
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._ready, what="prometheus to be ready")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited {self.process.returncode}:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict | list:
        url = f"http://{self.address}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)["data"]
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{path} {params}: {err.code} {err.read().decode()}") from None

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def newest_scrape_s(self) -> float:
        """When the newest successful scrape of the ingester started (0 before the first)."""
        # A range selector returns the samples with their own timestamps: the scrapes'.
        result = self.query('up{job="flowlog"}[1m]')
        return max((float(at) for series in result for at, up in series["values"] if up == "1"), default=0.0)

    def wait_for_scrape_after(self, moment_s: float) -> None:
        wait_for(lambda: self.newest_scrape_s() > moment_s, what=f"a scrape after {moment_s}")


def fixture_chunks() -> list[list[observer_pb2.GetFlowsResponse]]:
    """The HTTP and DNS fixtures in time order (as Hubble's ring buffer holds them) in
    CHUNKS parts, the third opening with a report of events lost from the ring buffer."""
    responses = sorted(responses_of(fixture_lines(HTTP_348) + fixture_lines(DNS_330)), key=response_time_ns)
    size = math.ceil(len(responses) / CHUNKS)
    chunks = [responses[i:i + size] for i in range(0, len(responses), size)]
    before = chunks[1][-1]
    chunks[2].insert(0, observer_pb2.GetFlowsResponse(
        node_name=before.node_name, time=before.flow.time,
        lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=1234,
                                       first=before.flow.time, last=before.flow.time)))
    return chunks


def test_every_dashboard_promql_query_returns_data_from_a_real_prometheus(config, client, tmp_path):
    """`flowlog run --serve`: the ingester and the history server on one metrics port; a
    client asks the history server for the newest flows after each chunk."""
    config.metrics.address = "127.0.0.1:0"
    config.serve.listen = "127.0.0.1:0"
    buffer = FlowBuffer()
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        with (RunningIngester(config, client, serving_history=True) as ingester,
              history_server(config) as history,
              grpc.insecure_channel(f"127.0.0.1:{history.port}") as channel,
              Prometheus(tmp_path / "prometheus", ingester.endpoint.address) as prometheus):
            prometheus.wait_for_scrape_after(0)
            observer = observer_pb2_grpc.ObserverStub(channel)
            # Each chunk is stored and scraped before the next one comes: counters grow between scrapes.
            for chunk in fixture_chunks():
                newest_ns = max(response_time_ns(r) for r in chunk if r.HasField("flow"))
                buffer.extend(chunk)
                wait_for(lambda: ingester.writer.committed_ns >= newest_ns, what="the chunk stored")
                assert list(observer.GetFlows(observer_pb2.GetFlowsRequest(number=20), timeout=30))
                prometheus.wait_for_scrape_after(time.time())
            # A series first seen in the last chunk needs a second sample for rate().
            prometheus.wait_for_scrape_after(prometheus.newest_scrape_s())

            results, failures = {}, []
            for dashboard in load_dashboards():
                for panel, target in targets(dashboard, PROMETHEUS):
                    expr = render_promql(target["expr"], dashboard, WINDOW)
                    result = results[dashboard["uid"], panel["title"], target["refId"]] = prometheus.query(expr)
                    if not result:
                        failures.append(f"{dashboard['title']} / {panel['title']} [{target['refId']}]: {expr}")
                for variable in variables(dashboard):
                    if variable["type"] == "query" and variable["datasource"]["type"] == PROMETHEUS:
                        selector, label = label_values_query(variable, dashboard, WINDOW)
                        if not prometheus.api(f"label/{label}/values", **{"match[]": selector}):
                            failures.append(f"{dashboard['title']} / variable {variable['name']}: {selector}")
    assert not failures, "no data from Prometheus for:\n" + "\n".join(failures)

    def series(uid: str, title: str) -> list[tuple[dict, float]]:
        return [(s["metric"], float(s["value"][1])) for s in results[uid, title, "A"]]

    # What a user sees: the 503s of the HTTP fixture, both rcodes of the DNS fixture, and
    # the lost events as reported rather than the zero shown when nothing was lost.
    rates_503 = [value for labels, value in series("flowlog-http-by-workload",
                                                   "Incoming requests by destination and response code")
                 if labels["status"] == "503"]
    assert rates_503 and max(rates_503) > 0
    rcodes = {labels["rcode"] for labels, _ in series("flowlog-dns", "Responses by rcode")}
    assert rcodes == {"NOERROR", "NXDOMAIN"}
    lost_sources = {labels.get("source") for labels, _ in series("flowlog-ingester-health", "Lost events by source")}
    assert "HUBBLE_RING_BUFFER" in lost_sources
    calls = {(labels["method"], labels["code"]): value for labels, value in series(
        "flowlog-ingester-health", "History calls by method and status")}
    assert calls[("GetFlows", "OK")] > 0


@contextlib.contextmanager
def history_server(config):
    """The history server as `run --serve` starts it, over the same store."""
    server = start_server(config)
    try:
        yield server
    finally:
        server.stop(0)
