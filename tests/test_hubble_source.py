"""The gRPC source end to end: a real gRPC Observer server on loopback streams the
fixture flows, the real ingester stores them in the real embedded ClickHouse."""

from __future__ import annotations

import json
import threading
import time

import pytest
from google.protobuf import json_format

from ingest import queries
from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2
from ingest.checkpoint import Checkpoint
from ingest.decode import L7_EVENT_TYPE, overwritten_gap
from ingest.observer_server import FlowBuffer, ObserverServer, response_time_ns
from ingest.runner import Ingester

from .conftest import ALL_FIXTURES, DNS_330, HTTP_348, fixture_lines
from .expected import expected_rows, rfc3339_ns, stored_rows


def responses_of(lines: list[dict]) -> list[observer_pb2.GetFlowsResponse]:
    return [json_format.ParseDict(line, observer_pb2.GetFlowsResponse()) for line in lines]


class RunningIngester:
    """`flowlog run` in a thread of the test process, stopped as SIGTERM would."""

    def __init__(self, config, client):
        self.ingester = Ingester(config, client)
        self.thread = threading.Thread(target=self.ingester.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.ingester

    def __exit__(self, *exc):
        self.ingester.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "ingester did not stop"


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ingest_lines(config, client, lines, drop_after=None):
    with ObserverServer(FlowBuffer(responses_of(lines)), drop_after=drop_after) as server:
        config.source.address = server.address
        service = server.service
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: service.caught_up() and ingester.pipeline.committed_ns >= service.newest_sent_ns,
                     what="every flow sent and committed")
        return server, ingester


def count(client, config, table):
    return client.query(f"SELECT count() FROM `{config.store.database}`.`{table}`").result_rows[0][0]


HTTP_COLUMNS = ["time", "node", "verdict", "l7_type", "traffic_direction", "is_reply", "src_namespace", "src_pod",
                "src_identity", "src_ip", "src_port", "src_labels", "dst_namespace", "dst_pod", "dst_identity",
                "dst_ip", "dst_port", "dst_labels", "method", "url", "protocol", "status_code", "latency_ns"]
DNS_COLUMNS = ["time", "node", "verdict", "l7_type", "traffic_direction", "is_reply", "src_namespace", "src_pod",
               "src_identity", "src_ip", "src_port", "src_labels", "dst_namespace", "dst_pod", "dst_identity",
               "dst_ip", "dst_port", "dst_labels", "query", "qtypes", "rcode", "ips", "ttl", "rrtypes", "cnames",
               "observation_source"]


def assert_stored_equals_fixture(client, config, lines):
    http, dns = expected_rows(lines)
    assert stored_rows(client, config.store.database, "http_flows", HTTP_COLUMNS) == http
    assert stored_rows(client, config.store.database, "dns_flows", DNS_COLUMNS) == dns
    assert count(client, config, "l7_audit") == len(http) + len(dns)


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_streamed_over_grpc_is_stored_value_for_value(config, client, path):
    lines = fixture_lines(path)
    server, _ = ingest_lines(config, client, lines)
    assert_stored_equals_fixture(client, config, lines)
    request = server.service.requests[0]
    assert request.follow
    assert [f.type for f in request.whitelist[0].event_type] == [L7_EVENT_TYPE]


def test_http_fixture_counts_match_the_readme(config, client):
    ingest_lines(config, client, fixture_lines(HTTP_348))
    db = config.store.database
    rows = client.query(f"SELECT l7_type, status_code, count() FROM `{db}`.http_flows GROUP BY ALL ORDER BY ALL")
    assert rows.result_rows == [("REQUEST", 0, 175), ("RESPONSE", 200, 22), ("RESPONSE", 503, 151)]


def test_dns_rcode_names_and_answers(config, client):
    ingest_lines(config, client, fixture_lines(DNS_330))
    db = config.store.database
    rows = client.query(f"SELECT rcode_name, count(), countIf(length(ips) > 0) FROM `{db}`.dns_flows "
                        "WHERE l7_type = 'RESPONSE' GROUP BY ALL ORDER BY ALL").result_rows
    assert rows == [("NOERROR", 63, 55), ("NXDOMAIN", 102, 0)]


def test_stream_dropped_twice_stores_each_flow_once(config, client):
    lines = fixture_lines(HTTP_348)
    server, ingester = ingest_lines(config, client, lines, drop_after=[100, 150])
    assert len(server.service.requests) >= 3
    # Reconnects resume from the newest flow received, not from the start.
    assert server.service.requests[1].since.seconds > 0
    assert_stored_equals_fixture(client, config, lines)
    gaps = client.query(f"SELECT kind, count() FROM `{config.store.database}`.ingest_gaps GROUP BY kind").result_rows
    assert gaps == [("stream_interrupted", 2)]


def test_lost_events_are_stored_as_gaps_and_ingestion_continues(config, client):
    lines = fixture_lines(DNS_330)
    lost_at = lines[100]["flow"]["time"]
    lost = {"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "1234",
                            "first": lost_at, "last": lost_at},
            "node_name": "gke-node-a", "time": lost_at}
    ingest_lines(config, client, lines[:100] + [lost] + lines[100:])
    assert_stored_equals_fixture(client, config, lines)
    gaps = client.query(f"SELECT node, kind, source, count, toUnixTimestamp64Nano(first) "
                        f"FROM `{config.store.database}`.ingest_gaps").result_rows
    assert gaps == [("gke-node-a", "lost_events", "HUBBLE_RING_BUFFER", 1234, rfc3339_ns(lost_at))]


