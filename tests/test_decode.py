"""Decoding details that the fixtures do not cover: redaction, workloads, gaps."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2
from ingest.config import HTTPConfig
from ingest.decode.decoder import Decoder, workload_of
from ingest.pipeline.records import DecodeError, FlowRows, GapRow
from ingest.store.schema import HTTP_FLOWS, INGEST_GAPS

from .helpers import http_flow


def http_values(decoder: Decoder, response) -> dict:
    rows = decoder.decode(response)
    assert isinstance(rows, FlowRows) and rows.table is HTTP_FLOWS
    return dict(zip(HTTP_FLOWS.column_names, rows.row))


SECRETS = {"Authorization": "Bearer abc.def", "cookie": "session=1", "Set-Cookie": "id=2",
           "Proxy-Authorization": "Basic Zm9v", "X-Request-Id": "r-1", "Accept": "*/*"}


def test_sensitive_headers_are_redacted_by_default_whatever_their_case():
    values = http_values(Decoder(), http_flow("http://user:pw@api:8080/v1/items?token=t0k#frag", SECRETS))
    assert values["headers"] == {"Authorization": "[REDACTED]", "cookie": "[REDACTED]", "Set-Cookie": "[REDACTED]",
                                 "Proxy-Authorization": "[REDACTED]", "X-Request-Id": "r-1", "Accept": "*/*"}
    assert values["url"] == "http://api:8080/v1/items?token=[REDACTED]#frag"
    assert values["host"] == "api:8080"


def test_allow_list_and_query_stripping():
    decoder = Decoder(HTTPConfig(headers_allow=["X-Request-Id"], strip_query=True))
    values = http_values(decoder, http_flow("http://api/v1?token=t0k", SECRETS))
    assert values["headers"] == {"X-Request-Id": "r-1"}
    assert values["url"] == "http://api/v1"


@pytest.mark.parametrize("uuid, flow_id", [
    ("1b4e28ba-2fa1-41d2-883f-0016d3cca427", "1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
    ("1B4E28BA-2FA1-41D2-883F-0016D3CCA427", "1b4e28ba-2fa1-41d2-883f-0016d3cca427"),
    ("1b4e28ba2fa141d2883f0016d3cca427", "1b4e28ba2fa141d2883f0016d3cca427"),
    ("flow-17", "49f89fb5b42f6b68a569aff80eda40a0"),  # MD5, as ClickHouse's lower(hex(MD5('flow-17')))
    ("", None),  # Cilium < 1.15 sends none: the content hash
])
def test_a_flow_id_is_what_a_uuid_column_holds_and_the_audit_row_keeps_it_as_it_came(uuid, flow_id):
    response = http_flow("http://api/v1", {})
    response.flow.uuid = uuid
    rows = Decoder().decode(response)
    values = dict(zip(HTTP_FLOWS.column_names, rows.row))
    assert rows.flow_id == values["flow_id"] and rows.audit_row[2] == rows.audit_id
    if flow_id is not None:
        assert (values["flow_id"], rows.audit_id) == (flow_id, uuid)
        return
    assert len(values["flow_id"]) == 32 and int(values["flow_id"], 16) >= 0 and rows.audit_id == values["flow_id"]
    assert http_values(Decoder(), response)["flow_id"] == values["flow_id"]
    response.flow.node_name = "another-node"
    assert http_values(Decoder(), response)["flow_id"] != values["flow_id"]


@pytest.mark.parametrize("endpoint, workload", [
    ({"pod_name": "productpage-v1-6b746f74dc-ffh56"}, "productpage-v1"),
    ({"pod_name": "node-local-dns-88zrp"}, "node-local-dns"),
    ({"pod_name": "web-0"}, "web"),
    ({"pod_name": "curl-pod"}, "curl-pod"),
    ({"pod_name": "x-7d9c6b8d4f-x2k9q", "workloads": [{"name": "api", "kind": "Deployment"}]}, "api"),
    ({"labels": ["k8s:k8s-app=kube-dns"]}, "kube-dns"),
    ({"labels": ["reserved:world"]}, ""),
])
def test_workload_names(endpoint, workload):
    assert workload_of(json_format.ParseDict(endpoint, flow_pb2.Endpoint())) == workload


def test_node_status_from_relay_becomes_one_gap_row_per_node():
    response = json_format.ParseDict({"node_status": {"state_change": "NODE_UNAVAILABLE", "node_names": ["a", "b"],
                                                      "message": "connection refused"},
                                      "time": "2026-11-26T10:00:00Z"}, observer_pb2.GetFlowsResponse())
    gaps = Decoder().decode(response)
    assert [dict(zip(INGEST_GAPS.column_names, g.row))["node"] for g in gaps] == ["a", "b"]
    assert all(isinstance(g, GapRow) and g.row[3] == "node_status" and g.row[4] == "NODE_UNAVAILABLE" for g in gaps)
    assert len({g.gap_id for g in gaps}) == 2


def flow_response(data: dict) -> observer_pb2.GetFlowsResponse:
    return json_format.ParseDict({"flow": {"Type": "L7", "node_name": "n1", "verdict": "FORWARDED", **data}},
                                 observer_pb2.GetFlowsResponse())


def at(seconds: int) -> str:
    return f"2026-11-26T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


CHECKOUT = {"namespace": "shop", "pod_name": "checkout-5b9c7d6f8-h5j4k"}
WORLD = {"identity": 2, "labels": ["reserved:world"]}


def dns_answer(seconds: int, ips: list[str], ttl: int = 30) -> observer_pb2.GetFlowsResponse:
    return flow_response({"time": at(seconds), "source": {"namespace": "kube-system", "pod_name": "coredns-x"},
                          "destination": CHECKOUT, "l7": {"type": "RESPONSE", "dns": {
                              "query": "api.example.com.", "ips": ips, "ttl": ttl, "rcode": 0}}})


def test_http_to_the_world_is_named_by_the_clients_last_dns_answer_within_its_ttl():
    decoder = Decoder()
    decoder.decode(dns_answer(0, ["203.0.113.10", "203.0.113.11"]))

    def name(seconds, ip, response=False, **extra):
        ends = {"source": WORLD, "destination": CHECKOUT} if response else {"source": CHECKOUT, "destination": WORLD}
        addresses = ({"source": ip, "destination": "10.0.0.5"} if response
                     else {"source": "10.0.0.5", "destination": ip})
        rows = decoder.decode(flow_response({"time": at(seconds), **ends, "IP": addresses, **extra, "l7": {
            "type": "RESPONSE" if response else "REQUEST", "http": {"method": "GET", "url": f"https://{ip}/"}}}))
        return dict(zip(HTTP_FLOWS.column_names, rows.row))["dst_dns_name"]

    assert name(5, "203.0.113.11") == "api.example.com."
    assert name(6, "203.0.113.11", response=True) == "api.example.com."  # the server is the source of a reply
    assert name(7, "198.51.100.1") == ""  # never resolved
    assert name(7, "203.0.113.10", destination_names=["hubble.knows.example."]) == "hubble.knows.example."
    assert name(30 + 60 + 5, "203.0.113.10") == ""  # TTL 30 s plus 60 s grace ran out


@pytest.mark.parametrize("change, error", [
    (lambda r: r.flow.l4.TCP.SetInParent() or setattr(r.flow.l4.TCP, "destination_port", 70000),
     "flow.l4.TCP.destination_port: 70000 is no port"),
    (lambda r: r.flow.l4.SCTP.SetInParent() or setattr(r.flow.l4.SCTP, "source_port", 65536),
     "flow.l4.SCTP.source_port: 65536 is no port"),
    (lambda r: setattr(r.flow.l7.http, "code", 2**32 - 1), "flow.l7.http.code: 4294967295 is no HTTP status"),
    (lambda r: r.flow.time.FromNanoseconds(2**63), "flow.time: 2262-04-11T23:47:16.854775808Z is outside"),
    (lambda r: r.flow.time.FromJsonString("2106-02-07T06:28:16Z"), "flow.time: 2106-02-07T06:28:16Z is outside"),
    (lambda r: r.flow.time.FromJsonString("1969-12-31T23:59:59.999999999Z"), "flow.time: 1969-12-31T23:59:59.9"),
    (lambda r: setattr(r.flow.time, "seconds", -2**62), "flow.time: -4611686018427387904 s since 1970 is outside"),
])
def test_a_value_its_column_cannot_hold_is_a_decode_error_naming_the_field(change, error):
    """The gRPC path: Hubble's uint32 and Timestamp fields allow more than the columns hold."""
    response = http_flow("http://a/", {})
    change(response)
    with pytest.raises(DecodeError, match=error):
        Decoder().decode(response)


def test_the_decoder_fills_exactly_the_columns_of_each_table_by_name(monkeypatch):
    """A column added to schema.py without a value in the decoder fails here, not at the
    first flow of a running ingester."""
    from ingest.decode import decoder as decoder_module
    from ingest.sources.files import parse_line
    from ingest.store.schema import DNS_FLOWS, L7_AUDIT

    from .helpers import DNS_330, HTTP_348

    filled: dict[str, set[str]] = {}

    def recording(name, layout):
        def row(values):
            filled.setdefault(name, set()).update(values)
            return layout(values)
        return row

    for name in ("_HTTP_ROW", "_DNS_ROW", "_AUDIT_ROW"):
        monkeypatch.setattr(decoder_module, name, recording(name, getattr(decoder_module, name)))
    decoder = Decoder()
    for path in (HTTP_348, DNS_330):
        for line in path.read_bytes().splitlines()[:20]:
            decoder.decode(parse_line(line))
    assert filled == {"_HTTP_ROW": set(HTTP_FLOWS.column_names), "_DNS_ROW": set(DNS_FLOWS.column_names),
                      "_AUDIT_ROW": set(L7_AUDIT.column_names)}
