"""Hubble's flow filters, exactly: a GetFlowsRequest's whitelist and blacklist as one test
of a decoded flow.

Values within one FlowFilter field are OR'ed, the fields of one filter AND'ed, the
whitelist's filters OR'ed, then whatever a blacklist filter matches is removed (Cilium's
pkg/hubble/filters). A filter this build cannot honour is refused with FilterError naming
its field, never silently widened. `pushdown` turns the selective parts into SQL that
finds a superset of the same flows; this module is the final word on each flow.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urlsplit

try:  # RE2, as Hubble (Go's regexp) and ClickHouse's match(): linear time, same syntax
    import re2 as _regex
except ImportError:  # pragma: no cover - google-re2 is a dependency
    _regex = re

from ..api.flow import flow_pb2

L7_EVENT_TYPE = 129  # Cilium's MessageTypeAccessLog: every flow the store holds

Flow = flow_pb2.Flow
Test = Callable[[Flow], bool]


class FilterError(ValueError):
    """A filter that cannot be honoured; the message starts with the field's name."""


def compile_request(whitelist, blacklist) -> Test:
    """One test for the flows a request asks for."""
    allow = [compile_filter(f, "whitelist") for f in whitelist]
    deny = [compile_filter(f, "blacklist") for f in blacklist]

    def wanted(flow: Flow) -> bool:
        if allow and not any(test(flow) for test in allow):
            return False
        return not any(test(flow) for test in deny)
    return wanted


def compile_filter(flow_filter: flow_pb2.FlowFilter, where: str = "whitelist") -> Test:
    """The AND of every field set in one FlowFilter."""
    if flow_filter.experimental.cel_expression:
        raise FilterError(f"{where}.experimental.cel_expression: CEL expressions are not supported by this "
                          "server; use the typed filter fields")
    tests = []
    for field, values in flow_filter.ListFields():
        build = _FIELDS.get(field.name)
        if build is None:  # pragma: no cover - every FlowFilter field has a builder
            raise FilterError(f"{where}.{field.name}: not supported by this server")
        if field.name == "experimental":
            continue
        try:
            tests.append(build(list(values)))
        except FilterError as err:
            raise FilterError(f"{where}.{field.name}: {err}") from None
    if flow_filter.http_status_code or flow_filter.http_method or flow_filter.http_path or flow_filter.http_url \
            or flow_filter.http_header:
        if flow_filter.event_type and not any(t.type == L7_EVENT_TYPE for t in flow_filter.event_type):
            raise FilterError(f"{where}.event_type: filtering by HTTP fields requires the event type filter to "
                              "match only 'l7' events (129)")

    def all_match(flow: Flow) -> bool:
        return all(test(flow) for test in tests)
    return all_match


# --- endpoints -------------------------------------------------------------------------

def parse_namespaced_name(value: str) -> tuple[str, str]:
    """`ns/prefix` -> (ns, prefix); a bare name is in namespace default; an empty namespace
    (`/prefix`) or prefix (`ns/`) matches any (Cilium's k8s.ParseNamespaceName)."""
    if not value:
        raise FilterError("a name must not be empty")
    parts = value.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    return "default", value


def _namespaced(get: Callable[[Flow], tuple[str, str]]):
    def build(values: list[str]) -> Test:
        wanted = [parse_namespaced_name(v) for v in values]

        def test(flow: Flow) -> bool:
            namespace, name = get(flow)
            if not namespace and not name:
                return False
            return any((not ns or namespace == ns) and name.startswith(prefix) for ns, prefix in wanted)
        return test
    return build


def _ips(get: Callable[[Flow], str]):
    def build(values: list[str]) -> Test:
        addresses, networks = set(), []
        for value in values:
            try:
                if "/" in value:
                    networks.append(ipaddress.ip_network(value, strict=False))
                else:
                    ipaddress.ip_address(value)
                    addresses.add(value)  # Hubble compares the text
            except ValueError:
                raise FilterError(f"{value!r} is no IP address or CIDR") from None

        def test(flow: Flow) -> bool:
            text = get(flow)
            if not text:
                return False
            if text in addresses:
                return True
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                return False
            return any(ip.version == net.version and ip in net for net in networks)
        return test
    return build


