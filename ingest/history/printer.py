"""Prints `Observer.GetFlows` responses as `hubble observe` does: `compact` (the default),
`dict`, `table`, and `jsonpb` (`json` is its alias, as in Hubble CLI 0.11 and later).

Follows Hubble's printer (cilium/cilium `hubble/pkg/printer`, v1.19, as vendored in
cilium/hubble) with its defaults: times as `Jan _2 15:04:05.000` in UTC, IP addresses
translated to pod, service or DNS names, no node names, no policy names. Node status
events go to the error stream, and only errors and unavailable nodes unless `debug`.
Compact and dict output are never coloured (Hubble's `--color never`); terminal escapes in
the text are defused as Hubble does. `table` holds every row until `close()`, as Hubble's
tabwriter does: it cannot follow.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TextIO

from google.protobuf import json_format, text_format

from ..api.flow import flow_pb2
from ..api.observer import observer_pb2
from ..api.relay import relay_pb2

OUTPUTS = ("compact", "dict", "json", "jsonpb", "table")

# Cilium's monitor message types (pkg/monitor/api/types.go).
_DROP, _CAPTURE, _TRACE, _POLICY_VERDICT, _TRACE_SOCK = 1, 3, 4, 5, 7
# Trace observation points by sub-type (bpf/lib/trace.h).
TRACE_POINTS = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay", 5: "from-endpoint",
                6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay", 10: "from-network",
                11: "to-network", 12: "from-crypto", 13: "to-crypto"}
# Reserved security identities that print by name (pkg/identity/numericidentity.go).
RESERVED_IDENTITIES = {0: "unknown", 1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
                       7: "kube-apiserver", 8: "ingress", 9: "world-ipv4", 10: "world-ipv6"}
_POLICY_MATCH = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto", 6: "Proto-Only"}
_SOCK_XLATE = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}
# Drop reasons by sub-type (pkg/monitor/api/drop.go).
DROP_REASONS = {
    0: "Success", 2: "Invalid packet", 3: "Interface", 4: "Interface Decrypted",
    5: "LB, sock cgroup: No backend slot entry found", 6: "LB, sock cgroup: No backend entry found",
    7: "LB, sock cgroup: Reverse entry update failed", 8: "LB, sock cgroup: Reverse entry stale",
    9: "Fragmented packet", 10: "Fragmented packet entry update failed", 11: "Missed tail call to custom program",
    12: "Interface Decrypting", 13: "Interface Encrypting", 14: "LB: sock cgroup: Reverse entry delete succeeded",
    15: "MTU error message", 130: "Invalid source mac", 131: "Invalid destination mac", 132: "Invalid source ip",
    133: "Policy denied", 134: "Invalid packet", 135: "CT: Truncated or invalid header", 136: "Fragmentation needed",
    137: "CT: Unknown L4 protocol", 138: "CT: Can't create entry from packet", 139: "Unsupported L3 protocol",
    140: "Missed tail call", 141: "Error writing to packet", 142: "Unknown L4 protocol", 143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type", 145: "Unknown ICMPv6 code", 146: "Unknown ICMPv6 type",
    147: "Error retrieving tunnel key", 148: "Error retrieving tunnel options", 149: "Invalid Geneve option",
    150: "Unknown L3 target address", 151: "Stale or unroutable IP", 152: "No matching local container found",
    153: "Error while correcting L3 checksum", 154: "Error while correcting L4 checksum",
    155: "CT: Map insertion failed", 156: "Invalid IPv6 extension header", 157: "IP fragmentation not supported",
    158: "Service backend not found", 160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "NAT 46/64 not enabled", 162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state", 164: "Local host is unreachable",
    165: "No configuration available to perform policy decision", 166: "Unsupported L2 protocol",
    167: "No mapping for NAT masquerade", 168: "Unsupported protocol for NAT masquerade", 169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited", 171: "Invalid identity", 172: "Unknown sender",
    173: "NAT not needed", 174: "Is a ClusterIP", 175: "First logical datagram fragment not found",
    176: "Forbidden ICMPv6 message", 177: "Denied by LB src range check", 178: "Socket lookup failed",
    179: "Socket assign failed", 180: "Proxy redirection not supported for protocol",
    181: "Policy denied by denylist", 182: "VLAN traffic disallowed by VLAN filter",
    183: "Incorrect VNI from VTEP", 184: "Failed to update or lookup TC buffer",
    185: "No SID was found for the IP address", 186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)", 188: "L3 translation from IPv6 to IPv4 failed (NAT64)",
    189: "Authentication required", 190: "No conntrack map found", 191: "No nat map found",
    192: "Invalid ClusterID", 193: "Unsupported packet protocol for DSR encapsulation",
    194: "No egress gateway found", 195: "Traffic is unencrypted", 196: "TTL exceeded", 197: "No node ID found",
    198: "Rate limited", 199: "IGMP handled", 200: "IGMP subscribed", 201: "Multicast handled",
    202: "Host datapath not ready", 203: "Endpoint policy program not available", 204: "No Egress IP configured",
    205: "Punt to proxy",
}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# What Go's Timestamp.IsValid accepts: years 1 to 9999.
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799
# Hubble's terminal escaper: no escape sequence or carriage return reaches the terminal.
_DEFUSE = str.maketrans({"\x1b": "^[", "\r": "\\r"})
# Go's json.Encoder escapes these inside strings (its HTML-safe default).
_GO_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                                  "\u2029": "\\u2029"})
_DICT_SEPARATOR = "------------"
_NODE_NAMES_CUT_OFF = 50


class Printer:
    """`write` each response, then `close` (which prints a table)."""

    def __init__(self, output: str = "compact", out: TextIO | None = None, err: TextIO | None = None,
                 tz: tzinfo = timezone.utc, node_name: bool = False, ip_translation: bool = True,
                 debug: bool = False):
        if output not in OUTPUTS:
            raise ValueError(f"invalid output format: {output}")
        self.output = "jsonpb" if output == "json" else output
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.tz = tz
        self.node_name = node_name
        self.ip_translation = ip_translation
        self.debug = debug
        self.count = 0  # flows and lost events written, as Hubble's `line`
        self._rows: list[list[str]] = []

    def write(self, response: observer_pb2.GetFlowsResponse) -> None:
        kind = response.WhichOneof("response_types")
        if kind == "flow":
            self._flow(response)
        elif kind == "lost_events":
            self._lost_events(response)
        elif kind == "node_status":
            self._node_status(response)
        elif kind is not None and self.debug:
            self.err.write(f"unknown response type: {kind}\n")

    def close(self) -> None:
        if self._rows:
            self.out.write(tabulate(self._rows))
            self._rows = []
        self.out.flush()

    def _flow(self, response: observer_pb2.GetFlowsResponse) -> None:
        flow = response.flow
        if self.output == "jsonpb":
            self.out.write(json_line(response))
            self.count += 1
            return
        stamp = timestamp(flow.time if flow.HasField("time") else None, self.tz)
        src, dst = self.hostnames(flow)
        kind, verdict, summary = flow_type(flow), verdict_text(flow), summary_text(flow)
        if self.output == "compact":
            src_id, dst_id = identity(flow.source.identity), identity(flow.destination.identity)
            arrow = "->"
            if not flow.HasField("is_reply"):
                arrow = "<>"  # direction unknown
            elif flow.is_reply.value:
                src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
            node = f" [{flow.node_name}]" if self.node_name else ""
            self.out.write(f"{stamp}{node}: {src} {src_id} {arrow} {dst} {dst_id} {kind} {verdict} ({summary})\n"
                           .translate(_DEFUSE))
        elif self.output == "table":
            self._row([stamp] + ([flow.node_name] if self.node_name else []) + [src, dst, kind, verdict, summary])
        else:
            self._record([("TIMESTAMP", stamp)] + ([("NODE", flow.node_name)] if self.node_name else [])
                         + [("SOURCE", src), ("DESTINATION", dst), ("TYPE", kind), ("VERDICT", verdict),
                            ("SUMMARY", summary)])
        self.count += 1

    def _lost_events(self, response: observer_pb2.GetFlowsResponse) -> None:
        lost = response.lost_events
        if self.output == "jsonpb":
            self.out.write(json_line(response))
            self.count += 1
            return
        stamp = timestamp(response.time if response.HasField("time") else None, self.tz)
        source = enum_name(flow_pb2.LostEventSource, lost.source)
        window = ""
        if lost.HasField("first") and lost.HasField("last"):
            window = f" (first: {timestamp(lost.first, self.tz)}, last: {timestamp(lost.last, self.tz)})"
        node = [response.node_name or "-"] if self.node_name else []
        if self.output == "compact":
            self.out.write(f"{stamp} EVENTS LOST: {source} CPU({lost.cpu.value}) {lost.num_events_lost}{window}\n"
                           .translate(_DEFUSE))
        elif self.output == "table":
            self._row([stamp] + node + [source, "-", "EVENTS LOST", "-",
                                        f"CPU({lost.cpu.value}) - {lost.num_events_lost}{window}"])
        else:
            self._record([("TIMESTAMP", stamp)] + [("NODE", n) for n in node]
                         + [("SOURCE", source), ("TYPE", "EVENTS LOST"), ("VERDICT", "-"),
                            ("SUMMARY", f"CPU({lost.cpu.value}) - {lost.num_events_lost}{window}")])
        self.count += 1

    def _node_status(self, response: observer_pb2.GetFlowsResponse) -> None:
        status = response.node_status
        state = status.state_change
        if not self.debug and state not in (relay_pb2.NODE_ERROR, relay_pb2.NODE_UNAVAILABLE):
            return
        if self.output == "jsonpb":
            self.err.write(json_line(response))
            return
        stamp = timestamp(response.time if response.HasField("time") else None, self.tz)
        names = join_with_cut_off(list(status.node_names), ", ", _NODE_NAMES_CUT_OFF)
        if self.output == "dict":
            separator = _DICT_SEPARATOR + "\n" if self.count else ""
            message = json.dumps(status.message, ensure_ascii=False) if status.message else "N/A"
            self.err.write(f"{separator}  TIMESTAMP: {stamp}\n      STATE: {enum_name(relay_pb2.NodeState, state)}\n"
                           f"      NODES: {names}\n    MESSAGE: {message}\n".translate(_DEFUSE))
            self.count = self.count or 1
            return
        prefix, count = f"{stamp} [{response.node_name}]", len(status.node_names)
        if state == relay_pb2.NODE_CONNECTED:
            text = f"{prefix}: Receiving flows from {count} nodes: {names}"
        elif state == relay_pb2.NODE_UNAVAILABLE:
            text = f"{prefix}: {count} nodes are unavailable: {names}"
        elif state == relay_pb2.NODE_GONE:
            text = f"{prefix}: {count} nodes removed from cluster: {names}"
        elif state == relay_pb2.NODE_ERROR:
            text = f"{prefix}: Error {json.dumps(status.message, ensure_ascii=False)} on {count} nodes: {names}"
        else:
            text = f"{prefix}: unknown node status event: {text_format.MessageToString(status, as_one_line=True)}"
        self.err.write((text + "\n").translate(_DEFUSE))

    def _row(self, cells: list[str]) -> None:
        if not self._rows:
            self._rows.append(["TIMESTAMP"] + (["NODE"] if self.node_name else [])
                              + ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"])
        # A tab inside a value starts a new cell, as it does in Hubble's tabwriter.
        self._rows.append("\t".join(cells).translate(_DEFUSE).split("\t"))

    def _record(self, fields: list[tuple[str, str]]) -> None:
        separator = _DICT_SEPARATOR + "\n" if self.count else ""
        self.out.write((separator + "".join(f"{name:>11}: {value}\n" for name, value in fields)).translate(_DEFUSE))

    def hostnames(self, flow: flow_pb2.Flow) -> tuple[str, str]:
        """Source and destination as Hubble names them: pod, service or DNS names (with
        translation), else the IP, with the port when there is one; MACs without IP."""
        if not flow.HasField("IP"):
            if flow.HasField("ethernet"):
                return flow.ethernet.source, flow.ethernet.destination
            return "", ""
        src_ns, src_pod = flow.source.namespace, flow.source.pod_name
        dst_ns, dst_pod = flow.destination.namespace, flow.destination.pod_name
        src_svc = dst_svc = ""
        if flow.HasField("source_service"):
            src_ns, src_svc = flow.source_service.namespace, flow.source_service.name
        if flow.HasField("destination_service"):
            dst_ns, dst_svc = flow.destination_service.namespace, flow.destination_service.name
        src_port, dst_port = ports(flow)
        return (self._host(flow.IP.source, src_port, src_ns, src_pod, src_svc, flow.source_names),
                self._host(flow.IP.destination, dst_port, dst_ns, dst_pod, dst_svc, flow.destination_names))

    def _host(self, ip: str, port: str, namespace: str, pod: str, service: str, names) -> str:
        host = ip
        if self.ip_translation:
            if pod:
                host = f"{namespace}/{pod}" if namespace else pod
            elif service:
                host = f"{namespace}/{service}" if namespace else service
            elif names:
                host = ",".join(names)
        if port and port != "0":
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return host


def ports(flow: flow_pb2.Flow) -> tuple[str, str]:
    protocol = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
    if protocol in ("TCP", "UDP", "SCTP"):
        l4 = getattr(flow.l4, protocol)
        return str(l4.source_port), str(l4.destination_port)
    return "", ""


def identity(number: int) -> str:
    name = RESERVED_IDENTITIES.get(number)
    return f"({name})" if name else f"(ID:{number})"


def flow_type(flow: flow_pb2.Flow) -> str:
    """Hubble's TYPE: `http-request`, `dns-response proxy`, `to-endpoint`, a drop reason..."""
    if flow.HasField("l7"):
        l7 = flow.l7
        kind = enum_name(flow_pb2.L7FlowType, l7.type).lower()
        record = l7.WhichOneof("record")
        if record == "dns":
            kind += " " + l7.dns.observation_source
        return {"http": "http", "dns": "dns", "kafka": "kafka"}.get(record, "l7") + "-" + kind
    event, sub_type = flow.event_type.type, flow.event_type.sub_type & 0xFF
    if event == _TRACE:
        return TRACE_POINTS.get(sub_type, str(sub_type))
    if event == _DROP:
        return DROP_REASONS.get(sub_type, f"{sub_type}, 0")
    if event == _POLICY_VERDICT:
        return (f"policy-verdict:{_POLICY_MATCH.get(flow.policy_match_type, 'unknown')} "
                f"{enum_name(flow_pb2.TrafficDirection, flow.traffic_direction)}")
    if event == _CAPTURE:
        return enum_name(flow_pb2.DebugCapturePoint, flow.debug_capture_point)
    if event == _TRACE_SOCK:
        return _SOCK_XLATE.get(flow.sock_xlate_point, enum_name(flow_pb2.SocketTranslationPoint,
                                                                 flow.sock_xlate_point))
    return "UNKNOWN"


