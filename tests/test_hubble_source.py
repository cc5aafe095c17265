"""The gRPC source end to end: a real gRPC Observer server on loopback streams the
fixture flows, the real ingester stores them in the real embedded ClickHouse."""

from __future__ import annotations

import pytest

from ingest.api.flow import flow_pb2
from ingest.pipeline.checkpoint import Checkpoint
from ingest.api import L7_EVENT_TYPE
from ingest.demo.observer import FlowBuffer, ObserverServer

from .helpers import (ALL_FIXTURES, DNS_330, HTTP_348, RunningIngester, assert_stored_equals_fixture, count,
                      fixture_lines, ingest_lines, responses_of, wait_for)
from .expected import rfc3339_ns


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


def test_a_resume_point_ahead_of_the_clock_asks_for_every_flow_and_stores_each_once(config, client,
                                                                                    newest_committed_restored):
    """One flow stamped a day ahead (a node's clock ran ahead) made the checkpoint a day
    ahead: the next start asked Hubble for flows since then, and got none for a day. The
    flows are one node's, as its own hubble.sock serves them, so no other node's older
    time holds the resume point back."""
    import copy
    import datetime

    lines = fixture_lines(HTTP_348)
    for line in lines:
        line["flow"]["node_name"] = line["node_name"] = "gke-node-a"
    ahead = copy.deepcopy(lines[200])
    ahead["flow"]["time"] = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.123456789Z")
    ahead["flow"]["uuid"] = "00000000-0000-4000-8000-0000000a4ead"
    buffer = FlowBuffer(responses_of(lines[:200] + [ahead]))
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        service = server.service
        for restart, expected in enumerate((201, len(lines))):
            with RunningIngester(config, client):
                # committed_ns starts at the checkpoint, ahead of every flow: wait for the rows.
                wait_for(lambda: count(client, config, "l7_audit") >= expected, what=f"{expected} flows stored")
            if not restart:
                assert Checkpoint(config.state_path, server.address).time_ns == rfc3339_ns(ahead["flow"]["time"])
                buffer.extend(responses_of(lines[201:]))  # Hubble saw more while the ingester was down
    assert service.requests[-1].since.ToNanoseconds() == 0
    assert_stored_equals_fixture(client, config, lines[:200] + [ahead] + lines[201:])


@pytest.mark.parametrize("stamped_like", [99, 100], ids=["the flow before it", "the flow after it"])
def test_a_loss_report_sent_again_after_a_reconnect_is_stored_once(config, client, stamped_like):
    lines = fixture_lines(HTTP_348)
    lost_at = lines[stamped_like]["flow"]["time"]
    lost = {"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "77", "first": lost_at,
                            "last": lost_at}, "node_name": "gke-node-a", "time": lost_at}
    # The stream ends right after the report; the reconnect resumes before the newest flow
    # received of each node (at or before the report's time) and gets the report again,
    # in another batch.
    config.batch.max_rows = 101
    server, _ = ingest_lines(config, client, lines[:100] + [lost] + lines[100:], drop_after=[101])
    newest_by_node = {}
    for line in lines[:100]:
        node, time_ns = line["flow"]["node_name"], rfc3339_ns(line["flow"]["time"])
        newest_by_node[node] = max(newest_by_node.get(node, 0), time_ns)
    assert server.service.requests[1].since.ToNanoseconds() == (min(newest_by_node.values())
                                                                - int(config.source.resume_margin_s * 1e9))
    assert_stored_equals_fixture(client, config, lines)
    db = config.store.database
    assert client.query(f"SELECT count(), sum(count) FROM `{db}`.ingest_gaps WHERE kind = 'lost_events'"
                        ).result_rows == [(1, 77)]
    assert client.query(f"SELECT sum(lost) FROM `{db}`.ingest_ledger").result_rows == [(77,)]


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
