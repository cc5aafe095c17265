"""The demo traffic looks like real Hubble output: the same fields as the real fixture flows,
reproducible for a seed, and a mix of traffic that gives every dashboard something to show."""

from __future__ import annotations

import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.api.flow import flow_pb2
from ingest.demo.traffic import DemoTraffic

from .helpers import DNS_330, HTTP_348, fixture_lines

S = 1_000_000_000
START = 1_700_000_000 * S
# Slow responses arrive seconds after their request; generate this much more to see them.
IN_FLIGHT_S = 5

# Only newer Cilium (>= 1.15) sets it; the fixtures come from Cilium 1.10/1.11.
NEWER_THAN_FIXTURES = {"flow.uuid"}
# Pods ask CoreDNS over UDP, while the DNS fixture is node-local-dns forwarding over TCP.
DNS_UDP = {"flow.l4.UDP.source_port", "flow.l4.UDP.destination_port"}
DNS_TCP = {"flow.l4.TCP.source_port", "flow.l4.TCP.destination_port"}


def key_paths(value, prefix: str = "") -> set[str]:
    """The JSON key paths in value, list indices collapsed: flow.l7.http.headers[].key."""
    if isinstance(value, dict):
        return set().union(*(key_paths(v, f"{prefix}.{k}" if prefix else k) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(key_paths(v, prefix + "[]") for v in value))
    return {prefix}


def seconds(traffic: DemoTraffic, count: int) -> list:
    return [r for k in range(count) for r in traffic.second(START + k * S)]


def demo_paths(kind: str) -> set[str]:
    lines = [MessageToDict(r, preserving_proto_field_name=True) for r in seconds(DemoTraffic(), 30)]
    return set().union(*(key_paths(line) for line in lines if kind in line["flow"]["l7"]))


@pytest.mark.parametrize("kind, fixture, only_demo, only_fixture", [
    ("http", HTTP_348, NEWER_THAN_FIXTURES, set()),
    ("dns", DNS_330, NEWER_THAN_FIXTURES | DNS_UDP, DNS_TCP),
])
def test_flows_have_the_fields_of_real_hubble_flows(kind, fixture, only_demo, only_fixture):
    real = set().union(*(key_paths(line) for line in fixture_lines(fixture)))
    demo = demo_paths(kind)

    assert demo - real == only_demo
    assert real - demo == only_fixture


def test_same_seed_and_second_give_the_same_flows():
    def serialized(traffic):
        return [r.SerializeToString(deterministic=True) for r in seconds(traffic, 3)]

    assert serialized(DemoTraffic(seed=7)) == serialized(DemoTraffic(seed=7))
    assert serialized(DemoTraffic(seed=7)) != serialized(DemoTraffic(seed=8))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), start=st.integers(0, 2**62))
def test_a_second_holds_only_its_own_flows_in_time_order(seed, start):
    times = [r.flow.time.ToNanoseconds() for r in DemoTraffic(seed).second(start)]

    assert times
    assert all(start <= t < start + S for t in times)
    assert times == sorted(times)


def test_thirty_seconds_hold_every_kind_of_traffic_a_dashboard_shows():
    flows = [r.flow for r in seconds(DemoTraffic(), 30 + IN_FLIGHT_S)]
    requests = [f for f in flows if f.l7.type == flow_pb2.REQUEST and f.time.ToNanoseconds() < START + 30 * S]
    responses = {response_key(f): f for f in flows if f.l7.type == flow_pb2.RESPONSE}

    for request in requests:
        response = responses[request_key(request)]
        assert (response.IP.source, response.IP.destination) == (request.IP.destination, request.IP.source)
        assert ports(response) == ports(request)[::-1]
        if request.l7.HasField("http"):
            assert response.l7.latency_ns == response.time.ToNanoseconds() - request.time.ToNanoseconds() > 0
        else:
            # Hubble times only what it can pair by X-Request-Id, so DNS answers carry no latency.
            assert response.l7.latency_ns == 0
    answered = [responses[request_key(r)] for r in requests]
    assert any(f.l7.HasField("http") for f in answered)
    assert any(f.l7.HasField("dns") for f in answered)
    assert any(f.l7.http.code >= 500 for f in answered)
    assert any(f.l7.dns.rcode == 3 and not f.l7.dns.ips for f in answered)
    assert any(f.destination.labels == ["reserved:world"] for f in requests)


def request_key(flow: flow_pb2.Flow) -> tuple:
    if flow.l7.HasField("http"):
        return ("http", request_id(flow))
    return ("dns", flow.IP.source, ports(flow)[0], flow.l7.dns.query)


def response_key(flow: flow_pb2.Flow) -> tuple:
    """The key of the request a response answers: Hubble swaps source and destination on replies."""
    if flow.l7.HasField("http"):
        return ("http", request_id(flow))
    return ("dns", flow.IP.destination, ports(flow)[1], flow.l7.dns.query)


def ports(flow: flow_pb2.Flow) -> tuple[int, int]:
    l4 = flow.l4.TCP if flow.l4.HasField("TCP") else flow.l4.UDP
    return l4.source_port, l4.destination_port


def request_id(flow: flow_pb2.Flow) -> str:
    return next(h.value for h in flow.l7.http.headers if h.key == "X-Request-Id")
