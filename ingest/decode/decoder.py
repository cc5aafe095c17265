"""Decoding: one Hubble `GetFlowsResponse` into the rows of the stored tables.

Both sources end here, so a flow is turned into rows in exactly one way. The decoder
fills each row by column name and `store.schema` lays the values out in the table's
column order: adding a column is an edit to the schema and to the line here that gives
its value. Lost-event and node-status messages become `ingest_gaps` rows.

It does not batch, deduplicate or write; it raises `DecodeError` on a message that
cannot be stored, and the dispatcher decides what to do with it.
"""

from __future__ import annotations

import hashlib
import re
from operator import itemgetter
from urllib.parse import urlsplit, urlunsplit

from ..api import L7_EVENT_TYPE
from ..api.flow import flow_pb2
from ..api.observer import observer_pb2
from ..api.relay import relay_pb2
from ..config import HTTPConfig, KafkaConfig
from ..pipeline.records import DecodeError, Filtered, FlowRows, GapRow, OtherEvent, gap
from ..store.flow_input import FLOW_INPUT, POD_SUFFIXES, RCODE_NAMES, WORKLOAD_LABELS
from ..store.schema import DNS_FLOWS, HTTP_FLOWS, L7_AUDIT, uuid_text
from .dnscache import DNSCache
from .redact import Redactor

class EnumNames(dict):
    """An enum's names by number. Proto3 enums are open: a number this build does not know
    (a newer Cilium) is stored as its digits, shown as UNKNOWN_<number> in a log line, and
    counted as UNKNOWN in a metric."""

    def __init__(self, enum):
        super().__init__((v.number, v.name) for v in enum.DESCRIPTOR.values)

    def __missing__(self, number: int) -> str:
        return str(number)

    def shown(self, number: int) -> str:
        """The name for a log line."""
        return super().get(number) or f"UNKNOWN_{number}"

    def label(self, number: int) -> str:
        """The name for a metric label: one UNKNOWN for every number this build does not
        know, so that a hostile peer cannot make series without end."""
        return super().get(number) or "UNKNOWN"


_VERDICT = EnumNames(flow_pb2.Verdict)
_L7_TYPE = EnumNames(flow_pb2.L7FlowType)
_DIRECTION = EnumNames(flow_pb2.TrafficDirection)
_FLOW_TYPE = EnumNames(flow_pb2.FlowType)
LOST_SOURCE = EnumNames(flow_pb2.LostEventSource)
NODE_STATE = EnumNames(relay_pb2.NodeState)

# The workload rule's pod-name suffixes and app labels, one definition for here and the
# store's views (store.flow_input).
_POD_SUFFIXES = tuple(re.compile(pattern) for pattern in POD_SUFFIXES)
# Identities below this are Cilium's reserved ones (host, world, health, ...), whose labels vary.
_FIRST_ALLOCATED_IDENTITY = 256
# How Hubble writes a flow's uuid (Go's uuid.String()).
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Flow times are DateTime64(9) (1900 to 2262), partitioned by day (a Date: 1970 to 2149)
# and rolled up into minutes (a DateTime: 1970 to 2106-02-07 06:28:15). Outside the
# narrowest of these, a row lands in a wrapped partition or a clamped minute, or (beyond
# 2262) the store's client refuses the whole batch, on every retry.
_EARLIEST_NS = 0
_LATEST_NS = (2**32 - 1) * 1_000_000_000 + 999_999_999
_UINT16_MAX = 65535  # ports, HTTP status and DNS rcode are UInt16 columns; Hubble sends uint32
_UINT32_MAX = 2**32 - 1
# Per-decoder caches of what repeats (pods, identities, URLs) are emptied when they reach this.
_CACHE_ENTRIES = 50_000

# A row's values by column name, in its table's column order.
_HTTP_ROW = itemgetter(*HTTP_FLOWS.column_names)
_DNS_ROW = itemgetter(*DNS_FLOWS.column_names)
_AUDIT_ROW = itemgetter(*L7_AUDIT.column_names)


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
        for prefix in WORKLOAD_LABELS:
            if label.startswith(prefix):
                return label[len(prefix):]
    return ""


_PORT_FIELDS = {p: (f"flow.l4.{p}.source_port", f"flow.l4.{p}.destination_port") for p in ("TCP", "UDP", "SCTP")}


