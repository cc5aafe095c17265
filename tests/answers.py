"""What each query of the library must answer, computed straight from the fixture JSON.

Independent of ingest on purpose: these read the proto3 JSON by hand and implement, in
Python, the definition each `sql/queries/*.sql` header states. Times are compared as the
text ClickHouse prints for DateTime64(9): 'YYYY-MM-DD HH:MM:SS.nnnnnnnnn'.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from datetime import datetime, timezone
from urllib.parse import urlsplit

from .expected import rfc3339_ns

# The workloads of the pods in the fixtures, read off their names: a Deployment's pods are
# <workload>-<replicaset hash>-<id>, a DaemonSet's <workload>-<id>.
WORKLOADS = {
    "clickhouse-operator-59df4c7bcb-hbt6t": "clickhouse-operator",
    "jaeger-67f448c8f8-dmh9h": "jaeger",
    "kube-dns-b4f5c58c7-7qmtw": "kube-dns",
    "kube-dns-b4f5c58c7-vnx5s": "kube-dns",
    "node-local-dns-6jnx9": "node-local-dns",
    "node-local-dns-88zrp": "node-local-dns",
    "node-local-dns-cw6pv": "node-local-dns",
    "node-local-dns-r99x7": "node-local-dns",
    "productpage-v1-6b746f74dc-ffh56": "productpage-v1",
    "prometheus-6655946b9f-6xcpf": "prometheus",
    "ratings-v1-b6994bb9-4dt5c": "ratings-v1",
    "reviews-v1-545db77b95-6hbgc": "reviews-v1",
}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}
QUANTILES = (0.5, 0.95, 0.99)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def text_time(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + f".{fraction:09d}"


def l7_flows(lines: list[dict], kind: str) -> list[dict]:
    """The flows of the lines with an L7 `kind` ('http' or 'dns') record, in time order."""
    flows = [line["flow"] for line in lines if "flow" in line and kind in line["flow"].get("l7", {})]
    return sorted(flows, key=lambda f: rfc3339_ns(f["time"]))


def within(flows: list[dict], from_ns: int, until_ns: int) -> list[dict]:
    return [f for f in flows if from_ns <= rfc3339_ns(f["time"]) < until_ns]


def endpoint(flow: dict, side: str) -> dict:
    """side 'source' or 'destination' of a flow: namespace, pod, workload, ip, names."""
    raw = flow.get(side, {})
    pod = raw.get("pod_name", "")
    if not pod:
        assert not any(l.startswith(("k8s:app=", "k8s:k8s-app=", "k8s:app.kubernetes.io/name="))
                       for l in raw.get("labels", [])), raw  # the fixtures have no pod-less workloads
    workload = WORKLOADS[pod] if pod else ""
    # An endpoint with no workload is named by its reserved identities and IP: "world 203.0.113.10".
    reserved = ",".join(label.removeprefix("reserved:") for label in raw.get("labels", [])
                        if label.startswith("reserved:"))
    return {"namespace": raw.get("namespace", ""), "pod": pod, "workload": workload,
            "workload_name": workload or f"{reserved} {flow['IP'][side]}".lstrip(),
            "ip": flow["IP"][side], "names": flow.get(f"{side}_names", [])}


def is_response(flow: dict) -> bool:
    return flow["l7"]["type"] == "RESPONSE"


def client_server(flow: dict) -> tuple[dict, dict]:
    """On a response Hubble swaps the endpoints: the server is the source."""
    src, dst = endpoint(flow, "source"), endpoint(flow, "destination")
    return (dst, src) if is_response(flow) else (src, dst)


def pod_label(e: dict) -> str:
    return f"{e['namespace']}/{e['pod']}" if e["pod"] else e["workload_name"]


def workload_label(e: dict) -> str:
    return f"{e['namespace']}/{e['workload_name']}" if e["namespace"] else e["workload_name"]


def latency_ns(flow: dict) -> int:
    return int(flow["l7"].get("latency_ns", 0))


def status(flow: dict) -> int:
    return int(flow["l7"]["http"].get("code", 0))


def host(url: str) -> str:
    parts = urlsplit(url)
    name = parts.hostname or ""
    return f"{name}:{parts.port}" if parts.port else name


def exact_quantile(values: list[int], q: float) -> int:
    """The nearest rank, as ClickHouse's quantileExactWeighted with weights 1: the smallest value
    that at least q of the n values do not exceed, at 0-based rank ceil(q * n) - 1 (q * n in
    floating point, as ClickHouse computes it)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * q), 1) - 1]


