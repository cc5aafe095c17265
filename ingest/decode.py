"""Decoding: one Hubble `GetFlowsResponse` into rows of the stored tables.

Both sources (gRPC and files) end here, so a flow is turned into rows in exactly one
way. Row layouts come from `schema`: the decoder fills a value for every column name
and `operator.itemgetter` lays them out in the table's column order.

It does not batch, deduplicate or write; it raises `DecodeError` on a flow that
cannot be stored, and the caller decides what to do with it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from operator import itemgetter
from urllib.parse import urlsplit, urlunsplit

from .api.flow import flow_pb2
from .api.observer import observer_pb2
from .api.relay import relay_pb2
from .config import HTTPConfig
from .dnscache import DNSCache
from .schema import DNS_FLOWS, HTTP_FLOWS, INGEST_GAPS, L7_AUDIT, Table

L7_EVENT_TYPE = 129  # Cilium's MessageTypeAccessLog: what `hubble observe -t l7` asks for

# DNS RCODEs by number (RFC 1035, 2136, 6895), the names dig prints.
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
               6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 11: "DSOTYPENI",
               16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG",
               22: "BADTRUNC", 23: "BADCOOKIE"}

_VERDICT = {v.number: v.name for v in flow_pb2.Verdict.DESCRIPTOR.values}
_L7_TYPE = {v.number: v.name for v in flow_pb2.L7FlowType.DESCRIPTOR.values}
_DIRECTION = {v.number: v.name for v in flow_pb2.TrafficDirection.DESCRIPTOR.values}
_LOST_SOURCE = {v.number: v.name for v in flow_pb2.LostEventSource.DESCRIPTOR.values}
_NODE_STATE = {v.number: v.name for v in relay_pb2.NodeState.DESCRIPTOR.values}

# Kubernetes pod-name suffixes use this alphabet (k8s.io/apimachinery rand.SafeEncodeString).
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_POD_SUFFIXES = (
    re.compile(rf"^(.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$"),  # Deployment: <name>-<rs hash>-<pod>
    re.compile(rf"^(.+)-{_SAFE}{{5}}$"),                  # DaemonSet, Job, ReplicaSet
    re.compile(r"^(.+)-\d+$"),                            # StatefulSet
)
_WORKLOAD_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:app=", "k8s:k8s-app=")
# Identities below this are Cilium's reserved ones (host, world, health, ...), whose labels vary.
_FIRST_ALLOCATED_IDENTITY = 256
_KEEP, _REDACT, _DROP = object(), object(), object()
_REDACTED = "[REDACTED]"
# How Hubble writes a flow's uuid (Go's uuid.String()).
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# What ClickHouse's toUUIDOrNull takes: the 36-character form or 32 hex digits, any case.
_UUID_ANY_CASE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", re.ASCII | re.I)
# Flow times are DateTime64(9) (1900 to 2262), partitioned by day (a Date: 1970 to 2149)
# and rolled up into minutes (a DateTime: 1970 to 2106-02-07 06:28:15). Outside the
# narrowest of these, a row lands in a wrapped partition or a clamped minute, or (beyond
# 2262) the store's client refuses the whole batch, on every retry.
_EARLIEST_NS = 0
_LATEST_NS = (2**32 - 1) * 1_000_000_000 + 999_999_999
_UINT16_MAX = 65535  # ports, HTTP status and DNS rcode are UInt16 columns; Hubble sends uint32
# Per-decoder caches of what repeats (pods, identities, URLs) are emptied when they reach this.
_CACHE_ENTRIES = 50_000

# The hot path builds rows as tuples, in these orders; they must be the tables' column
# orders from schema.py, which is checked here once, at import.
_ENDPOINT = ("namespace", "pod", "workload", "identity", "ip", "port", "labels", "names")
_FLOW_ORDER = (("time", "node", "flow_id", "verdict", "l7_type", "traffic_direction", "is_reply")
               + tuple(f"src_{c}" for c in _ENDPOINT) + tuple(f"dst_{c}" for c in _ENDPOINT))
_HTTP_ORDER = _FLOW_ORDER + ("method", "url", "host", "protocol", "status_code", "latency_ns", "headers",
                             "dst_dns_name")
_DNS_ORDER = _FLOW_ORDER + ("query", "qtypes", "rcode", "rcode_name", "ips", "ttl", "cnames", "rrtypes",
                            "observation_source", "latency_ns")
_AUDIT_ORDER = ("time", "node", "flow_id", "type", "l7_type", "flow")
for _table, _order in ((HTTP_FLOWS, _HTTP_ORDER), (DNS_FLOWS, _DNS_ORDER), (L7_AUDIT, _AUDIT_ORDER)):
    if _table.column_names != _order:
        raise ImportError(f"decode.py builds {_table.name} rows as {_order}, schema.py defines "
                          f"{_table.column_names}")
_gap_row = itemgetter(*INGEST_GAPS.column_names)


class DecodeError(ValueError):
    """A message that cannot be stored; the text names the offending field."""


@dataclass(slots=True)
class FlowRows:
    """One stored L7 flow: its typed row (if HTTP or DNS) and its audit row."""
    flow_id: str  # in the typed row: always a UUID's text (see uuid_text)
    time_ns: int
    node: str
    table: Table | None
    row: tuple | None
    audit_row: tuple
    audit_id: str  # in the audit row and the checkpoint: Hubble's uuid as it came, else the content hash


@dataclass(slots=True)
class GapRow:
    gap_id: str
    time_ns: int
    row: tuple


@dataclass(slots=True)
class Filtered:
    """A flow that is not L7 (trace, drop, policy-verdict events): counted, not stored."""
    kind: str
    node: str
    time_ns: int


def timestamp_ns(ts, field: str) -> int:
    """A Timestamp in nanoseconds; DecodeError naming field when no time column can hold it."""
    ns = ts.seconds * 1_000_000_000 + ts.nanos
    if _EARLIEST_NS <= ns <= _LATEST_NS:
        return ns
    try:
        shown = ts.ToJsonString()
    except ValueError:  # beyond the years 1 to 9999
        shown = f"{ts.seconds} s since 1970"
    raise DecodeError(f"{field}: {shown} is outside the times the tables hold (1970-01-01 to 2106-02-07)")


def _uint16(value: int, field: str, what: str) -> int:
    if value > _UINT16_MAX:
        raise DecodeError(f"{field}: {value} is no {what} (at most {_UINT16_MAX})")
    return value


def content_id(message) -> str:
    """A deterministic id for a message that carries none (flows from Cilium < 1.15)."""
    return hashlib.blake2b(message.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def uuid_text(text: str) -> str:
    """An id as the typed tables' UUID column holds it: a UUID in lower case, anything else
    as the MD5 of its text (32 hex digits). Migration 6 rewrites the ids stored before it
    the same way, so a flow replayed after it gets the id it was stored with."""
    if _UUID_ANY_CASE.fullmatch(text):
        return text.lower()
    return hashlib.md5(text.encode()).hexdigest()


def workload_of(endpoint: flow_pb2.Endpoint) -> str:
    if endpoint.workloads:
        return endpoint.workloads[0].name
    if endpoint.pod_name:
        for pattern in _POD_SUFFIXES:
            match = pattern.match(endpoint.pod_name)
            if match:
                return match.group(1)
        return endpoint.pod_name
    for label in endpoint.labels:
        for prefix in _WORKLOAD_LABELS:
            if label.startswith(prefix):
                return label[len(prefix):]
    return ""


_PORT_FIELDS = {p: (f"flow.l4.{p}.source_port", f"flow.l4.{p}.destination_port") for p in ("TCP", "UDP", "SCTP")}


def _ports(l4: flow_pb2.Layer4) -> tuple[int, int]:
    protocol = l4.WhichOneof("protocol")
    fields = _PORT_FIELDS.get(protocol)
    if fields is not None:
        ports = getattr(l4, protocol)
        return _uint16(ports.source_port, fields[0], "port"), _uint16(ports.destination_port, fields[1], "port")
    return 0, 0


class Decoder:
    """Turns responses into rows; holds the HTTP redaction settings."""

    def __init__(self, http: HTTPConfig | None = None):
        http = http or HTTPConfig()
        self.keep_all_headers = "*" in http.headers_allow
        self.allowed_headers = {h.lower() for h in http.headers_allow}
        self.redacted_headers = {h.lower() for h in http.headers_redact}
        self.strip_query = http.strip_query
        self.strip_userinfo = http.strip_userinfo
        self.dns = DNSCache(http.dns_cache_entries, http.dns_grace_s)
        self._endpoints: dict[tuple, tuple] = {}
        self._identity_labels: dict[int, list[str]] = {}
        self._urls: dict[str, tuple] = {}
        self._header_policies: dict[str, object] = {}

    def decode(self, response: observer_pb2.GetFlowsResponse):
        """FlowRows, GapRow or Filtered for one response; a list of GapRow for node status."""
        kind = response.WhichOneof("response_types")
        if kind == "flow":
            return self.decode_flow(response.flow, response)
        if kind == "lost_events":
            return lost_events_gap(response)
        if kind == "node_status":
            return node_status_gaps(response)
        raise DecodeError("response_types: the message holds no flow, lost_events or node_status")

    def decode_flow(self, flow: flow_pb2.Flow, response=None) -> FlowRows | Filtered:
        if not flow.HasField("l7"):
            if flow.Type == flow_pb2.L7:
                raise DecodeError("flow.l7: an L7 flow (Type L7) without an l7 record")
            kind = flow_pb2.FlowType.Name(flow.Type) if flow.Type in (0, 1, 3) else "UNKNOWN_TYPE"
            return Filtered(kind, flow.node_name or (response.node_name if response is not None else ""),
                            timestamp_ns(flow.time, "flow.time"))
        if flow.HasField("time"):
            time_ns = timestamp_ns(flow.time, "flow.time")
        elif response is not None and response.HasField("time"):
            time_ns = timestamp_ns(response.time, "time")
        else:
            raise DecodeError("flow.time: the flow has no time")
        uuid = flow.uuid
        audit_id = uuid or content_id(flow)
        # The same but where Hubble's uuid is no lowercase UUID (it always is): l7_audit keeps
        # it as it came, as before schema version 6, which cannot change its key column.
        flow_id = audit_id if not uuid or _UUID.fullmatch(uuid) else uuid_text(uuid)
        node = flow.node_name or (response.node_name if response is not None else "")
        l7 = flow.l7
        l7_type = _L7_TYPE.get(l7.type, str(l7.type))
        record = l7.WhichOneof("record")
        if record is None:
            raise DecodeError("flow.l7: the l7 record holds no http, dns or kafka part")
        audit = (time_ns, node, audit_id, record.upper(), l7_type, flow.SerializeToString())
        if record not in ("http", "dns"):
            return FlowRows(flow_id, time_ns, node, None, None, audit, audit_id)
        common = self._common(flow, time_ns, node, flow_id, l7_type)
        is_response = l7.type == flow_pb2.RESPONSE
        if record == "http":
            row = common + self._http(l7.http) + (l7.latency_ns, self._headers(l7.http),
                                                  self._server_name(flow, is_response, time_ns))
            return FlowRows(flow_id, time_ns, node, HTTP_FLOWS, row, audit, audit_id)
        dns = l7.dns
        rcode = _uint16(dns.rcode, "flow.l7.dns.rcode", "DNS response code")
        ips = list(dns.ips)
        if is_response and ips:
            asker = flow.destination
            self.dns.learn(f"{asker.namespace}/{asker.pod_name}", ips, dns.query, dns.ttl, time_ns)
        rcode_name = RCODE_NAMES.get(rcode, f"RCODE{rcode}") if is_response else ""
        row = common + (dns.query, list(dns.qtypes), rcode, rcode_name, ips, dns.ttl, list(dns.cnames),
                        list(dns.rrtypes), dns.observation_source, l7.latency_ns)
        return FlowRows(flow_id, time_ns, node, DNS_FLOWS, row, audit, audit_id)

    def _common(self, flow: flow_pb2.Flow, time_ns: int, node: str, flow_id: str, l7_type: str) -> tuple:
        src_port, dst_port = _ports(flow.l4)
        ip = flow.IP
        return ((time_ns, node, flow_id, _VERDICT.get(flow.verdict, str(flow.verdict)), l7_type,
                 _DIRECTION.get(flow.traffic_direction, str(flow.traffic_direction)),
                 flow.is_reply.value if flow.HasField("is_reply") else None)
                + self._endpoint(flow.source) + (ip.source, src_port, self._labels(flow.source),
                                                 list(flow.source_names))
                + self._endpoint(flow.destination) + (ip.destination, dst_port, self._labels(flow.destination),
                                                      list(flow.destination_names)))

    def _endpoint(self, endpoint: flow_pb2.Endpoint) -> tuple:
        """(namespace, pod, workload, identity); pods repeat, so each is worked out once."""
        key = (endpoint.namespace, endpoint.pod_name, endpoint.identity)
        known = self._endpoints.get(key)
        if known is None:
            if len(self._endpoints) >= _CACHE_ENTRIES:
                self._endpoints.clear()
            known = self._endpoints[key] = (key[0], key[1], workload_of(endpoint), key[2])
        return known

    def _labels(self, endpoint: flow_pb2.Endpoint) -> list[str]:
        # The labels of a security identity are fixed, except the reserved ones (world, host, ...).
        identity = endpoint.identity
        if identity < _FIRST_ALLOCATED_IDENTITY:
            return list(endpoint.labels)
        known = self._identity_labels.get(identity)
        if known is None:
            if len(self._identity_labels) >= _CACHE_ENTRIES:
                self._identity_labels.clear()
            known = self._identity_labels[identity] = list(endpoint.labels)
        return known

    def _server_name(self, flow: flow_pb2.Flow, is_response: bool, time_ns: int) -> str:
        """The DNS name of the exchange's server: Hubble's own when it has one, else, for a
        server with no pod, the name the client pod last resolved to the server's IP."""
        if is_response:
            server, client, server_ip, names = flow.source, flow.destination, flow.IP.source, flow.source_names
        else:
            server, client, server_ip, names = flow.destination, flow.source, flow.IP.destination, flow.destination_names
        if names:
            return names[0]
        if server.pod_name:
            return ""
        return self.dns.name_for(f"{client.namespace}/{client.pod_name}", server_ip, time_ns)

    def _http(self, http: flow_pb2.HTTP) -> tuple:
        """(method, url, host, protocol, status_code); path and query are computed by ClickHouse."""
        return (http.method,) + self._url(http.url) + (http.protocol,
                                                        _uint16(http.code, "flow.l7.http.code", "HTTP status"))

    def _url(self, url: str) -> tuple[str, str]:
        """(url as stored, host); the same URLs come again and again."""
        known = self._urls.get(url)
        if known is not None:
            return known
        head, question, query = url.partition("?")
        # Query strings vary (ids, tokens) where the part before them repeats: split that
        # part once and append the query, as urlunsplit would. Only for URLs urlsplit takes
        # verbatim: no fragment, no characters it strips.
        if question and query and not self.strip_query and "#" not in url and url.isprintable() and url[0] > " ":
            stored, host = self._url(head)
            return f"{stored}?{query}", host
        host = ""
        stored = url
        if url:
            try:
                parts = urlsplit(url)
                host = parts.hostname or ""
                if parts.port:
                    host = f"{host}:{parts.port}"
            except ValueError:
                raise DecodeError(f"l7.http.url: not a URL: {url[:200]!r}") from None
            if self.strip_userinfo and "@" in parts.netloc:
                parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
            if self.strip_query:
                parts = parts._replace(query="")
            stored = urlunsplit(parts)
        if len(self._urls) >= _CACHE_ENTRIES:
            self._urls.clear()
        known = self._urls[url] = (stored, host)
        return known

    def _headers(self, http: flow_pb2.HTTP) -> dict[str, str]:
        headers: dict[str, str] = {}
        policies = self._header_policies
        for header in http.headers:
            key = header.key
            policy = policies.get(key)
            if policy is None:
                policy = self._header_policy(key)
            if policy is _DROP:
                continue
            value = header.value if policy is _KEEP else _REDACTED
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _header_policy(self, key: str) -> object:
        """Keep, redact or drop a header name; worked out once per name as sent."""
        name = key.lower()
        if not self.keep_all_headers and name not in self.allowed_headers:
            policy = _DROP
        else:
            policy = _REDACT if name in self.redacted_headers else _KEEP
        if len(self._header_policies) >= _CACHE_ENTRIES:
            self._header_policies.clear()
        self._header_policies[key] = policy
        return policy