def _ports(l4: flow_pb2.Layer4) -> tuple[int, int]:
    protocol = l4.WhichOneof("protocol")
    fields = _PORT_FIELDS.get(protocol)
    if fields is not None:
        ports = getattr(l4, protocol)
        source, destination = ports.source_port, ports.destination_port
        if source > _UINT16_MAX or destination > _UINT16_MAX:  # checked once for both: every flow passes here
            _uint16(source, fields[0], "port")
            _uint16(destination, fields[1], "port")
        return source, destination
    return 0, 0


# What a decoded flow holds beyond its values: the row tuples, the strings' and ints'
# headers, the lists and the map. Measured with tracemalloc on the demo's flows (2,591
# bytes a flow for 847 bytes of protobuf) and on flows with a 100 KB header (2.01 times
# the protobuf): the audit row holds the protobuf once, the typed row its values again.
_HELD_OVERHEAD = 1024


def held_bytes(serialized: bytes, typed: bool) -> int:
    """Bytes of memory a decoded flow holds, about: what the byte budgets (batch.queue_mb,
    batch.max_mb) count, so that they bound memory and, as marshal writes the same values,
    a batch's spool file."""
    return (2 if typed else 1) * len(serialized) + _HELD_OVERHEAD


class Decoder:
    """Turns responses into rows, each flow redacted first (`redact`)."""

    def __init__(self, http: HTTPConfig | None = None, kafka: KafkaConfig | None = None,
                 derive_in_store: bool = False):
        """derive_in_store: a flow becomes a row of the store's input table (flow_input), from
        which ClickHouse derives l7_audit and the typed tables, not rows of each."""
        http = http or HTTPConfig()
        self.derive_in_store = derive_in_store
        self.redact = Redactor(http, kafka)
        self.strip_query = http.strip_query
        self.strip_userinfo = http.strip_userinfo
        self.dns = DNSCache(http.dns_cache_entries, http.dns_grace_s)
        self._endpoints: dict[tuple, tuple] = {}
        self._labels: dict[int, list[str]] = {}
        self._urls: dict[str, tuple] = {}

    def decode(self, response: observer_pb2.GetFlowsResponse | observer_pb2.ExportEvent):
        """FlowRows, GapRow or Filtered for one response or exporter line; a list of GapRow
        for node status; OtherEvent for an exporter's agent or debug event."""
        kind = response.WhichOneof("response_types")
        if kind == "flow":
            return self.decode_flow(response.flow, response)
        if kind == "lost_events":
            return lost_events_gap(response)
        if kind == "node_status":
            return node_status_gaps(response)
        if kind is not None:  # agent_event, debug_event: only in ExportEvent
            return OtherEvent(kind, response.node_name)
        raise DecodeError("response_types: the message holds no flow, lost_events or node_status")

    def decode_flow(self, flow: flow_pb2.Flow, response=None) -> FlowRows | Filtered:
        # Before anything reads, copies or rejects it: every row, spool file, dead letter
        # and message quoting a value gets the redacted flow.
        headers = self.redact.flow(flow)
        if not flow.HasField("l7") and flow.Type != flow_pb2.L7 and flow.event_type.type != L7_EVENT_TYPE:
            kind = _FLOW_TYPE.label(flow.Type)
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
        l7_type = _L7_TYPE[l7.type]
        # An exporter's field mask may leave out the L7 record (or all of l7): an L7 flow all
        # the same, kept in l7_audit with what it has.
        record = l7.WhichOneof("record") or ""
        serialized = flow.SerializeToString()
        aggregate = flow.aggregate
        aggregate_count = (aggregate.ingress_flow_count + aggregate.egress_flow_count
                           + aggregate.unknown_direction_flow_count) if flow.HasField("aggregate") else 0
        if aggregate_count > _UINT32_MAX:  # three uint32 counts: their sum may not fit the UInt32 column
            raise DecodeError(f"flow.aggregate: {aggregate_count} flows is more than aggregate_count holds "
                              f"(at most {_UINT32_MAX})")
        if self.derive_in_store:
            return self._input_row(flow, time_ns, node, flow_id, audit_id, record, l7_type, serialized,
                                   aggregate_count, headers)
        audit = _AUDIT_ROW({"time": time_ns, "node": node, "flow_id": audit_id, "type": record.upper(),
                            "l7_type": l7_type, "flow": serialized, "aggregate_count": aggregate_count})
        if record not in ("http", "dns"):
            return FlowRows(flow_id, time_ns, node, None, None, audit, audit_id, held_bytes(serialized, typed=False))
        size = held_bytes(serialized, typed=True)
        values = self._flow_values(flow, time_ns, node, flow_id, l7_type)
        values["latency_ns"] = l7.latency_ns
        values["aggregate_count"] = aggregate_count
        is_response = l7.type == flow_pb2.RESPONSE
        if record == "http":
            http = l7.http
            values["method"] = http.method
            values["url"], values["host"] = self._url(http.url)
            values["protocol"] = http.protocol
            values["status_code"] = _uint16(http.code, "flow.l7.http.code", "HTTP status")
            values["headers"] = headers
            values["dst_dns_name"] = self._server_name(flow, is_response, time_ns)
            return FlowRows(flow_id, time_ns, node, HTTP_FLOWS, _HTTP_ROW(values), audit, audit_id, size)
        dns = l7.dns
        rcode = values["rcode"] = _uint16(dns.rcode, "flow.l7.dns.rcode", "DNS response code")
        ips = values["ips"] = list(dns.ips)
        query = values["query"] = dns.query
        ttl = values["ttl"] = dns.ttl
        if is_response and ips:  # the pod that asked is the destination of a response
            self.dns.learn(f"{values['dst_namespace']}/{values['dst_pod']}", ips, query, ttl, time_ns)
        values["rcode_name"] = RCODE_NAMES.get(rcode, f"RCODE{rcode}") if is_response else ""
        values["qtypes"] = list(dns.qtypes)
        values["cnames"] = list(dns.cnames)
        values["rrtypes"] = list(dns.rrtypes)
        values["observation_source"] = dns.observation_source
        return FlowRows(flow_id, time_ns, node, DNS_FLOWS, _DNS_ROW(values), audit, audit_id, size)

    def _flow_values(self, flow: flow_pb2.Flow, time_ns: int, node: str, flow_id: str, l7_type: str) -> dict:
        """The values of the columns HTTP and DNS flows share, by column name."""
        src_port, dst_port = _ports(flow.l4)
        ip = flow.IP
        src_namespace, src_pod, src_workload, src_identity, src_labels = self._endpoint(flow.source)
        dst_namespace, dst_pod, dst_workload, dst_identity, dst_labels = self._endpoint(flow.destination)
        return {
            "time": time_ns, "node": node, "flow_id": flow_id,
            "verdict": _VERDICT[flow.verdict], "l7_type": l7_type,
            "traffic_direction": _DIRECTION[flow.traffic_direction],
            "is_reply": flow.is_reply.value if flow.HasField("is_reply") else None,
            "src_namespace": src_namespace, "src_pod": src_pod, "src_workload": src_workload,
            "src_identity": src_identity, "src_ip": ip.source, "src_port": src_port,
            "src_labels": src_labels, "src_names": list(flow.source_names),
            "dst_namespace": dst_namespace, "dst_pod": dst_pod, "dst_workload": dst_workload,
            "dst_identity": dst_identity, "dst_ip": ip.destination, "dst_port": dst_port,
            "dst_labels": dst_labels, "dst_names": list(flow.destination_names),
        }

    def _endpoint(self, endpoint: flow_pb2.Endpoint) -> tuple:
        """(namespace, pod, workload, identity, labels); pods repeat, so each is worked out once.
        The labels of a security identity are fixed, except the reserved ones (world, host,
        ...), which are read every time, as is everything of an endpoint with no pod either."""
        key = (endpoint.namespace, endpoint.pod_name, endpoint.identity)
        if not key[1] and key[2] < _FIRST_ALLOCATED_IDENTITY:
            # No pod and no allocated identity (outside the cluster, or what an exporter's
            # field mask left): nothing fixes its workloads and labels, so nothing is kept.
            return key[0], key[1], workload_of(endpoint), key[2], list(endpoint.labels)
        known = self._endpoints.get(key)
        if known is None:
            if len(self._endpoints) >= _CACHE_ENTRIES:
                self._endpoints.clear()
            known = self._endpoints[key] = (key[0], key[1], workload_of(endpoint), key[2],
                                            self._identity_labels(endpoint))
        elif key[2] < _FIRST_ALLOCATED_IDENTITY:
            return known[:4] + (list(endpoint.labels),)
        return known

    def _identity_labels(self, endpoint: flow_pb2.Endpoint) -> list[str]:
        identity = endpoint.identity
        if identity < _FIRST_ALLOCATED_IDENTITY:
            return list(endpoint.labels)
        known = self._labels.get(identity)
        if known is None:
            if len(self._labels) >= _CACHE_ENTRIES:
                self._labels.clear()
            known = self._labels[identity] = list(endpoint.labels)
        return known

    def _server_name(self, flow: flow_pb2.Flow, is_response: bool, time_ns: int) -> str:
        """The DNS name of the exchange's server: Hubble's own when it has one, else, for a
        server with no pod, the name the client pod last resolved to the server's IP. On a
        response, Hubble swaps the endpoints: the server is the source."""
        if is_response:
            names, server, client, server_ip = flow.source_names, flow.source, flow.destination, flow.IP.source
        else:
            names, server, client, server_ip = (flow.destination_names, flow.destination, flow.source,
                                                flow.IP.destination)
        if names:
            return names[0]
        if server.pod_name:
            return ""
        return self.dns.name_for(f"{client.namespace}/{client.pod_name}", server_ip, time_ns)

    def _input_row(self, flow: flow_pb2.Flow, time_ns: int, node: str, flow_id: str, audit_id: str, record: str,
                   l7_type: str, serialized: bytes, aggregate_count: int, headers: dict | None) -> FlowRows:
        """The flow as a row of flow_input: what ClickHouse cannot derive from it, checked as
        the typed rows are (a flow either table would refuse is refused here too)."""
        url = host = dst_dns_name = ""
        header_names = header_values = ()
        l7 = flow.l7
        is_response = l7.type == flow_pb2.RESPONSE
        if record == "http":
            _ports(flow.l4)
            http = l7.http
            _uint16(http.code, "flow.l7.http.code", "HTTP status")
            url, host = self._url(http.url)
            header_names, header_values = list(headers), list(headers.values())
            dst_dns_name = self._server_name(flow, is_response, time_ns)
        elif record == "dns":
            _ports(flow.l4)
            dns = l7.dns
            _uint16(dns.rcode, "flow.l7.dns.rcode", "DNS response code")
            if is_response and dns.ips:  # the pod that asked is the destination of a response
                asker = flow.destination
                self.dns.learn(f"{asker.namespace}/{asker.pod_name}", list(dns.ips), dns.query, dns.ttl, time_ns)
        is_reply = flow.is_reply.value + 1 if flow.HasField("is_reply") else 0
        row = (serialized, serialized, time_ns, node, flow_id, audit_id, record.upper(), l7_type, aggregate_count,
               is_reply, url, host, header_names, header_values, dst_dns_name)
        # Counted as a typed flow, twice its bytes, though the row holds them once and the
        # batch's compressed body about a tenth more: the budgets stay a bound, and the
        # queue holds as many flows in both modes.
        return FlowRows(audit_id, time_ns, node, FLOW_INPUT, row, None, audit_id, held_bytes(serialized, typed=True))

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


def lost_events_gap(response: observer_pb2.GetFlowsResponse) -> GapRow:
    lost = response.lost_events
    time_ns = timestamp_ns(response.time, "time")
    first = timestamp_ns(lost.first, "lost_events.first") if lost.HasField("first") else time_ns
    last = timestamp_ns(lost.last, "lost_events.last") if lost.HasField("last") else time_ns
    return gap(content_id(response), time_ns, node=response.node_name, kind="lost_events",
               source=LOST_SOURCE[lost.source], count=lost.num_events_lost, first=first,
               last=last, message=f"cpu {lost.cpu.value}" if lost.HasField("cpu") else "")


def node_status_gaps(response: observer_pb2.GetFlowsResponse) -> list[GapRow]:
    status = response.node_status
    time_ns = timestamp_ns(response.time, "time")
    gap_id = content_id(response)
    state = NODE_STATE[status.state_change]
    return [gap(f"{gap_id}-{index}", time_ns, node=node, kind="node_status", source=state, count=0, first=time_ns,
                last=time_ns, message=status.message)
            for index, node in enumerate(status.node_names or [response.node_name])]