_FQDN_LEGAL = re.compile(r"[-_0-9a-z.*]+")
_ANY_NAME = "[-.0-9a-z]*"  # what * stands for in Hubble's FQDN and node name patterns


def _fqdn_regex(pattern: str) -> str:
    pattern = pattern.strip().removesuffix(".").lower()
    if not pattern or pattern.endswith(".") or not _FQDN_LEGAL.fullmatch(pattern):
        raise FilterError(f"{pattern!r} is no name pattern (letters, digits, - _ . and *)")
    return pattern.replace(".", r"\.").replace("*", _ANY_NAME)


def _fqdns(get: Callable[[Flow], list[str]]):
    def build(values: list[str]) -> Test:
        pattern = re.compile("(?:" + "|".join(_fqdn_regex(v) for v in values) + ")")

        def test(flow: Flow) -> bool:
            return any(pattern.fullmatch(name) for name in get(flow))
        return test
    return build


def _workloads(get: Callable[[Flow], list]):
    def build(values: list) -> Test:
        def test(flow: Flow) -> bool:
            return any((not w.name or w.name == have.name) and (not w.kind or w.kind == have.kind)
                       for have in get(flow) for w in values)
        return test
    return build


def _labels(get: Callable[[Flow], list[str]]):
    def build(values: list[str]) -> Test:
        selectors = [LabelSelector.parse(v) for v in values]

        def test(flow: Flow) -> bool:
            labels = _parse_labels(get(flow))
            return any(s.matches(labels) for s in selectors)
        return test
    return build


def _in_set(get: Callable[[Flow], object], convert=lambda v: v):
    def build(values: list) -> Test:
        wanted = {convert(v) for v in values}
        return lambda flow: get(flow) in wanted
    return build


# --- labels: Kubernetes selector syntax with Cilium's source prefixes ---------------------

def _parse_labels(labels) -> list[tuple[str, str, str]]:
    """Cilium labels `source:key=value` -> (source, key, value)."""
    parsed = []
    for label in labels:
        source, colon, rest = label.partition(":")
        if not colon:
            source, rest = "unspec", label
        key, _, value = rest.partition("=")
        parsed.append((source, key, value))
    return parsed


_ANY_SOURCE = ("", "any", "unspec")  # a selector key with no source, or these, matches every source
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_TOKEN = re.compile(r"\s*(==|!=|=|!|<|>|\(|\)|,|[^\s,()=!<>]+)")


@dataclass(frozen=True)
class Requirement:
    source: str
    key: str
    operator: str  # exists, !, =, !=, in, notin, >, <
    values: tuple[str, ...] = ()

    def matches(self, labels: list[tuple[str, str, str]]) -> bool:
        found = [v for s, k, v in labels if k == self.key and (self.source in _ANY_SOURCE or s == self.source)]
        if self.operator == "exists":
            return bool(found)
        if self.operator == "!":
            return not found
        if self.operator in ("=", "in"):
            return any(v in self.values for v in found)
        if self.operator in (">", "<"):
            bound = int(self.values[0])
            return any(v.lstrip("-").isdigit() and (int(v) > bound if self.operator == ">" else int(v) < bound)
                       for v in found)
        # != and notin also match a label that is absent (Kubernetes' semantics)
        return not any(v in self.values for v in found)