def lost_events_gap(response: observer_pb2.GetFlowsResponse) -> GapRow:
    lost = response.lost_events
    time_ns = timestamp_ns(response.time, "time")
    first = timestamp_ns(lost.first, "lost_events.first") if lost.HasField("first") else time_ns
    last = timestamp_ns(lost.last, "lost_events.last") if lost.HasField("last") else time_ns
    gap_id = content_id(response)
    row = {"time": time_ns, "node": response.node_name, "gap_id": gap_id, "kind": "lost_events",
           "source": _LOST_SOURCE.get(lost.source, str(lost.source)), "count": lost.num_events_lost,
           "first": first, "last": last,
           "message": f"cpu {lost.cpu.value}" if lost.HasField("cpu") else ""}
    return GapRow(gap_id, time_ns, _gap_row(row))


def node_status_gaps(response: observer_pb2.GetFlowsResponse) -> list[GapRow]:
    status = response.node_status
    time_ns = timestamp_ns(response.time, "time")
    gap_id = content_id(response)
    gaps = []
    for index, node in enumerate(status.node_names or [response.node_name]):
        row_id = f"{gap_id}-{index}"
        row = {"time": time_ns, "node": node, "gap_id": row_id, "kind": "node_status",
               "source": _NODE_STATE.get(status.state_change, str(status.state_change)), "count": 0,
               "first": time_ns, "last": time_ns, "message": status.message}
        gaps.append(GapRow(row_id, time_ns, _gap_row(row)))
    return gaps