def verdict_text(flow: flow_pb2.Flow) -> str:
    text = enum_name(flow_pb2.Verdict, flow.verdict)
    if flow.event_type.type == _POLICY_VERDICT:
        if flow.verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED):
            return "ALLOWED"
        if flow.verdict in (flow_pb2.DROPPED, flow_pb2.ERROR):
            return "DENIED"
        if flow.verdict == flow_pb2.AUDIT:
            return "AUDITED"
    return text


def summary_text(flow: flow_pb2.Flow) -> str:
    """The flow's Summary as Cilium wrote it (`HTTP/1.1 200 2ms (GET http://...)`), after
    its IP trace id and before its authentication type."""
    text = flow.Summary
    if flow.HasField("ip_trace_id") and flow.ip_trace_id.trace_id > 0:
        text = f"IP Trace ID: {flow.ip_trace_id.trace_id}; {text}"
    if flow.auth_type != flow_pb2.DISABLED:
        text += "; Auth: " + enum_name(flow_pb2.AuthType, flow.auth_type)
    return text


def timestamp(ts, tz: tzinfo = timezone.utc) -> str:
    """Go's `Jan _2 15:04:05.000` (StampMilli); `N/A` for none or one out of range."""
    if ts is None or not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        return "N/A"
    when = (_EPOCH + timedelta(seconds=ts.seconds)).astimezone(tz)
    return (f"{_MONTHS[when.month - 1]} {when.day:2d} {when.hour:02d}:{when.minute:02d}:{when.second:02d}"
            f".{ts.nanos // 1_000_000:03d}")


def enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def join_with_cut_off(items: list[str], separator: str, target: int) -> str:
    """Joined, leaving out those past `target` characters (at least one is kept), with
    ` (and N more)`."""
    length, end = 0, len(items)
    for index, item in enumerate(items):
        length += len(item) + len(separator)
        if length > target and index > 0:
            end = index
            break
    joined = separator.join(items[:end])
    return joined if end == len(items) else f"{joined} (and {len(items) - end} more)"


def json_line(message) -> str:
    """A message as `hubble observe -o jsonpb` writes it: proto3 JSON with proto field
    names, fields in declaration order, compact, HTML characters escaped as Go's
    json.Encoder does, one line."""
    data = _declaration_order(message, json_format.MessageToDict(message, preserving_proto_field_name=True))
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_GO_JSON_ESCAPES) + "\n"


def _declaration_order(message, data):
    """`data` (the JSON mapping of `message`) with its keys in the .proto's order, as Go's
    protojson writes them (Python's follows field numbers)."""
    if not isinstance(data, dict) or message.DESCRIPTOR.full_name.startswith("google.protobuf."):
        return data
    ordered = {}
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            sub = getattr(message, field.name)
            value = ([_declaration_order(m, v) for m, v in zip(sub, value)] if field.is_repeated
                     else _declaration_order(sub, value))
        ordered[field.name] = value
    for key, value in data.items():
        ordered.setdefault(key, value)
    return ordered


def tabulate(rows: list[list[str]], min_width: int = 2, padding: int = 3) -> str:
    """Rows as Go's tabwriter (min width 2, padding 3, spaces) aligns them: every cell but
    a row's last is a column cell, padded to its column's widest plus `padding`; a column
    spans consecutive rows that have it."""
    out: list[str] = []
    widths: list[int] = []

    def write(first: int, end: int) -> None:
        for cells in rows[first:end]:
            out.append("".join(cell + " " * (widths[j] - len(cell)) if j < len(widths) else cell
                               for j, cell in enumerate(cells)) + "\n")

    def columns(first: int, end: int) -> None:
        column, this = len(widths), first
        while this < end:
            if column >= len(rows[this]) - 1:
                this += 1
                continue
            write(first, this)
            first, width = this, min_width
            while this < end and column < len(rows[this]) - 1:
                width = max(width, len(rows[this][column]) + padding)
                this += 1
            widths.append(width)
            columns(first, this)
            widths.pop()
            first = this
        write(first, end)

    columns(0, len(rows))
    return "".join(out)