def tdigest_band(values: list[int], q: float) -> tuple[float, float]:
    """Where a t-digest estimate of quantile q may fall, in ms.

    ClickHouse's t-digest (epsilon 0.01) lets a centroid hold at most 4 q (1 - q) 0.01 n <= 1% of
    the n values and interpolates between two neighbouring centroids, so the estimate lies
    between the order statistics 2% of n + 2 ranks either side of floor(q * n). Centroid means
    are Float32 (relative error 2^-24) and the query rounds to the microsecond.
    """
    ordered = sorted(values)
    n = len(ordered)
    rank = min(int(q * n), n - 1)
    slack = math.ceil(0.02 * n) + 2
    low, high = ordered[max(0, rank - slack)], ordered[min(n - 1, rank + slack)]
    return low / 1e6 * (1 - 2 ** -22) - 0.0005, high / 1e6 * (1 + 2 ** -22) + 0.0005


def route(flow: dict) -> str:
    """Method and path with each id segment (number, UUID, 8+ hex digits with a digit) as {id}."""
    http = flow["l7"]["http"]
    segments = urlsplit(http.get("url", "")).path.split("/")

    def is_id(s: str) -> bool:
        return (re.fullmatch(r"[0-9]+", s) is not None or _UUID.fullmatch(s) is not None
                or (re.fullmatch(r"[0-9a-fA-F]{8,}", s) is not None and re.search(r"[0-9]", s) is not None))

    return f"{http.get('method', '')} " + "/".join("{id}" if is_id(s) else s for s in segments)


def http_latency(flows: list[dict], by_route: bool = False) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for flow in flows:
        if is_response(flow):
            _, server = client_server(flow)
            groups[(server["namespace"], server["workload_name"], route(flow) if by_route else "")].append(flow)
    answer = []
    for (namespace, workload, path), members in groups.items():
        latencies = [latency_ns(f) for f in members]
        errors = sum(1 for f in members if status(f) >= 500)
        row = {"destination_namespace": namespace, "destination_workload": workload, "route": path,
               "requests": len(members), "errors": errors, "error_pct": round(100 * errors / len(members), 2),
               "latencies": latencies}
        for q, column in zip(QUANTILES, ("p50_ms", "p95_ms", "p99_ms")):
            row[column] = exact_quantile(latencies, q) / 1e6
        answer.append(row)
    return sorted(answer, key=lambda r: (-r["requests"], r["destination_namespace"], r["destination_workload"],
                                         r["route"]))


def http_slowest(flows: list[dict], limit: int) -> list[dict]:
    responses = sorted((f for f in flows if is_response(f)), key=lambda f: (-latency_ns(f), rfc3339_ns(f["time"])))
    answer = []
    for flow in responses[:limit]:
        client, server = client_server(flow)
        http = flow["l7"]["http"]
        answer.append({"time": text_time(rfc3339_ns(flow["time"])),
                       "source_namespace": client["namespace"], "source_workload": client["workload_name"],
                       "source_pod": client["pod"], "destination_namespace": server["namespace"],
                       "destination_workload": server["workload_name"], "destination_pod": server["pod"],
                       "method": http.get("method", ""), "url": http.get("url", ""), "status": status(flow),
                       "latency_ms": latency_ns(flow) / 1e6})
    return answer