def interruption_gap(source: str, node: str, first_ns: int, last_ns: int, message: str) -> GapRow:
    """A stream that broke between first_ns and last_ns; resuming may or may not cover it."""
    gap_id = hashlib.blake2b(f"{source}|{node}|{first_ns}|{last_ns}".encode(), digest_size=16).hexdigest()
    row = {"time": last_ns, "node": node, "gap_id": gap_id, "kind": "stream_interrupted", "source": source,
           "count": 0, "first": first_ns, "last": last_ns, "message": message}
    return GapRow(gap_id, last_ns, _gap_row(row))


def unreadable_spool_gap(kept_at: str, file_id: str, written_ns: int, message: str) -> GapRow:
    """A spooled batch that could not be read back or stored: its flows (or, as message
    says, some of them) are not stored, and how many there were is unknown. The row's
    times are when the file was written (its flows are a little older) and its id comes
    from the file (file_id: name, size, mtime), so working on the same file again gives
    the same row; source is where the file is kept."""
    gap_id = hashlib.blake2b(f"spool|{file_id}".encode(), digest_size=16).hexdigest()
    row = {"time": written_ns, "node": "", "gap_id": gap_id, "kind": "spool_unreadable", "source": kept_at,
           "count": 0, "first": written_ns, "last": written_ns, "message": message}
    return GapRow(gap_id, written_ns, _gap_row(row))
