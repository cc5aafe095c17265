"""Benchmark traffic: the L7 flows of a mid-sized cluster, seeded, as Hubble sends them.

`flowlog demo`'s scene (ingest/demo/traffic.py) has seven pods and a handful of URLs:
stored, it would compress far better than a real node's flows. This cluster has 4 nodes,
9 namespaces, 30 workloads, 63 pods and their Services, 6 external APIs, and the traffic a
shop-like application makes:

- users come in through ingress-nginx to the frontend, which fans out to catalog,
  currency, recommendation, ads, cart, search; checkouts go on to payment (gRPC over
  HTTP/2, then api.stripe.com), shipping, email (api.sendgrid.com), orders and inventory;
- every pod is scraped by Prometheus every 30 s; pods with an ingress L7 policy get
  kubelet probes; background jobs call S3, Slack and an OAuth provider;
- a share of calls first resolves the name, the way a pod's resolver does: Kubernetes'
  ndots:5 search path (NXDOMAIN for each wrong suffix), A and AAAA in parallel (AAAA
  empty on this IPv4 cluster), CNAME chains and falling TTLs for external names.

Every flow carries what Hubble gives a Cilium >= 1.15 L7 flow: uuid, time, verdict, IP,
L4 ports, both endpoints (ID on the observing node only, identity, namespace, labels,
pod name, workloads, cluster name), services, names of external peers, node, l7
record, reply flags, event type, direction and Summary. Request ids, trace ids, ports,
SKUs, user ids, query strings, latencies (log-normal per route, with a slow tail), status
codes and DNS answers vary per flow, so compression is not flattered.

All randomness comes from one random.Random(seed): the same seed gives the same flows.
It only builds messages; bench/run.py writes them out.
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import BoolValue

from ingest.api import L7_EVENT_TYPE
from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2

S = 1_000_000_000
MS = 1_000_000
# 2025-03-04T09:00:00Z: a weekday morning.
START_NS = 1_741_078_800 * S
NO_RECORDS_TTL = 2**32 - 1  # what Cilium's DNS proxy reports for an answer without records
SAFE = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' pod-name suffix alphabet
NODES = ("ip-10-0-1-23.eu-west-1.compute.internal", "ip-10-0-2-147.eu-west-1.compute.internal",
         "ip-10-0-3-88.eu-west-1.compute.internal", "ip-10-0-1-201.eu-west-1.compute.internal")
# Slowest possible call tree, so flows can be released in time order as we go.
MAX_TREE_NS = 15 * S


@dataclass(frozen=True)
class Peer:
    ip: str
    identity: int
    labels: tuple[str, ...]
    namespace: str = ""
    pod: str = ""
    node: str = ""  # "" outside the cluster
    endpoint_id: int = 0
    workload: str = ""
    kind: str = ""
    names: tuple[str, ...] = ()  # DNS names Cilium knows for an external peer

    def endpoint(self, observed_on: str) -> flow_pb2.Endpoint:
        endpoint = flow_pb2.Endpoint(ID=self.endpoint_id if self.node == observed_on else 0,
                                     identity=self.identity, namespace=self.namespace, labels=self.labels,
                                     pod_name=self.pod)
        if self.workload:
            endpoint.cluster_name = "default"
            endpoint.workloads.add(name=self.workload, kind=self.kind)
        return endpoint


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {placeholders}
    median_ms: float
    weight: float = 1.0
    query: str = ""
    errors: tuple[tuple[int, float], ...] = ((500, 0.003), (503, 0.002))
    ok: int = 200


@dataclass
class Service:
    name: str
    namespace: str
    port: int
    pods: list[Peer]
    routes: tuple[Route, ...]
    protocol: str = "HTTP/1.1"
    ingress_policy: bool = False  # the server's proxy sees its traffic at ingress
    cluster_ip: str = ""
    metrics_port: int = 9090

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class External:
    name: str
    ips: tuple[str, ...]
    cnames: tuple[str, ...]
    routes: tuple[Route, ...]
    peer: Peer = field(compare=False, default=None)


def R(method, path, median_ms, weight=1.0, query="", errors=None, ok=200) -> Route:
    return Route(method, path, median_ms, weight, query, errors if errors is not None else ((500, 0.003), (503, 0.002)),
                 ok)


# (namespace, workload, kind, replicas, port, protocol, ingress L7 policy, routes)
WORKLOADS = (
    ("ingress-nginx", "ingress-nginx-controller", "Deployment", 2, 80, "HTTP/1.1", False, ()),
    ("shop", "frontend", "Deployment", 4, 8080, "HTTP/1.1", True, (
        R("GET", "/", 35, 5), R("GET", "/product/{sku}", 45, 8), R("GET", "/cart", 30, 3),
        R("POST", "/cart", 40, 2, ok=302), R("POST", "/cart/checkout", 220, 0.6, ok=302),
        R("GET", "/static/{asset}", 2, 6), R("GET", "/search", 80, 2, query="q={term}&page={page}"),
        R("POST", "/login", 120, 0.5, errors=((401, 0.08), (500, 0.002))), R("GET", "/_healthz", 1, 0.3))),
    ("shop", "catalog", "Deployment", 3, 3550, "HTTP/1.1", True, (
        R("GET", "/api/v1/products", 18, 4, query="page={page}&limit={limit}&category={category}"),
        R("GET", "/api/v1/products/{sku}", 9, 8, errors=((404, 0.02), (500, 0.002))),
        R("GET", "/api/v1/categories", 5, 1))),
    ("shop", "cart", "Deployment", 3, 7070, "HTTP/1.1", True, (
        R("GET", "/api/cart/{user}", 6, 4), R("POST", "/api/cart/{user}/items", 11, 2, ok=201),
        R("DELETE", "/api/cart/{user}/items/{sku}", 9, 0.5, ok=204))),
    ("shop", "checkout", "Deployment", 2, 5050, "HTTP/1.1", True, (
        R("POST", "/api/v1/orders", 160, 1, ok=201, errors=((409, 0.01), (500, 0.01), (503, 0.005))),
        R("GET", "/api/v1/orders/{order}", 12, 1))),
    ("shop", "payment", "Deployment", 2, 50051, "HTTP/2", True, (
        R("POST", "/hipstershop.PaymentService/Charge", 90, 1, errors=((503, 0.004),)),)),
    ("shop", "shipping", "Deployment", 2, 50051, "HTTP/2", False, (
        R("POST", "/hipstershop.ShippingService/GetQuote", 7, 2),
        R("POST", "/hipstershop.ShippingService/ShipOrder", 25, 1))),
    ("shop", "email", "Deployment", 1, 8080, "HTTP/1.1", False, (R("POST", "/api/v1/send", 40, 1, ok=202),)),
    ("shop", "currency", "Deployment", 2, 7000, "HTTP/1.1", True, (
        R("GET", "/convert", 3, 6, query="from={cur}&to={cur}&amount={amount}"), R("GET", "/currencies", 2, 1))),
    ("shop", "recommendation", "Deployment", 2, 8080, "HTTP/1.1", False, (
        R("GET", "/api/recommendations", 28, 1, query="user={user}&sku={sku}&n=5"),)),
    ("shop", "ads", "Deployment", 2, 9555, "HTTP/1.1", False, (
        R("GET", "/api/ads", 8, 1, query="context={category}"),)),
    ("shop", "reviews", "Deployment", 2, 8080, "HTTP/1.1", False, (
        R("GET", "/api/v2/reviews/{sku}", 14, 3, query="sort=recent&page={page}"),
        R("POST", "/api/v2/reviews/{sku}", 30, 0.1, ok=201))),
    ("search", "search-api", "Deployment", 3, 8080, "HTTP/1.1", True, (
        R("GET", "/v1/search", 45, 1, query="q={term}&page={page}&size=24"),)),
    ("search", "opensearch", "StatefulSet", 3, 9200, "HTTP/1.1", False, (
        R("POST", "/products/_search", 30, 3), R("GET", "/_cluster/health", 3, 0.2))),
    ("accounts", "identity", "Deployment", 3, 8080, "HTTP/1.1", True, (
        R("POST", "/oauth/token", 60, 1, errors=((401, 0.05), (500, 0.002))), R("GET", "/userinfo", 8, 3))),
    ("accounts", "session", "Deployment", 2, 8080, "HTTP/1.1", False, (
        R("GET", "/sessions/{session}", 2, 5, errors=((404, 0.03),)), R("PUT", "/sessions/{session}", 3, 1, ok=204))),
    ("accounts", "profile", "Deployment", 2, 8080, "HTTP/1.1", False, (R("GET", "/api/profiles/{user}", 7, 1),)),
    ("accounts", "notifications", "Deployment", 2, 8080, "HTTP/1.1", False, (R("POST", "/api/notify", 15, 1, ok=202),)),
    ("orders", "orders-api", "Deployment", 3, 8080, "HTTP/1.1", True, (
        R("POST", "/v1/orders", 35, 1, ok=201), R("GET", "/v1/orders/{order}", 6, 2),
        R("GET", "/v1/customers/{user}/orders", 22, 1, query="limit=20"))),
    ("orders", "inventory", "Deployment", 2, 8080, "HTTP/1.1", False, (
        R("POST", "/v1/reservations", 12, 1, ok=201, errors=((409, 0.03), (500, 0.002))),
        R("GET", "/v1/stock/{sku}", 4, 3))),
    ("orders", "pricing", "Deployment", 2, 8080, "HTTP/1.1", False, (
        R("GET", "/v1/prices/{sku}", 3, 1, query="currency={cur}"),)),
    ("orders", "reports", "CronJob", 1, 8080, "HTTP/1.1", False, ()),
    ("monitoring", "prometheus-k8s", "StatefulSet", 2, 9090, "HTTP/1.1", False, (
        R("GET", "/api/v1/query", 25, 1, query="query={promql}"),)),
    ("monitoring", "grafana", "Deployment", 1, 3000, "HTTP/1.1", False, (R("GET", "/api/health", 2, 1),)),
    ("monitoring", "alertmanager-main", "StatefulSet", 2, 9093, "HTTP/1.1", False, (
        R("POST", "/api/v2/alerts", 4, 1),)),
    ("kube-system", "coredns", "Deployment", 2, 53, "DNS", False, ()),
    ("kube-system", "metrics-server", "Deployment", 1, 10250, "HTTP/1.1", False, ()),
    ("cert-manager", "cert-manager", "Deployment", 1, 9402, "HTTP/1.1", False, ()),
    ("batch", "image-resizer", "Deployment", 3, 8080, "HTTP/1.1", False, (R("POST", "/resize", 140, 1, ok=201),)),
    ("batch", "feed-exporter", "CronJob", 1, 8080, "HTTP/1.1", False, ()),
)

EXTERNALS = (
    External("api.stripe.com", ("54.187.174.169", "54.187.205.235", "54.187.216.72"), (),
             (R("POST", "/v1/payment_intents", 310, 1, errors=((402, 0.02), (429, 0.003), (500, 0.001)), ok=200),)),
    External("api.sendgrid.com", ("167.89.118.52", "167.89.118.35"), ("sendgrid.net.",),
             (R("POST", "/v3/mail/send", 180, 1, ok=202, errors=((429, 0.01),)),)),
    External("hooks.slack.com", ("34.226.36.52", "3.94.213.230", "52.4.215.222"), ("hooks-slack-com.slack-edge.com.",),
             (R("POST", "/services/{slack}", 220, 1),)),
    External("s3.eu-west-1.amazonaws.com", ("52.218.62.130", "52.92.17.202", "3.5.72.109"),
             ("s3-r-w.eu-west-1.amazonaws.com.",),
             (R("PUT", "/exports-bucket/{export}", 95, 1), R("GET", "/assets-bucket/{asset}", 40, 3))),
    External("oauth2.googleapis.com", ("142.250.179.202",), (), (R("POST", "/token", 80, 1),)),
    External("o450123.ingest.sentry.io", ("34.120.195.249",), (), (R("POST", "/api/5512345/envelope/", 60, 1),)),
)

# Who calls which external API, and how.
EXTERNAL_CALLERS = {"payment": "api.stripe.com", "email": "api.sendgrid.com", "notifications": "hooks.slack.com",
                    "reports": "s3.eu-west-1.amazonaws.com", "feed-exporter": "s3.eu-west-1.amazonaws.com",
                    "image-resizer": "s3.eu-west-1.amazonaws.com", "identity": "oauth2.googleapis.com",
                    "frontend": "o450123.ingest.sentry.io"}
USER_AGENTS = {"ingress-nginx-controller": None, "prometheus-k8s": "Prometheus/2.54.1",
               "frontend": "axios/1.7.7", "checkout": "Go-http-client/1.1", "payment": "grpc-go/1.66.2",
               "search-api": "opensearch-java/2.10.1", "recommendation": "python-requests/2.32.3",
               "reports": "aws-sdk-go-v2/1.30.4", "feed-exporter": "aws-sdk-go-v2/1.30.4",
               "image-resizer": "aws-sdk-go-v2/1.30.4", "notifications": "Java-http-client/21.0.4",
               "email": "sendgrid/6.11.0;python", "grafana": "Grafana/11.2.0", "identity": "Go-http-client/2.0"}
_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6"
BROWSERS = (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/128.0.0.0 Safari/537.36",
            f"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6_1) {_SAFARI} Safari/605.1.15",
            f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) {_SAFARI} Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
            f"Mozilla/5.0 (Linux; Android 14; Pixel 8) {_WEBKIT} Chrome/128.0.0.0 Mobile Safari/537.36")
TERMS = ("shoes", "red dress", "usb-c cable", "coffee grinder", "running socks", "headphones", "lamp", "backpack",
         "yoga mat", "sunglasses", "water bottle", "keyboard", "desk", "notebook", "tent", "jacket", "mug", "watch")
CATEGORIES = ("home", "kitchen", "clothing", "accessories", "footwear", "electronics", "outdoor", "sports", "books")
CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF", "SEK", "PLN", "CAD")
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMQL = ("sum(rate(http_requests_total[5m]))", "up", "histogram_quantile(0.99,sum(rate(le[5m]))by(le))",
          "node_load1", "sum by(pod)(container_memory_working_set_bytes)")


def _latency(rng: random.Random, median_ms: float, sigma: float = 0.55) -> int:
    latency = rng.lognormvariate(math.log(median_ms * MS), sigma)
    if rng.random() < 0.01:  # the slow tail: GC pauses, cold caches, retries
        latency *= rng.uniform(5, 30)
    return int(min(latency, 8 * S))


class Cluster:
    """The pods, Services and external APIs, built once from the seed."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.services: dict[str, Service] = {}
        self.all_pods: list[Peer] = []
        self.skus = ["".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=10)) for _ in range(3000)]
        self.assets = [f"{name}.{rng.getrandbits(32):08x}.{ext}" for name, ext in
                       [("main", "js"), ("vendor", "js"), ("app", "css"), ("runtime", "js"), ("logo", "svg"),
                        ("hero", "webp"), ("fonts/inter", "woff2"), ("chunk-cart", "js"), ("chunk-product", "js")]]
        self.assets += [f"img/products/{sku.lower()}-{size}.jpg" for sku in self.skus[:400] for size in (320, 640)]
        identities = rng.sample(range(1000, 65536), len(WORKLOADS))
        pod_hosts = {node: iter(rng.sample(range(2, 250), 200)) for node in NODES}
        placement = iter(rng.sample(NODES * 30, len(NODES) * 30))  # spread like the scheduler does
        service_ips = iter(rng.sample(range(1, 65000), len(WORKLOADS)))
        for (namespace, name, kind, replicas, port, protocol, ingress, routes), identity in zip(WORKLOADS, identities):
            app_key = "k8s:k8s-app" if namespace == "kube-system" else "k8s:app.kubernetes.io/name"
            labels = [
                f"{app_key}={name}",
                f"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={namespace}",
                "k8s:io.cilium.k8s.policy.cluster=default",
                f"k8s:io.cilium.k8s.policy.serviceaccount={name}",
                f"k8s:io.kubernetes.pod.namespace={namespace}",
            ]
            if namespace != "kube-system":
                version = f"v{rng.randint(1, 4)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
                labels += [f"k8s:app.kubernetes.io/part-of={namespace}", f"k8s:app.kubernetes.io/version={version}"]
            if namespace in ("shop", "orders", "accounts"):
                team = rng.choice(["core", "payments", "platform", "growth"])
                labels.append(f"k8s:io.cilium.k8s.namespace.labels.team={team}")
            labels.sort()  # Hubble sorts them
            rs_hash = "".join(rng.choices(SAFE, k=rng.choice([9, 10])))
            pods = []
            for index in range(replicas):
                node = next(placement)
                if kind == "StatefulSet":
                    pod = f"{name}-{index}"
                elif kind == "CronJob":
                    pod = f"{name}-{rng.randint(28_900_000, 28_999_999)}-{''.join(rng.choices(SAFE, k=5))}"
                else:
                    pod = f"{name}-{rs_hash}-{''.join(rng.choices(SAFE, k=5))}"
                ip = f"10.0.{NODES.index(node) * 64 + 1 + index % 60}.{next(pod_hosts[node])}"
                workload_kind = "Job" if kind == "CronJob" else kind
                workload = f"{name}-{pod.split('-')[-2]}" if kind == "CronJob" else name
                pods.append(Peer(ip, identity, tuple(labels), namespace, pod, node, rng.randint(1, 4095), workload,
                                 workload_kind))
            ip = next(service_ips)
            self.services[name] = Service(name, namespace, port, pods, routes, protocol, ingress,
                                          f"10.96.{ip // 256}.{ip % 256}", rng.choice([9090, 8080, 9100, port]))
            self.all_pods += pods
        self.externals = {}
        for ext in EXTERNALS:
            peer = Peer(ext.ips[0], 2, ("reserved:world",), names=(ext.name,))
            self.externals[ext.name] = External(ext.name, ext.ips, ext.cnames, ext.routes, peer)
        self.host = Peer("10.0.0.1", 1, ("reserved:host",))  # the kubelet's probes
        self.coredns = self.services["coredns"]