class LabelSelector:
    """A Kubernetes label selector (`app=x,tier in (a,b),!canary,replicas>1`) over Cilium
    labels, parsed as Kubernetes parses one; a key may name its source (`k8s:app=x`), else
    (or with `any:`) a label of any source matches."""

    def __init__(self, requirements: list[Requirement]):
        self.requirements = requirements

    @classmethod
    def parse(cls, text: str) -> "LabelSelector":
        tokens = _TOKEN.findall(text.strip())
        if "".join(tokens) != "".join(text.split()) or not tokens:
            raise FilterError(f"{text!r} is no label selector")
        requirements, index = [], 0

        def take() -> str:
            nonlocal index
            if index >= len(tokens):
                raise FilterError(f"{text!r} is no label selector: it ends too soon")
            index += 1
            return tokens[index - 1]

        while True:
            token = take()
            if token == "!":
                requirements.append(cls._requirement(text, take(), "!"))
            else:
                nxt = tokens[index] if index < len(tokens) else ","
                if nxt == ",":
                    requirements.append(cls._requirement(text, token, "exists"))
                elif nxt in ("=", "==", "!="):
                    take()
                    value = tokens[index] if index < len(tokens) and tokens[index] != "," else ""
                    if value:
                        take()
                    requirements.append(cls._requirement(text, token, "!=" if nxt == "!=" else "=", (value,)))
                elif nxt in ("in", "notin"):
                    take()
                    if take() != "(":
                        raise FilterError(f"{text!r} is no label selector: {nxt} needs ( values )")
                    values = []
                    while True:
                        value = take()
                        if value in (",", ")"):
                            values.append("")
                        else:
                            values.append(value)
                            value = take()
                        if value == ")":
                            break
                        if value != ",":
                            raise FilterError(f"{text!r} is no label selector: values are separated by commas")
                    requirements.append(cls._requirement(text, token, nxt, tuple(values)))
                elif nxt in (">", "<"):
                    take()
                    bound = take()
                    if not bound.lstrip("-").isdigit():
                        raise FilterError(f"{text!r} is no label selector: {nxt} needs an integer")
                    requirements.append(cls._requirement(text, token, nxt, (bound,)))
                else:
                    raise FilterError(f"{text!r} is no label selector at {nxt!r}")
            if index == len(tokens):
                return cls(requirements)
            if take() != "," or index == len(tokens):
                raise FilterError(f"{text!r} is no label selector: requirements are separated by commas")

    @staticmethod
    def _requirement(text: str, key: str, operator: str, values: tuple[str, ...] = ()) -> Requirement:
        source, colon, name = key.partition(":")
        if not colon:
            source, name = "", key
        # Cilium hands Kubernetes' parser `source.key` (no source: `any.key`), which checks it.
        prefix, slash, last = f"{source or 'any'}.{name}".rpartition("/")
        if (slash and not (len(prefix) <= 253 and _SUBDOMAIN.fullmatch(prefix))) or len(last) > 63 \
                or not _NAME.fullmatch(last):
            raise FilterError(f"{text!r}: {key!r} is no label key")
        for value in values if operator not in (">", "<") else ():
            if value and (len(value) > 63 or not _NAME.fullmatch(value)):
                raise FilterError(f"{text!r}: {value!r} is no label value")
        return Requirement(source, name, operator, values)

    def matches(self, labels: list[tuple[str, str, str]]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


# --- L4 and L7 ---------------------------------------------------------------------------

def _l4_ports(flow: Flow) -> tuple[int, int] | None:
    l4 = flow.l4
    for name in ("TCP", "UDP", "SCTP"):
        if l4.HasField(name):
            proto = getattr(l4, name)
            return proto.source_port, proto.destination_port
    return None


def _ports(side: int):
    def build(values: list[str]) -> Test:
        wanted = set()
        for value in values:
            if not value.isdigit() or int(value) > 65535:
                raise FilterError(f"{value!r} is no port (0 to 65535)")
            wanted.add(int(value))

        def test(flow: Flow) -> bool:
            ports = _l4_ports(flow)
            return ports is not None and ports[side] in wanted
        return test
    return build


_L4_PROTOCOLS = {"tcp": ("TCP",), "udp": ("UDP",), "sctp": ("SCTP",), "icmp": ("ICMPv4", "ICMPv6"),
                 "icmpv4": ("ICMPv4",), "icmpv6": ("ICMPv6",), "vrrp": ("VRRP",), "igmp": ("IGMP",)}
_L7_PROTOCOLS = {"http": "http", "dns": "dns", "kafka": "kafka"}


def _protocols(values: list[str]) -> Test:
    l4, l7 = set(), set()
    for value in values:
        name = value.lower()
        if name in _L4_PROTOCOLS:
            l4.update(_L4_PROTOCOLS[name])
        elif name in _L7_PROTOCOLS:
            l7.add(_L7_PROTOCOLS[name])
        else:
            raise FilterError(f"unknown protocol {value!r}")

    def test(flow: Flow) -> bool:
        if any(flow.l4.HasField(p) for p in l4):
            return True
        return bool(l7) and flow.l7.WhichOneof("record") in l7
    return test


_STATUS_FULL = re.compile(r"[1-5][0-9][0-9]")
_STATUS_PREFIX = re.compile(r"[1-5][0-9]?\+")


def _status_codes(values: list[str]) -> Test:
    full, prefixes = set(), []
    for value in values:
        if _STATUS_FULL.fullmatch(value):
            full.add(value)
        elif _STATUS_PREFIX.fullmatch(value):
            prefixes.append(value[:-1])
        else:
            raise FilterError(f"{value!r} is no status code (NNN, N+ or NN+)")

    def test(flow: Flow) -> bool:
        code = flow.l7.http.code if flow.l7.HasField("http") else 0
        if code == 0:  # a request, or no HTTP record
            return False
        text = f"{code:03d}"
        return text in full or any(text.startswith(p) for p in prefixes)
    return test


def _regexes(get: Callable[[Flow], str | None]):
    def build(values: list[str]) -> Test:
        try:
            patterns = [_regex.compile(v) for v in values]
        except Exception as err:
            raise FilterError(f"not a regular expression (RE2): {err}") from None

        def test(flow: Flow) -> bool:
            text = get(flow)
            return text is not None and any(p.search(text) for p in patterns)
        return test
    return build


def _http(flow: Flow):
    return flow.l7.http if flow.l7.HasField("http") else None


def _http_url(flow: Flow) -> str | None:
    http = _http(flow)
    return http.url if http is not None else None


def _http_path(flow: Flow) -> str | None:
    http = _http(flow)
    if http is None:
        return None
    try:
        return unquote(urlsplit(http.url).path)
    except ValueError:
        return None


def _dns_query(flow: Flow) -> str | None:
    return flow.l7.dns.query if flow.l7.HasField("dns") else None


def _http_methods(values: list[str]) -> Test:
    def test(flow: Flow) -> bool:
        http = _http(flow)
        return http is not None and bool(http.method) and any(equal_fold(http.method, v) for v in values)
    return test


def equal_fold(a: str, b: str) -> bool:
    """Go's strings.EqualFold: equal under simple Unicode case folding (ſ is s, K is k)."""
    return len(a) == len(b) and all(x == y or x.lower() == y.lower() or x.upper() == y.upper()
                                    for x, y in zip(a, b))


def _http_headers(values: list) -> Test:
    wanted = {(h.key, h.value) for h in values}

    def test(flow: Flow) -> bool:
        http = _http(flow)
        return http is not None and any((h.key, h.value) in wanted for h in http.headers)
    return test


def _reply(values: list[bool]) -> Test:
    wanted = set(values)

    def test(flow: Flow) -> bool:
        if not flow.HasField("is_reply"):  # unknown: only a dropped flow counts as no reply
            return flow.verdict == flow_pb2.DROPPED and False in wanted
        return flow.is_reply.value in wanted
    return test


def _event_types(values: list) -> Test:
    def test(flow: Flow) -> bool:
        if not flow.HasField("event_type"):
            return False
        have = flow.event_type
        return any((t.type == 0 or have.type == t.type) and (not t.match_sub_type or have.sub_type == t.sub_type)
                   for t in values)
    return test


def _identities(side: str):
    def build(values: list[int]) -> Test:
        wanted = set(values)
        return lambda flow: flow.HasField(side) and getattr(flow, side).identity in wanted
    return build


def _drop_reasons(values: list[int]) -> Test:
    wanted = set(values)
    return lambda flow: flow.verdict == flow_pb2.DROPPED and flow.drop_reason_desc in wanted


def _cluster_names(get: Callable[[Flow], str]):
    def build(values: list[str]) -> Test:
        if "" in values:
            raise FilterError("a name must not be empty")
        wanted = set(values)
        return lambda flow: get(flow) in wanted
    return build


def _tcp_flags(values: list) -> Test:
    wanted = [[f.name for f, v in flags.ListFields() if v] for flags in values]

    def test(flow: Flow) -> bool:
        if not flow.l4.HasField("TCP"):
            return False
        have = flow.l4.TCP.flags
        return any(all(getattr(have, name) for name in names) for names in wanted)
    return test


_DEFAULT_CLUSTER = "default"  # Cilium's cluster-name when none is set


def _node_regex(pattern: str) -> str:
    """`name*` or `cluster/name*`: a pattern without a cluster matches any cluster."""
    if not pattern:
        raise FilterError("an empty node name pattern")
    parts = pattern.split("/")
    if len(parts) > 2:
        raise FilterError(f"{pattern!r}: too many slashes")
    cluster, node = parts if len(parts) == 2 else ("", parts[0])
    return (_fqdn_regex(cluster) if cluster else _ANY_NAME) + "/" + (_fqdn_regex(node) if node else _ANY_NAME)


def _node_names(values: list[str]) -> Test:
    pattern = re.compile("(?:" + "|".join(_node_regex(v) for v in values) + ")")

    def test(flow: Flow) -> bool:
        name = flow.node_name
        if not name:
            return False
        return bool(pattern.fullmatch(name if "/" in name else f"{_DEFAULT_CLUSTER}/{name}"))
    return test


def _interfaces(values: list) -> Test:
    def test(flow: Flow) -> bool:
        have = flow.interface
        return any((not i.name or i.name == have.name) and (not i.index or i.index == have.index) for i in values)
    return test


_FIELDS: dict[str, Callable[[list], Test]] = {
    "uuid": _in_set(lambda f: f.uuid),
    "source_ip": _ips(lambda f: f.IP.source),
    "source_ip_xlated": _ips(lambda f: f.IP.source_xlated),
    "destination_ip": _ips(lambda f: f.IP.destination),
    "source_pod": _namespaced(lambda f: (f.source.namespace, f.source.pod_name)),
    "destination_pod": _namespaced(lambda f: (f.destination.namespace, f.destination.pod_name)),
    "source_service": _namespaced(lambda f: (f.source_service.namespace, f.source_service.name)),
    "destination_service": _namespaced(lambda f: (f.destination_service.namespace, f.destination_service.name)),
    "source_fqdn": _fqdns(lambda f: f.source_names),
    "destination_fqdn": _fqdns(lambda f: f.destination_names),
    "source_label": _labels(lambda f: f.source.labels),
    "destination_label": _labels(lambda f: f.destination.labels),
    "node_labels": _labels(lambda f: f.node_labels),
    "source_workload": _workloads(lambda f: f.source.workloads),
    "destination_workload": _workloads(lambda f: f.destination.workloads),
    "source_cluster_name": _cluster_names(lambda f: f.source.cluster_name),
    "destination_cluster_name": _cluster_names(lambda f: f.destination.cluster_name),
    "source_identity": _identities("source"),
    "destination_identity": _identities("destination"),
    "traffic_direction": _in_set(lambda f: f.traffic_direction),
    "verdict": _in_set(lambda f: f.verdict),
    "drop_reason_desc": _drop_reasons,
    "interface": _interfaces,
    "event_type": _event_types,
    "http_status_code": _status_codes,
    "http_method": _http_methods,
    "http_path": _regexes(_http_path),
    "http_url": _regexes(_http_url),
    "http_header": _http_headers,
    "dns_query": _regexes(_dns_query),
    "protocol": _protocols,
    "source_port": _ports(0),
    "destination_port": _ports(1),
    "reply": _reply,
    "tcp_flags": _tcp_flags,
    "node_name": _node_names,
    "ip_version": _in_set(lambda f: f.IP.ipVersion),
    "trace_id": _in_set(lambda f: f.trace_context.parent.trace_id),
    "ip_trace_id": _in_set(lambda f: f.ip_trace_id.trace_id),
    "encrypted": _in_set(lambda f: f.IP.encrypted),
    "experimental": lambda values: (lambda flow: True),
}