def test_namespace_and_verdict_filters_are_sent_to_hubble(config, client):
    config.source.namespaces = ["bookinfo"]
    config.source.verdicts = ["FORWARDED"]
    lines = fixture_lines(HTTP_348)
    server, _ = ingest_lines(config, client, lines)
    whitelist = server.service.requests[0].whitelist
    assert [list(f.source_pod) for f in whitelist] == [["bookinfo/"], []]
    assert [list(f.destination_pod) for f in whitelist] == [[], ["bookinfo/"]]
    assert all(list(f.verdict) == [flow_pb2.FORWARDED] for f in whitelist)
    namespaces = client.query(f"SELECT DISTINCT src_namespace = 'bookinfo' OR dst_namespace = 'bookinfo' "
                              f"FROM `{config.store.database}`.http_flows").result_rows
    assert namespaces == [(True,)]


def _timed(responses, start_ns: int, step_ns: int = 10_000_000):
    """Copies of responses whose flows happen from start_ns on, one every step_ns."""
    timed = []
    for index, response in enumerate(responses):
        copy = observer_pb2.GetFlowsResponse()
        copy.CopyFrom(response)
        copy.flow.time.FromNanoseconds(start_ns + index * step_ns)
        timed.append(copy)
    return timed


def _not_l7(responses):
    """The same flows as L3/L4 trace events, which the ingester does not ask for."""
    for response in responses:
        response.flow.ClearField("l7")
        response.flow.Type = flow_pb2.L3_L4
        response.flow.event_type.type = 4
    return responses


def _overwritten_while_away(config, client, crash: bool):
    """100 flows stored; the ingester stops (cleanly, or as if it crashed); 200 more pass
    through Hubble's 150-flow buffer before it starts again. Returns (gaps, expected
    start of the gap, the oldest flow Hubble still held)."""
    http = sorted(responses_of(fixture_lines(HTTP_348)), key=response_time_ns)
    before = _timed(http[:100], time.time_ns() - 30_000_000_000)
    buffer = FlowBuffer(before, capacity=150)
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: server.service.caught_up()
                     and ingester.pipeline.committed_ns >= server.service.newest_sent_ns, what="first 100 stored")
        checkpoint = Checkpoint(config.state_path, server.address)
        assert checkpoint.read_until_ns > response_time_ns(before[-1])  # the clean stop's mark
        if crash:
            data = json.loads(checkpoint.path.read_text())
            del data["read_until_ns"]
            checkpoint.path.write_text(json.dumps(data))
        meanwhile = _timed(http[100:300], time.time_ns() + 1_000_000_000)
        buffer.extend(meanwhile)
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: server.service.caught_up()
                     and ingester.pipeline.committed_ns >= server.service.newest_sent_ns
                     and count(client, config, "ingest_gaps") == 1, what="the rest stored and the gap recorded")
        assert [r.number for r in server.service.first_requests] == [1]  # asked on resuming only
    assert count(client, config, "l7_audit") == 250  # 100 before, and the 150 Hubble still held
    gaps = client.query(f"SELECT kind, node, toUnixTimestamp64Nano(first), toUnixTimestamp64Nano(last), count "
                        f"FROM `{config.store.database}`.ingest_gaps").result_rows
    expected_start = response_time_ns(before[-1]) if crash else checkpoint.read_until_ns - 1_000_000_000
    return gaps, expected_start, meanwhile[50]


@pytest.mark.parametrize("crash", [False, True], ids=["after a clean stop", "after a crash"])
def test_flows_overwritten_while_the_ingester_was_away_are_recorded_as_a_gap(config, client, crash):
    gaps, start, oldest_held = _overwritten_while_away(config, client, crash)
    # After a clean stop the gap starts when reading stopped (less a second for clocks);
    # after a crash, at the newest flow stored.
    assert gaps == [("buffer_overwritten", oldest_held.flow.node_name, start, response_time_ns(oldest_held), 0)]
    rows = queries.load()["ingest_completeness"].rows(client, {"from": "2000-01-01", "until": "2200-01-01"},
                                                      config.store.database)
    assert sum(r["buffer_overwritten"] for r in rows) == 1


def test_flows_read_in_full_are_no_gap_however_old_the_last_l7_flow(config, client):
    """Little L7 traffic: other events fill Hubble's buffer while the ingester reads it. A
    restart finds the buffer newer than the last L7 flow, but nothing was missed."""
    http = sorted(responses_of(fixture_lines(HTTP_348)), key=response_time_ns)
    buffer = FlowBuffer(_timed(http[:1], time.time_ns() - 30_000_000_000), capacity=20)
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: ingester.pipeline.committed_ns >= server.service.newest_sent_ns > 0,
                     what="the L7 flow stored")
            others = _not_l7(_timed(http[1:51], time.time_ns() - 20_000_000_000))
            for start in range(0, len(others), 5):  # at a pace the reader keeps up with
                buffer.extend(others[start:start + 5])
                wait_for(server.service.caught_up, what="the stream read up")
        assert buffer.overwritten == 31  # the L7 flow is gone from Hubble's buffer
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: server.service.first_requests, what="the oldest flows asked for")
            time.sleep(0.5)
    gaps = client.query(f"SELECT kind FROM `{config.store.database}`.ingest_gaps").result_rows
    assert gaps == []


def test_a_range_found_again_is_the_same_row():
    first = overwritten_gap("hubble:4245", "node-a", 1_000, 5_000, "overwritten")
    again = overwritten_gap("hubble:4245", "node-a", 1_000, 9_000, "overwritten")
    assert (first.gap_id, first.time_ns) == (again.gap_id, again.time_ns)
    assert overwritten_gap("hubble:4245", "node-b", 1_000, 5_000, "overwritten").gap_id != first.gap_id