def http_errors(flows: list[dict], step: int, min_status: int) -> list[dict]:
    counts: dict[tuple, int] = defaultdict(int)
    for flow in flows:
        if is_response(flow) and status(flow) >= min_status:
            client, server = client_server(flow)
            bucket = rfc3339_ns(flow["time"]) // 1_000_000_000 // step * step
            counts[(bucket, client["namespace"], client["workload_name"], server["namespace"],
                    server["workload_name"], status(flow))] += 1
    answer = [{"bucket": datetime.fromtimestamp(k[0], timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
               "source_namespace": k[1], "source_workload": k[2], "destination_namespace": k[3],
               "destination_workload": k[4], "status": k[5], "responses": n} for k, n in counts.items()]
    return sorted(answer, key=lambda r: (r["bucket"], -r["responses"], r["source_namespace"], r["source_workload"],
                                         r["destination_namespace"], r["destination_workload"], r["status"]))


def _dns(flow: dict) -> dict:
    return flow["l7"]["dns"]


def _rcode(flow: dict) -> str:
    return RCODES[int(_dns(flow).get("rcode", 0))]


def dns_answers(flows: list[dict], name: str) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for flow in flows:
        dns = _dns(flow)
        if is_response(flow) and dns.get("query") in (name, name + "."):
            key = (",".join(dns.get("qtypes", [])), _rcode(flow), tuple(sorted(dns.get("ips", []))),
                   tuple(dns.get("cnames", [])))
            groups[key].append(flow)
    answer = []
    for (qtypes, rcode, ips, cnames), members in groups.items():
        times = [rfc3339_ns(f["time"]) for f in members]
        ttls = [int(_dns(f).get("ttl", 0)) for f in members]
        answer.append({"query_types": qtypes, "rcode_name": rcode, "answers": list(ips), "cnames": list(cnames),
                       "ttl_min": min(ttls), "ttl_max": max(ttls), "responses": len(members),
                       "first_seen": text_time(min(times)), "last_seen": text_time(max(times)),
                       "asked_by": sorted({pod_label(endpoint(f, "destination")) for f in members})})
    return sorted(answer, key=lambda r: (r["first_seen"], r["query_types"], r["rcode_name"], r["answers"]))


def dns_reverse(flows: list[dict], ip: str) -> list[dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for flow in flows:
        if is_response(flow) and ip in _dns(flow).get("ips", []):
            groups[_dns(flow)["query"]].append(flow)
    answer = []
    for name, members in groups.items():
        times = [rfc3339_ns(f["time"]) for f in members]
        ttls = [int(_dns(f).get("ttl", 0)) for f in members]
        answer.append({"name": name, "first_seen": text_time(min(times)), "last_seen": text_time(max(times)),
                       "responses": len(members), "ttl_min": min(ttls), "ttl_max": max(ttls),
                       "asked_by": sorted({pod_label(endpoint(f, "destination")) for f in members})})
    return sorted(answer, key=lambda r: (r["first_seen"], r["name"]))


def dns_failures(flows: list[dict], rcode: str = "", limit: int = 100) -> list[dict]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for flow in flows:
        if is_response(flow) and int(_dns(flow).get("rcode", 0)) != 0 and rcode.upper() in ("", _rcode(flow)):
            asker = endpoint(flow, "destination")
            groups[(asker["namespace"], asker["workload_name"], _dns(flow)["query"], _rcode(flow))].append(
                rfc3339_ns(flow["time"]))
    answer = [{"source_namespace": k[0], "source_workload": k[1], "name": k[2], "rcode_name": k[3],
               "responses": len(times), "first_seen": text_time(min(times)), "last_seen": text_time(max(times))}
              for k, times in groups.items()]
    answer.sort(key=lambda r: (-r["responses"], r["source_namespace"], r["source_workload"], r["name"],
                               r["rcode_name"]))
    return answer[:limit]


def audit_talkers(http: list[dict], dns: list[dict], destination: str, dns_before: list[dict]) -> list[dict]:
    """http and dns: the flows in the range; dns_before: DNS flows from a day before it to its end."""
    wanted = destination
    resolved = {ip for f in dns_before if is_response(f) and _dns(f).get("query") in (wanted, wanted + ".")
                for ip in _dns(f).get("ips", [])}
    # An IP stands for the names it was given as an answer (a Service's ClusterIP for the Service).
    names_of_ip = {_dns(f)["query"].rstrip(".") for f in dns_before
                   if is_response(f) and wanted in _dns(f).get("ips", [])}
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for protocol, flows in (("http", http), ("dns", dns)):
        for flow in flows:
            client, server = client_server(flow)
            full_host = host(flow["l7"]["http"].get("url", "")) if protocol == "http" else ""
            bare_host = re.sub(r":[0-9]+$", "", full_host)
            matched = wanted != "" and (
                wanted in (server["workload"], f"{server['namespace']}/{server['workload']}", server["workload_name"],
                           server["pod"],
                           f"{server['namespace']}/{server['pod']}", server["ip"])
                or wanted in server["names"] or wanted.rstrip(".") in server["names"]
                or (full_host != "" and wanted in (full_host, bare_host))
                or (full_host != "" and (wanted.rstrip(".") + ".").startswith(f"{bare_host}.{server['namespace']}."))
                or server["ip"] in resolved
                or any(name in server["names"] for name in names_of_ip)
                or (full_host != "" and any(name == bare_host or (name + ".").startswith(
                    f"{bare_host}.{server['namespace']}.") for name in names_of_ip)))
            if matched:
                groups[(client["namespace"], client["workload_name"], protocol)].append((flow, client, server))
    answer = []
    for (namespace, workload, protocol), members in groups.items():
        times = [rfc3339_ns(f["time"]) for f, _, _ in members]
        answer.append({"source_namespace": namespace, "source_workload": workload, "protocol": protocol,
                       "requests": sum(1 for f, _, _ in members if not is_response(f)),
                       "responses": sum(1 for f, _, _ in members if is_response(f)),
                       "first_seen": text_time(min(times)), "last_seen": text_time(max(times)),
                       "source_pods": sorted({pod_label(c) for _, c, _ in members}),
                       "destinations": sorted({workload_label(s) for _, _, s in members})})
    return sorted(answer, key=lambda r: (-(r["requests"] + r["responses"]), r["source_namespace"],
                                         r["source_workload"], r["protocol"]))


def _headers(flow: dict) -> dict[str, str]:
    return {h["key"].lower(): h["value"] for h in flow["l7"]["http"].get("headers", [])}


def request_trace(flows: list[dict], request_id: str) -> list[dict]:
    wanted = request_id.lower()
    wanted_trace = wanted.split("-")[1] if _TRACEPARENT.fullmatch(wanted) else wanted
    answer = []
    for flow in flows:
        headers = _headers(flow)
        if headers.get("traceparent"):
            trace_id = headers["traceparent"].lower().split("-")[1]
        elif headers.get("x-b3-traceid"):
            trace_id = headers["x-b3-traceid"].lower()
        elif headers.get("b3"):
            trace_id = headers["b3"].lower().split("-")[0]
        else:
            trace_id = ""
        rid = headers.get("x-request-id", "")
        if request_id and (rid == request_id or (trace_id and trace_id == wanted_trace)):
            client, server = client_server(flow)
            http = flow["l7"]["http"]
            answer.append({"time": text_time(rfc3339_ns(flow["time"])), "node": flow["node_name"],
                           "l7_type": flow["l7"]["type"], "source": pod_label(client),
                           "destination": pod_label(server), "method": http.get("method", ""),
                           "url": http.get("url", ""), "status": status(flow), "latency_ms": latency_ns(flow) / 1e6,
                           "request_id": rid, "trace_id": trace_id})
    return sorted(answer, key=lambda r: r["time"])