@dataclass
class Counts:
    http: int = 0
    dns: int = 0
    calls: int = 0
    lookups: int = 0


class Traffic:
    """Yields GetFlowsResponse messages in time order, as many as asked for."""

    def __init__(self, seed: int = 1, flows_per_second: float = 2500.0, start_ns: int = START_NS):
        self.rng = random.Random(seed)
        self.cluster = Cluster(self.rng)
        self.start_ns = start_ns
        # A user request makes about 25 flows, HTTP and DNS, on average (scrapes, probes and jobs add ~2%).
        self.user_rate = flows_per_second / 24.8
        self.counts = Counts()
        self._pending: list[tuple[int, int, bytes]] = []
        self._seq = 0
        self._released_ns = 0
        # Flows of a call tree slower than MAX_TREE_NS come out after newer ones; counted, not expected.
        self.out_of_order = 0

    def serialized(self, count: int):
        """The first `count` flows, in time order, as serialized GetFlowsResponse messages."""
        rng = self.rng
        c = self.cluster
        periodic = []  # (next time, kind, target): scrapes and probes, each on its own phase
        for pod in c.all_pods:
            periodic.append((self.start_ns + rng.randrange(30 * S), "scrape", pod))
        for service in c.services.values():
            if service.ingress_policy:
                for pod in service.pods:
                    periodic.append((self.start_ns + rng.randrange(10 * S), "probe", (service, pod)))
        for name, target in EXTERNAL_CALLERS.items():
            if not c.services[name].routes:  # jobs with only outbound calls
                periodic.append((self.start_ns + rng.randrange(5 * S), "job", name))
        periodic = [(when, i, kind, target) for i, (when, kind, target) in enumerate(periodic)]
        heapq.heapify(periodic)
        t = self.start_ns
        emitted = 0
        while emitted < count:
            t += int(rng.expovariate(self.user_rate) * S)
            while periodic and periodic[0][0] <= t:
                when, i, kind, target = heapq.heappop(periodic)
                if kind == "scrape":
                    self._scrape(target, when)
                    heapq.heappush(periodic, (when + 30 * S + rng.randrange(-MS, MS), i, kind, target))
                elif kind == "probe":
                    self._probe(*target, when)
                    heapq.heappush(periodic, (when + 10 * S, i, kind, target))
                else:
                    self._job(target, when)
                    heapq.heappush(periodic, (when + rng.randrange(2 * S, 20 * S), i, kind, target))
            self._user_request(t)
            while self._pending and self._pending[0][0] < t - MAX_TREE_NS and emitted < count:
                self._released_ns, _, message = heapq.heappop(self._pending)
                yield message
                emitted += 1
        # (the loop ends once enough flows older than any call still in flight came out)

    # --- scenes ---

    def _user_request(self, t: int) -> None:
        rng, c = self.rng, self.cluster
        ingress = rng.choice(c.services["ingress-nginx-controller"].pods)
        frontend = c.services["frontend"]
        route = _pick(rng, frontend.routes)
        browser = rng.choice(BROWSERS)
        forwarded = f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        user = rng.randint(1, 60_000)

        def children(server_pod: Peer, t0: int) -> int:
            calls = []
            path = route.path
            if path == "/":
                calls = [("catalog", 0), ("currency", 0), ("recommendation", 0), ("ads", 0)]
            elif path.startswith("/product"):
                calls = [("catalog", 1), ("currency", 0), ("recommendation", 0), ("reviews", 0), ("ads", 0),
                         ("pricing", 0)]
            elif path == "/cart" and route.method == "GET":
                calls = [("cart", 0), ("currency", 0), ("shipping", 0)]
            elif path == "/cart":
                calls = [("cart", 1)]
            elif path == "/cart/checkout":
                calls = [("checkout", 0)]
            elif path == "/search":
                calls = [("search-api", 0), ("currency", 0)]
            elif path == "/login":
                calls = [("identity", 0), ("session", 1)]
            if path not in ("/_healthz",) and path != "/login" and rng.random() < 0.7:
                calls.insert(0, ("session", 0))
            end = t0
            for name, route_index in calls:
                start = t0 + rng.randrange(50_000, 2 * MS)
                end = max(end, self._call(server_pod, c.services[name], start, user=user,
                                          route=c.services[name].routes[route_index]))
            if rng.random() < 0.002:
                end = max(end, self._external(server_pod, "o450123.ingest.sentry.io", t0 + MS))
            return end

        self._call(ingress, frontend, t, route=route, user=user, user_agent=browser, forwarded=forwarded,
                   children=children)

    def _scrape(self, pod: Peer, t: int) -> None:
        prom = self.rng.choice(self.cluster.services["prometheus-k8s"].pods)
        service = self.cluster.services.get(pod.workload)  # a CronJob's pod has none
        port = service.metrics_port if service else 9090
        route = R("GET", "/metrics", 4, errors=())
        self._http(prom, pod, port, t, route, f"http://{pod.ip}:{port}/metrics", "HTTP/1.1", False,
                   _latency(self.rng, 4 if port != 9100 else 12), 200,
                   [("Accept", PROMETHEUS_ACCEPT), ("Accept-Encoding", "gzip"),
                    ("User-Agent", "Prometheus/2.54.1"), ("X-Prometheus-Scrape-Timeout-Seconds", "10")])

    def _probe(self, service: Service, pod: Peer, t: int) -> None:
        path = self.rng.choice(["/healthz", "/readyz"])
        route = R("GET", path, 1, errors=((503, 0.001),))
        self._http(self.cluster.host, pod, service.port, t, route, f"http://{pod.ip}:{service.port}{path}",
                   "HTTP/1.1", True, _latency(self.rng, 0.8), _status(self.rng, route),
                   [("Accept", "*/*"), ("Connection", "close"), ("User-Agent", "kube-probe/1.30")])

    def _job(self, name: str, t: int) -> None:
        pod = self.rng.choice(self.cluster.services[name].pods)
        self._external(pod, EXTERNAL_CALLERS[name], t)
        if name == "reports":
            self._call(pod, self.cluster.services["orders-api"], t + 5 * MS,
                       route=self.cluster.services["orders-api"].routes[2])

    # --- calls ---

    def _call(self, client: Peer, service: Service, t: int, route: Route | None = None, user: int = 0,
              user_agent: str | None = None, forwarded: str = "", children=None) -> int:
        """One HTTP call to a Service (maybe preceded by a DNS lookup); returns when the response arrived."""
        rng, c = self.rng, self.cluster
        self.counts.calls += 1
        short = client.namespace == service.namespace and rng.random() < 0.7
        if client.workload and rng.random() < 0.2:
            t = self._lookup(client, t, service.name if short else f"{service.name}.{service.namespace}")
        route = route or _pick(rng, service.routes)
        server_pod = rng.choice(service.pods)
        host = f"{service.name}:{service.port}" if short else f"{service.fqdn}:{service.port}"
        path = self._fill(route.path, user)
        url = f"http://{host}{path}"
        if route.query:
            url += "?" + self._fill(route.query, user)
        headers = [("X-Request-Id", self._uuid())]
        if service.protocol == "HTTP/2":
            headers += [("Content-Type", "application/grpc"), ("Te", "trailers"),
                        ("User-Agent", USER_AGENTS.get(client.workload) or "grpc-go/1.66.2")]
            url = f"http://{service.fqdn}:{service.port}{route.path}"
        else:
            headers.append(("Accept", "application/json" if client.workload != "ingress-nginx-controller" else
                            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"))
            headers.append(("User-Agent", user_agent or USER_AGENTS.get(client.workload) or "Go-http-client/1.1"))
        if rng.random() < 0.75:
            headers.append(("Traceparent", f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"))
        if forwarded:
            headers += [("X-Forwarded-For", forwarded), ("X-Forwarded-Proto", "https"),
                        ("X-Real-Ip", forwarded), ("Cookie", f"session={rng.getrandbits(128):032x}")]
        elif service.namespace in ("accounts", "orders") and rng.random() < 0.8:
            headers.append(("Authorization", f"Bearer eyJhbGciOiJSUzI1NiJ9.{rng.getrandbits(256):064x}"))
        if route.method in ("POST", "PUT"):
            headers.append(("Content-Length", str(rng.randint(40, 4000))))
        own = _latency(rng, route.median_ms)
        ingress = service.ingress_policy
        if route.method == "DELETE" and rng.random() < 0.01:  # an L7 policy denies it
            self._http(client, server_pod, service.port, t, route, url, service.protocol, ingress, 0, 403, headers,
                       denied=True)
            return t
        end = t + own
        if children is not None:
            end = max(end, children(server_pod, t + MS // 2) + own // 4)
        elif service.name == "checkout":
            end = max(end, self._checkout(server_pod, t, user))
        elif service.name in EXTERNAL_CALLERS and rng.random() < 0.5:
            end = max(end, self._external(server_pod, EXTERNAL_CALLERS[service.name], t + MS))
        elif service.name == "search-api":
            end = max(end, self._call(server_pod, c.services["opensearch"], t + MS, user=user,
                                      route=c.services["opensearch"].routes[0]))
        self._http(client, server_pod, service.port, t, route, url, service.protocol, ingress, end - t,
                   _status(rng, route), headers)
        return end

    def _checkout(self, pod: Peer, t: int, user: int) -> int:
        c = self.cluster
        end = t
        for name, index in (("cart", 0), ("currency", 0), ("shipping", 0), ("payment", 0), ("orders-api", 0),
                            ("inventory", 0), ("shipping", 1), ("email", 0), ("cart", 2)):
            end = self._call(pod, c.services[name], end + self.rng.randrange(100_000, MS), user=user,
                             route=c.services[name].routes[index])
        return end

    def _external(self, client: Peer, name: str, t: int) -> int:
        rng = self.rng
        ext = self.cluster.externals[name]
        if rng.random() < 0.5:
            t = self._lookup(client, t, name)
        route = _pick(rng, ext.routes)
        url = f"https://{name}{self._fill(route.path, 0)}"
        peer = Peer(rng.choice(ext.ips), 2, ("reserved:world",), names=(name,))
        headers = [("Accept", "application/json"), ("Authorization", f"Bearer sk_live_{rng.getrandbits(160):040x}"),
                   ("User-Agent", USER_AGENTS.get(client.workload) or "Go-http-client/1.1"),
                   ("X-Request-Id", self._uuid())]
        latency = _latency(rng, route.median_ms)
        # TLS origination by the proxy: the L7 policy sees the request before it is encrypted.
        self._http(client, peer, 443, t, route, url, "HTTP/1.1", False, latency, _status(rng, route), headers)
        return t + latency

    def _lookup(self, client: Peer, t: int, name: str) -> int:
        """Resolve name as a pod's resolver does (ndots:5, A and AAAA); returns when it is known."""
        self.counts.lookups += 1
        rng = self.rng
        search = [f"{client.namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local",
                  "eu-west-1.compute.internal"]
        candidates = [f"{name}.{domain}." for domain in search] if name.count(".") < 5 else []
        for query in [*candidates, f"{name}."]:
            answer = self._answer(query)
            ends = [self._dns(client, t + rng.randrange(20_000), query, qtype, answer) for qtype in ("A", "AAAA")]
            t = max(ends) + rng.randrange(20_000, 300_000)
            if answer is not None:
                return t
        return t

    def _answer(self, query: str):
        """(ips, cnames, ttl) for an existing name, None for NXDOMAIN."""
        c = self.cluster
        for service in c.services.values():
            if query == service.fqdn + ".":
                return [service.cluster_ip], [], 30
        for ext in c.externals.values():
            if query == ext.name + ".":
                ips = list(ext.ips)
                self.rng.shuffle(ips)
                return ips, list(ext.cnames), self.rng.randint(5, 300)
        return None

    def _dns(self, client: Peer, t: int, query: str, qtype: str, answer) -> int:
        rng = self.rng
        server = rng.choice(self.cluster.coredns.pods)
        if answer is None:
            ips, cnames, ttl, rcode = [], [], NO_RECORDS_TTL, 3
        elif qtype == "AAAA":
            ips, cnames, ttl, rcode = [], answer[1], NO_RECORDS_TTL if not answer[1] else answer[2], 0
        else:
            ips, cnames, ttl, rcode = answer[0], answer[1], answer[2], 0
        rrtypes = (["CNAME"] * len(cnames)) + ([qtype] * len(ips))
        request = flow_pb2.DNS(query=query, observation_source="proxy", qtypes=[qtype])
        response = flow_pb2.DNS(query=query, ips=ips, ttl=ttl if (ips or cnames) else NO_RECORDS_TTL,
                                cnames=cnames, observation_source="proxy", rcode=rcode, qtypes=[qtype],
                                rrtypes=rrtypes)
        if ips:
            summary = f'DNS Answer "{",".join(ips)}" TTL: {ttl} (Proxy {query} {qtype})'
        elif rcode == 3:
            summary = f"DNS Answer RCode: Non-Existent Domain TTL: {NO_RECORDS_TTL} (Proxy {query} {qtype})"
        else:
            summary = f"DNS Answer  TTL: {NO_RECORDS_TTL} (Proxy {query} {qtype})"
        latency = _latency(rng, 0.7 if query.endswith("cluster.local.") or rcode == 3 else 4, 0.7)
        client_port = rng.randint(32768, 60999)
        self.counts.dns += 2
        self._exchange(t, t + latency, client, client_port, server, 53, "UDP", flow_pb2.EGRESS,
                       flow_pb2.Layer7(type=flow_pb2.REQUEST, dns=request), f"DNS Query {query} {qtype}",
                       flow_pb2.Layer7(type=flow_pb2.RESPONSE, dns=response), summary)
        return t + latency

    def _http(self, client: Peer, server: Peer, port: int, t: int, route: Route, url: str, protocol: str,
              ingress: bool, latency_ns: int, code: int, headers: list[tuple[str, str]], denied: bool = False) -> None:
        rng = self.rng
        pairs = sorted(headers)  # Hubble sorts them by key
        http_headers = [flow_pb2.HTTPHeader(key=k, value=v) for k, v in pairs]
        request = flow_pb2.HTTP(method=route.method, url=url, protocol=protocol, headers=http_headers)
        response = flow_pb2.HTTP(code=code, method=route.method, url=url, protocol=protocol, headers=http_headers)
        direction = flow_pb2.INGRESS if ingress else flow_pb2.EGRESS
        self.counts.http += 2
        self._exchange(t, t + max(latency_ns, 30_000), client, rng.randint(32768, 60999), server, port, "TCP",
                       direction, flow_pb2.Layer7(type=flow_pb2.REQUEST, http=request),
                       f"{protocol} {route.method} {url}",
                       flow_pb2.Layer7(type=flow_pb2.RESPONSE, latency_ns=latency_ns, http=response),
                       f"{protocol} {code} {latency_ns // MS}ms ({route.method} {url})", denied)

    def _exchange(self, t_request: int, t_response: int, client: Peer, client_port: int, server: Peer, port: int,
                  transport: str, direction: int, request: flow_pb2.Layer7, request_summary: str,
                  response: flow_pb2.Layer7, response_summary: str, denied: bool = False) -> None:
        # The proxy that sees the exchange runs on the node of the side whose policy applies.
        node = client.node if direction == flow_pb2.EGRESS else server.node
        self._flow(t_request, node, direction, transport, client, client_port, server, port, request,
                   request_summary, flow_pb2.DROPPED if denied else flow_pb2.FORWARDED)
        self._flow(t_response, node, direction, transport, server, port, client, client_port, response,
                   response_summary, flow_pb2.FORWARDED)

    def _flow(self, t: int, node: str, direction: int, transport: str, src: Peer, src_port: int, dst: Peer,
              dst_port: int, l7: flow_pb2.Layer7, summary: str, verdict: int) -> None:
        ts = Timestamp(seconds=t // S, nanos=t % S)
        ports = getattr(flow_pb2, transport)(source_port=src_port, destination_port=dst_port)
        is_reply = l7.type == flow_pb2.RESPONSE
        flow = flow_pb2.Flow(
            time=ts, uuid=self._uuid(), verdict=verdict,
            IP=flow_pb2.IP(source=src.ip, destination=dst.ip, ipVersion=flow_pb2.IPv4),
            l4=flow_pb2.Layer4(**{transport: ports}), source=src.endpoint(node), destination=dst.endpoint(node),
            source_names=src.names, destination_names=dst.names, Type=flow_pb2.L7, node_name=node, l7=l7,
            reply=is_reply, event_type=flow_pb2.CiliumEventType(type=L7_EVENT_TYPE), traffic_direction=direction,
            is_reply=BoolValue(value=is_reply), Summary=summary)
        self._seq += 1
        if t < self._released_ns:
            self.out_of_order += 1
        # Kept serialized until their turn: a message object costs ten times its bytes.
        response = observer_pb2.GetFlowsResponse(flow=flow, node_name=node, time=ts)
        heapq.heappush(self._pending, (t, self._seq, response.SerializeToString()))

    # --- values ---

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _fill(self, template: str, user: int) -> str:
        if "{" not in template:
            return template
        rng, c = self.rng, self.cluster
        values = {
            "sku": lambda: rng.choice(c.skus) if rng.random() < 0.5 else c.skus[min(int(rng.paretovariate(1.2)), 2999)],
            "asset": lambda: rng.choice(c.assets), "user": lambda: str(user or rng.randint(1, 60_000)),
            "order": lambda: str(rng.randint(4_100_000, 4_900_000)),
            "page": lambda: str(min(int(rng.paretovariate(1.5)), 40)),
            "limit": lambda: rng.choice(["12", "24", "48"]), "category": lambda: rng.choice(CATEGORIES),
            "cur": lambda: rng.choice(CURRENCIES), "amount": lambda: f"{rng.uniform(1, 900):.2f}",
            "term": lambda: rng.choice(TERMS).replace(" ", "+"), "session": lambda: f"{rng.getrandbits(96):024x}",
            "promql": lambda: rng.choice(PROMQL).replace(" ", ""),
            "export": lambda: f"feeds/{rng.getrandbits(40):010x}.csv.gz",
            "slack": lambda: f"T0{rng.getrandbits(30):08X}/B0{rng.getrandbits(30):08X}/{rng.getrandbits(96):024x}",
        }
        out = []
        rest = template
        while "{" in rest:
            before, _, tail = rest.partition("{")
            key, _, rest = tail.partition("}")
            out.append(before)
            out.append(values[key]())
        out.append(rest)
        return "".join(out)


def _pick(rng: random.Random, routes: tuple[Route, ...]) -> Route:
    return rng.choices(routes, weights=[r.weight for r in routes])[0]


def _status(rng: random.Random, route: Route) -> int:
    roll = rng.random()
    for code, probability in route.errors:
        if roll < probability:
            return code
        roll -= probability
    return route.ok
