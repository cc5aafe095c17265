"""Synthetic Hubble L7 traffic for `flowlog demo`: a small cluster that looks real on the dashboards.

The scene grows Cilium's seed scene (a curl-pod calling webpod once a second) with a
frontend that browses a catalog and places orders at a checkout, which now and then calls an
API outside the cluster. Every flow has the fields Hubble gives it (tests/test_demo_traffic.py
holds them against real captures). It does not talk to anything: it only builds messages.

Each second's calls come from a random.Random seeded with (seed, that second), so any
second can be asked for in any order and always reads the same, and a slow response
lands in a later second the way it would on a real cluster.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BoolValue

from ..api import L7_EVENT_TYPE
from ..api.flow import flow_pb2
from ..api.observer import observer_pb2

_S = 1_000_000_000
_MS = 1_000_000
# A call ends less than 5 s after the start of its second (it starts within the second, then
# DNS lookups of a few ms, up to 0.5 s of spread, a slow response of at most 3 s), so the
# calls of these many earlier seconds can still have flows in the one asked for.
_LOOKBACK_S = 5
# What Cilium's DNS proxy reports as the TTL of an answer without records.
_NO_RECORDS_TTL = 2**32 - 1


@dataclass(frozen=True)
class _Peer:
    ip: str
    identity: int
    labels: tuple[str, ...]
    namespace: str = ""
    pod_name: str = ""
    node: str = ""  # "" outside the cluster
    endpoint_id: int = 0

    def endpoint(self, observed_on: str) -> flow_pb2.Endpoint:
        # Cilium knows the endpoint ID only of endpoints on its own node.
        local = self.node == observed_on
        return flow_pb2.Endpoint(
            ID=self.endpoint_id if local else 0, identity=self.identity, namespace=self.namespace,
            labels=self.labels, pod_name=self.pod_name)


def _pod(name: str, namespace: str, app_label: str, service_account: str, ip: str, node: str,
         endpoint_id: int, identity: int) -> _Peer:
    labels = sorted([  # Hubble sorts them
        f"k8s:{app_label}",
        f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}",
        "k8s:io.cilium.k8s.policy.cluster=default",
        f"k8s:io.cilium.k8s.policy.serviceaccount={service_account}",
        f"k8s:io.kubernetes.pod.namespace={namespace}",
    ])
    return _Peer(ip, identity, tuple(labels), namespace, name, node, endpoint_id)


_CURL = _pod("curl-pod", "default", "app=curl", "default", "10.244.1.12", "kind-worker", 1423, 20331)
_WEBPODS = (
    _pod("webpod-7d9c6b8d4f-x2k9q", "default", "app=webpod", "default", "10.244.1.37", "kind-worker", 2871, 9183),
    _pod("webpod-7d9c6b8d4f-m4v7r", "default", "app=webpod", "default", "10.244.2.41", "kind-worker2", 388, 9183),
)
_COREDNS = _pod("coredns-5d78c9869d-x8hm4", "kube-system", "k8s-app=kube-dns", "coredns", "10.244.2.5",
               "kind-worker2", 1907, 45627)
_FRONTEND = _pod("frontend-6c8f9d7b5-q7w2z", "default", "app=frontend", "frontend", "10.244.1.58",
                "kind-worker", 3120, 31874)
_CHECKOUT = _pod("checkout-5b9c7d6f8-h5j4k", "default", "app=checkout", "checkout", "10.244.2.23",
                "kind-worker2", 742, 12655)
_CATALOG = _pod("catalog-7f6d5c4b8-p9r8t", "default", "app=catalog", "catalog", "10.244.2.66",
               "kind-worker2", 1255, 57002)
_RATES_API = _Peer("203.0.113.10", 2, ("reserved:world",))  # identity 2 is Cilium's "world"

# What CoreDNS answers; any other name is NXDOMAIN.
_RECORDS = {
    "webpod.default.svc.cluster.local.": "10.96.143.27",
    "checkout.default.svc.cluster.local.": "10.96.52.210",
    "api.example.com.": _RATES_API.ip,
}


class DemoTraffic:
    def __init__(self, seed: int = 1):
        self._seed = seed

    def second(self, start_ns: int) -> list[observer_pb2.GetFlowsResponse]:
        """The flows of one second of cluster traffic starting at start_ns (ns since epoch), in time order."""
        flows = []
        for k in range(_LOOKBACK_S + 1):
            call_second = start_ns - k * _S
            scene = _Scene(random.Random(f"{self._seed}:{call_second}"))
            scene.play(call_second)
            flows += scene.flows
        flows = [f for f in flows if start_ns <= f.time.ToNanoseconds() < start_ns + _S]
        return sorted(flows, key=lambda f: f.time.ToNanoseconds())


class _Scene:
    """The calls that start in one second, with all their flows (some end seconds later)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.flows: list[observer_pb2.GetFlowsResponse] = []

    def play(self, start_ns: int) -> None:
        rng = self.rng

        t = self._lookup(_CURL, start_ns + rng.randrange(_S), "webpod")
        self._http(_CURL, rng.choice(_WEBPODS), 80, t, "GET", "http://webpod/",
                   503 if rng.random() < 0.01 else 200, self._latency(2), "curl/8.5.0")

        # The catalog enforces an L7 policy on its side, so its proxy sees these at ingress.
        t = start_ns + rng.randrange(_S)
        for _ in range(rng.randint(2, 5)):
            page = rng.randint(1, 12)
            t = self._http(_FRONTEND, _CATALOG, 8080, t, "GET", f"http://catalog:8080/api/items?page={page}",
                           404 if page > 10 else 200, self._latency(8, 0.6), "Go-http-client/1.1",
                           flow_pb2.INGRESS) + rng.randrange(20 * _MS)

        t = start_ns + rng.randrange(_S)
        if rng.random() < 0.3:  # a new connection; the frontend names the checkout without the final dot
            t = self._lookup(_FRONTEND, t, "checkout.default.svc.cluster.local")
        for _ in range(rng.randint(2, 3)):  # concurrent, from different users
            roll = rng.random()
            code = 500 if roll < 0.04 else 503 if roll < 0.08 else 201
            latency = int(rng.uniform(1, 3) * _S) if rng.random() < 0.03 else self._latency(25)
            self._http(_FRONTEND, _CHECKOUT, 8080, t + rng.randrange(500 * _MS), "POST",
                       f"http://checkout:8080/api/orders/{rng.randint(10000, 99999)}", code, latency,
                       "Go-http-client/1.1")

        if rng.random() < 0.25:
            t = self._lookup(_CHECKOUT, start_ns + rng.randrange(_S), "api.example.com")
            self._http(_CHECKOUT, _RATES_API, 80, t, "GET", "http://api.example.com/v1/rates?base=EUR", 200,
                       self._latency(60), "Go-http-client/1.1")

    def _uuid4(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _latency(self, median_ms: float, sigma: float = 0.4) -> int:
        return int(self.rng.lognormvariate(math.log(median_ms * _MS), sigma))

    def _lookup(self, client: _Peer, t: int, name: str) -> int:
        """Resolve name the way a pod's resolver does; returns when the answer arrived."""
        # With Kubernetes' ndots:5, a name with fewer dots is tried under the search path first.
        search = [f"{client.namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        candidates = [f"{name}.{domain}." for domain in search] if name.count(".") < 5 else []
        for query in [*candidates, f"{name}."]:
            ips = [_RECORDS[query]] if query in _RECORDS else []
            t = self._dns(client, t, query, ips) + self.rng.randrange(200_000)
            if ips:
                return t
        return t

    def _dns(self, client: _Peer, t: int, query: str, ips: list[str]) -> int:
        """One query to CoreDNS and its answer; returns when the answer arrived."""
        if not ips:
            ttl = _NO_RECORDS_TTL
        elif query.endswith(".cluster.local."):
            ttl = 30  # CoreDNS' kubernetes plugin
        else:
            ttl = self.rng.randint(60, 300)  # what is left of the upstream TTL in CoreDNS' cache
        request = flow_pb2.DNS(query=query, observation_source="proxy", qtypes=["A"])
        response = flow_pb2.DNS(query=query, ips=ips, ttl=ttl, observation_source="proxy", rcode=0 if ips else 3,
                                qtypes=["A"], rrtypes=["A"] if ips else [])
        answer = f'"{",".join(ips)}"' if ips else "RCode: Non-Existent Domain"
        t_answer = t + self._latency(0.6)
        # No latency_ns: Hubble times only requests it can pair by X-Request-Id, that is HTTP.
        self._exchange(t, t_answer, client, _COREDNS, 53, "UDP", flow_pb2.EGRESS,
                       flow_pb2.Layer7(type=flow_pb2.REQUEST, dns=request), f"DNS Query {query} A",
                       flow_pb2.Layer7(type=flow_pb2.RESPONSE, dns=response),
                       f"DNS Answer {answer} TTL: {ttl} (Proxy {query} A)")
        return t_answer

    def _http(self, client: _Peer, server: _Peer, port: int, t: int, method: str, url: str, code: int,
              latency_ns: int, user_agent: str, direction: int = flow_pb2.EGRESS) -> int:
        """One request and its response; returns when the response arrived."""
        request_id = self._uuid4()
        headers = [flow_pb2.HTTPHeader(key=k, value=v)  # Hubble sorts them by key
                   for k, v in [("Accept", "*/*"), ("User-Agent", user_agent), ("X-Request-Id", request_id)]]
        # Cilium logs the request's headers on the response too.
        request = flow_pb2.HTTP(method=method, url=url, protocol="HTTP/1.1", headers=headers)
        response = flow_pb2.HTTP(code=code, method=method, url=url, protocol="HTTP/1.1", headers=headers)
        self._exchange(t, t + latency_ns, client, server, port, "TCP", direction,
                       flow_pb2.Layer7(type=flow_pb2.REQUEST, http=request), f"HTTP/1.1 {method} {url}",
                       flow_pb2.Layer7(type=flow_pb2.RESPONSE, latency_ns=latency_ns, http=response),
                       f"HTTP/1.1 {code} {latency_ns // _MS}ms ({method} {url})")
        return t + latency_ns

    def _exchange(self, t_request: int, t_response: int, client: _Peer, server: _Peer, port: int, transport: str,
                  direction: int, request: flow_pb2.Layer7, request_summary: str, response: flow_pb2.Layer7,
                  response_summary: str) -> None:
        # The proxy that sees the exchange runs on the node of the side that enforces the policy.
        node = client.node if direction == flow_pb2.EGRESS else server.node
        client_port = self.rng.randint(32768, 60999)  # Linux's ephemeral port range
        self._flow(t_request, node, direction, transport, client, client_port, server, port, request,
                   request_summary)
        self._flow(t_response, node, direction, transport, server, port, client, client_port, response,
                   response_summary)

    def _flow(self, t: int, node: str, direction: int, transport: str, src: _Peer, src_port: int, dst: _Peer,
              dst_port: int, l7: flow_pb2.Layer7, summary: str) -> None:
        ts = Timestamp()
        ts.FromNanoseconds(t)
        ports = getattr(flow_pb2, transport)(source_port=src_port, destination_port=dst_port)
        l4 = flow_pb2.Layer4(**{transport: ports})
        is_reply = l7.type == flow_pb2.RESPONSE
        flow = flow_pb2.Flow(
            time=ts, uuid=self._uuid4(), verdict=flow_pb2.FORWARDED,
            IP=flow_pb2.IP(source=src.ip, destination=dst.ip, ipVersion=flow_pb2.IPv4), l4=l4,
            source=src.endpoint(node), destination=dst.endpoint(node), Type=flow_pb2.L7, node_name=node, l7=l7,
            reply=is_reply, event_type=flow_pb2.CiliumEventType(type=L7_EVENT_TYPE), traffic_direction=direction,
            is_reply=BoolValue(value=is_reply), Summary=summary)
        self.flows.append(observer_pb2.GetFlowsResponse(flow=flow, node_name=node, time=ts))
