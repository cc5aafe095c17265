"""A model of how the real ``hubble observe`` CLI turns its flags into a GetFlowsRequest.

Written from the source of cilium/hubble tag v1.19.4 (commit
39037bdd6cb6acb02a241dde33b5ffcf0e8471e2; the same files at HEAD 75d3a68c), which vendors
github.com/cilium/cilium v1.19.4, where the CLI now lives:

- ``vendor/github.com/cilium/cilium/hubble/cmd/observe/observe.go``: selector flags
  (--all, --last, --first, -f, --since, --until), -o, --field-mask,
  --use-default-field-masks (default true since v1.19; v1.18 and older had
  --experimental-field-mask / --experimental-use-default-field-masks, default false, and
  put the mask in ``experimental.field_mask``; those flags are unknown to this model).
- ``.../hubble/cmd/observe/flows.go``: the filter flags, ``handleFlowArgs`` (output formats,
  default field mask, trailing --not) and ``getFlowsRequest`` (conflicts, since/until,
  number).
- ``.../hubble/cmd/observe/flows_filter.go``: ``filterTracker`` (left/right filters,
  namespace modifiers, conflicts) and ``flowFilter.set`` (one case per flag).
- ``.../hubble/cmd/observe/workload.go``, ``identity.go``; ``.../hubble/pkg/defaults/
  defaults.go`` (FlowPrintCount 20, FieldMask); ``.../hubble/pkg/time/time.go``
  (FromString: a Go duration back from now, else one of the listed layouts);
  ``vendor/github.com/spf13/pflag/flag.go`` (argument syntax);
  ``.../pkg/monitor/api/types.go`` (event type names); ``.../pkg/identity/
  numericidentity.go`` (reserved identity names).

Only the request is modelled: flags that change nothing in it (server, TLS, printing) are
accepted and ignored; anything that makes the real CLI exit with an error, or not send a
request at all (--print-raw-filters, --input-file), raises ValueError. Positional words
``hubble``, ``observe`` and ``flows`` at the start are skipped (``observe flows`` is the same
command); any other positional argument raises ValueError (cobra would ignore it).
"""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

from google.protobuf import json_format, timestamp_pb2

from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2

__all__ = ["DEFAULT_FIELD_MASK", "FLOW_PRINT_COUNT", "MAX_UINT64", "SUPPORTED_FLAGS", "build_request"]

FLOW_PRINT_COUNT = 20  # hubble/pkg/defaults: FlowPrintCount
MAX_UINT64 = 2**64 - 1  # flows.go: "all is an alias for last=uint64_max"

# hubble/pkg/defaults/defaults.go FieldMask, in source order (v1.19.4).
DEFAULT_FIELD_MASK = (
    "time", "verdict", "ethernet", "IP", "l4",
    "source.identity", "source.namespace", "source.pod_name",
    "destination.identity", "destination.namespace", "destination.pod_name",
    "Type", "node_name", "l7", "event_type", "source_service", "destination_service",
    "is_reply", "Summary", "ip_trace_id",
)

# pkg/monitor/api/types.go MessageTypeNames and TraceObservationPoints.
MESSAGE_TYPE_NAMES = {
    "drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5,
    "trace-sock": 7, "l7": 129, "agent": 130,
}
MESSAGE_TYPE_TRACE = 4
MESSAGE_TYPE_AGENT = 130
TRACE_OBSERVATION_POINTS = {
    0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
    5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack",
    9: "from-overlay", 10: "from-network", 11: "to-network", 12: "from-crypto",
    13: "to-crypto",
}
# flows_filter.go agentEventSubtypes (pkg/monitor/api AgentNotification values).
AGENT_EVENT_SUBTYPES = {
    "unspecified": 0, "message": 1, "agent-started": 2,
    "endpoint-regenerate-success": 3, "endpoint-regenerate-failure": 4,
    "policy-updated": 5, "policy-deleted": 6, "endpoint-created": 7,
    "endpoint-deleted": 8, "ipcache-upserted": 9, "ipcache-deleted": 10,
}
# pkg/identity/numericidentity.go reservedIdentities (the names parseIdentity accepts).
RESERVED_IDENTITIES = {
    "host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5, "remote-node": 6,
    "kube-apiserver": 7, "ingress": 8, "world-ipv4": 9, "world-ipv6": 10,
    "overlay-to-encrypt": 11,
}

# flows_filter.go newFlowFilter().conflicts, in source order.
CONFLICTS = (
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace", "from-all-namespaces", "all-namespaces"),
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"),
    ("to-pod", "namespace", "all-namespaces"),
    ("from-pod", "namespace", "all-namespaces"),
    ("to-service", "namespace", "all-namespaces"),
    ("from-service", "namespace", "all-namespaces"),
    ("snat-ip",), ("label", "from-label"), ("label", "to-label"),
    ("service", "from-service"), ("service", "to-service"),
    ("verdict",), ("drop-reason-desc",), ("type",), ("http-status",), ("http-method",),
    ("http-path",), ("http-url",), ("http-header",), ("protocol",),
    ("port", "to-port"), ("port", "from-port"),
    ("identity", "to-identity"), ("identity", "from-identity"),
    ("workload", "to-workload"), ("workload", "from-workload"),
    ("node-label",), ("tcp-flags",), ("uuid",), ("traffic-direction",), ("cel-expression",),
    ("encrypted", "unencrypted"),
)

# Filter flags (flows.go filterFlags), name -> (shorthand, NoOptDefVal).
FILTER_FLAGS = {
    "not": (None, "true"), "uuid": (None, None), "node-name": (None, None),
    "node-label": (None, None), "from-cluster": (None, None), "cluster": (None, None),
    "to-cluster": (None, None), "protocol": (None, None), "tcp-flags": (None, None),
    "type": ("t", None), "verdict": (None, None), "drop-reason-desc": (None, None),
    "http-status": (None, None), "http-method": (None, None), "http-path": (None, None),
    "http-url": (None, None), "http-header": (None, None), "trace-id": (None, None),
    "ip-trace-id": (None, None), "from-fqdn": (None, None), "fqdn": (None, None),
    "to-fqdn": (None, None), "from-ip": (None, None), "snat-ip": (None, None),
    "ip": (None, None), "to-ip": (None, None), "ipv4": ("4", "v4"), "ipv6": ("6", "v6"),
    "ip-version": (None, None), "from-pod": (None, None), "pod": (None, None),
    "to-pod": (None, None), "from-namespace": (None, None), "namespace": ("n", None),
    "to-namespace": (None, None), "from-all-namespaces": (None, "true"),
    "all-namespaces": ("A", "true"), "to-all-namespaces": (None, "true"),
    "from-label": (None, None), "label": ("l", None), "to-label": (None, None),
    "from-service": (None, None), "service": (None, None), "to-service": (None, None),
    "from-port": (None, None), "port": (None, None), "to-port": (None, None),
    "from-workload": (None, None), "workload": (None, None), "to-workload": (None, None),
    "from-identity": (None, None), "identity": (None, None), "to-identity": (None, None),
    "traffic-direction": (None, None), "cel-expression": (None, None),
    "interface": (None, None), "encrypted": (None, "true"), "unencrypted": (None, "true"),
}

# Other flags of the flows command: name -> (shorthand, kind). kind is bool, uint64,
# string, slice (pflag StringSlice: CSV, appended), array (StringArray), uint16, duration.
OTHER_FLAGS = {
    # observe.go selectorFlags
    "all": (None, "bool"), "last": (None, "uint64"), "first": (None, "uint64"),
    "follow": ("f", "bool"), "since": (None, "string"), "until": (None, "string"),
    # observe.go formattingFlags, flows.go flowsFormattingFlags
    "output": ("o", "string"), "print-node-name": (None, "bool"),
    "print-policy-names": (None, "bool"), "time-format": (None, "string"),
    "numeric": (None, "bool"), "ip-translation": (None, "bool"), "color": (None, "string"),
    # observe.go otherFlags
    "silent-errors": ("s", "bool"), "print-raw-filters": (None, "bool"),
    "input-file": (None, "string"), "field-mask": (None, "slice"),
    "use-default-field-masks": (None, "bool"),
    # flows.go rawFilterFlags
    "allowlist": (None, "array"), "denylist": (None, "array"),
    # hubble/cmd/common/config/flags.go GlobalFlags and ServerFlags
    "config": (None, "string"), "debug": ("D", "bool"), "server": (None, "string"),
    "timeout": (None, "duration"), "request-timeout": (None, "duration"),
    "tls": (None, "bool"), "tls-allow-insecure": (None, "bool"),
    "tls-ca-cert-files": (None, "slice"), "tls-client-cert-file": (None, "string"),
    "tls-client-key-file": (None, "string"), "tls-server-name": (None, "string"),
    "basic-auth-username": (None, "string"), "basic-auth-password": (None, "string"),
    "port-forward": ("P", "bool"), "port-forward-port": (None, "uint16"),
    "kube-context": (None, "string"), "kube-namespace": (None, "string"),
    "kubeconfig": (None, "string"),
}

SUPPORTED_FLAGS = tuple(sorted(FILTER_FLAGS)) + tuple(sorted(OTHER_FLAGS))

_SHORTHANDS = {s: n for n, (s, _) in {**FILTER_FLAGS, **OTHER_FLAGS}.items() if s}


# --- Go parsing helpers -------------------------------------------------------------------

def _go_parse_bool(s: str) -> bool:
    # strconv.ParseBool
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"invalid boolean {s!r}")


def _go_parse_uint(s: str, base: int, bits: int) -> int:
    # strconv.ParseUint; base 0 takes 0x/0o/0b prefixes, a leading 0 for octal, and
    # underscores between digits.
    if not s or s[0] in "+-":
        raise ValueError(f"invalid syntax {s!r}")
    body = s
    if base == 0:
        low = s.lower()
        if low.startswith(("0x", "0o", "0b")):
            base, body = {"x": 16, "o": 8, "b": 2}[low[1]], s[2:]
        elif len(s) > 1 and s[0] == "0":
            base, body = 8, s[1:]
        else:
            base = 10
        if "_" in body and re.fullmatch(r"[0-9a-zA-Z]+(?:_[0-9a-zA-Z]+)*", body):
            body = body.replace("_", "")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    if not body or not all(c in digits for c in body.lower()):
        raise ValueError(f"invalid syntax {s!r}")
    v = int(body, base)
    if v >= 2**bits:
        raise ValueError(f"value out of range {s!r}")
    return v


def _int32(v: int) -> int:
    # Go int32(uint64) conversion: wraps.
    v &= 0xFFFFFFFF
    return v - 2**32 if v >= 2**31 else v


_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DURATION_RE = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]+)")


def go_parse_duration(s: str) -> int:
    """time.ParseDuration in nanoseconds: units ns, us, µs, ms, s, m, h (no d, no w)."""
    orig, neg = s, False
    if s and s[0] in "+-":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {orig!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _DURATION_RE.match(s, pos)
        if not m or (m.group(1) == "" and not m.group(2)):
            raise ValueError(f"invalid duration {orig!r}")
        unit = _DURATION_UNITS.get(m.group(3))
        if unit is None:
            raise ValueError(f"unknown unit {m.group(3)!r} in duration {orig!r}")
        value = Fraction(int(m.group(1) or "0"))
        if m.group(2):
            value += Fraction(int(m.group(2)), 10 ** len(m.group(2)))
        total += value * unit
        pos = m.end()
    ns = int(total)  # Go truncates the fraction toward zero
    if ns > 2**63 - 1 + (1 if neg else 0):
        raise ValueError(f"invalid duration {orig!r}")
    return -ns if neg else ns


_TIME_LAYOUTS = [
    # hubble/pkg/time layouts: YearMonthDay, YearMonthDayHour, YearMonthDayHourMinute,
    # RFC3339 (Go also takes a fraction after the seconds), RFC3339Nano, RFC3339Milli,
    # RFC3339Micro (all covered by the RFC3339 pattern), RFC1123Z.
    re.compile(r"(?P<Y>\d{4})-(?P<M>\d{2})-(?P<D>\d{2})"),
    re.compile(r"(?P<Y>\d{4})-(?P<M>\d{2})-(?P<D>\d{2})T(?P<h>\d{2})(?P<z>Z|[+-]\d{2}:\d{2})"),
    re.compile(r"(?P<Y>\d{4})-(?P<M>\d{2})-(?P<D>\d{2})T(?P<h>\d{2}):(?P<m>\d{2})(?P<z>Z|[+-]\d{2}:\d{2})"),
    re.compile(r"(?P<Y>\d{4})-(?P<M>\d{2})-(?P<D>\d{2})T(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
               r"(?:\.(?P<f>\d{1,9}))?(?P<z>Z|[+-]\d{2}:\d{2})"),
    re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<D>\d{2}) (?P<Mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
               r" (?P<Y>\d{4}) (?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))? (?P<z>[+-]\d{4})"),
]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _to_ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # a naive `now` is taken as UTC
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def hubble_time_from_string(value: str, now: datetime) -> int:
    """hubble/pkg/time.FromString, as nanoseconds since the epoch."""
    try:
        return _to_ns(now) - go_parse_duration(value)
    except ValueError:
        pass
    for layout in _TIME_LAYOUTS:
        m = layout.fullmatch(value)
        if not m:
            continue
        g = m.groupdict()
        month = _MONTHS.index(g["Mon"]) + 1 if g.get("Mon") else int(g["M"])
        z = g.get("z") or "Z"
        if z == "Z":
            tz = UTC
        else:
            z = z.replace(":", "")
            sign = -1 if z[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(z[1:3]), minutes=int(z[3:5])))
        try:
            dt = datetime(int(g["Y"]), month, int(g["D"]), int(g.get("h") or 0),
                          int(g.get("m") or 0), int(g.get("s") or 0), tzinfo=tz)
        except ValueError:
            continue
        frac = g.get("f") or ""
        return _to_ns(dt) + (int(frac.ljust(9, "0")) if frac else 0)
    raise ValueError(f"failed to convert {value} to time")


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    # timestamppb CheckValid: 0001-01-01 .. 9999-12-31
    if not -62135596800 <= seconds <= 253402300799:
        raise ValueError("timestamp out of range")
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# --- filter tracking (flows_filter.go) ----------------------------------------------------

def _ns_from_name(name: str) -> str:
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ""


def _add_namespaces(values: list[str], nss: list[str]) -> list[str]:
    if not nss or not values:
        return values
    out = []
    for v in values:
        if "/" in v:
            out.append(v)
            continue
        out.extend(f"{ns}/{v}" for ns in nss)
    return out


class _Tracker:
    """filterTracker: the result is `left OR right`."""

    def __init__(self):
        self.left = None
        self.right = None
        self.ns: list[str] = []
        self.src_ns: list[str] = []
        self.dst_ns: list[str] = []
        self.changed: list[str] = []

    def add(self, name: str) -> bool:
        if name in self.changed:
            return False
        self.changed.append(name)
        return True

    def apply_left(self, update):
        if self.left is None:
            self.left = flow_pb2.FlowFilter()
        update(self.left)

    def apply_right(self, update):
        if self.right is None:
            self.right = flow_pb2.FlowFilter()
        update(self.right)

    def apply(self, update):
        self.apply_left(update)
        self.apply_right(update)

    def check_conflicts(self):
        for group in CONFLICTS:
            for flag in group:
                if flag in self.changed:
                    for other in group:
                        if other != flag and other in self.changed:
                            raise ValueError(f"filters --{flag} and --{other} cannot be combined")

    def check_namespace_conflicts(self, ff):
        if ff is None:
            return

        def conflicts(nss, names):
            for ns in nss:
                for name in names:
                    nn = _ns_from_name(name)
                    if nn != "" and nn != ns:
                        raise ValueError(f"namespace conflict: {ns!r} does not contain {name!r}")

        def inconsistent(pods, services):
            for pod in pods:
                pod_ns = _ns_from_name(pod)
                if pod_ns == "":
                    continue
                for svc in services:
                    if _ns_from_name(svc) != pod_ns:
                        raise ValueError(f"namespace of service {svc!r} conflict with pod {pod_ns!r}")

        conflicts(self.ns, ff.source_pod)
        conflicts(self.ns, ff.source_service)
        conflicts(self.ns, ff.destination_pod)
        conflicts(self.ns, ff.destination_service)
        conflicts(self.src_ns, ff.source_pod)
        conflicts(self.src_ns, ff.source_service)
        conflicts(self.dst_ns, ff.destination_pod)
        conflicts(self.dst_ns, ff.destination_service)
        inconsistent(ff.source_pod, ff.source_service)
        inconsistent(ff.destination_pod, ff.destination_service)

    @staticmethod
    def _apply_src(nss, ff):
        if not ff.source_pod and not ff.source_service:
            ff.source_pod[:] = [""]
        pods, svcs = _add_namespaces(list(ff.source_pod), nss), _add_namespaces(list(ff.source_service), nss)
        ff.source_pod[:] = pods
        ff.source_service[:] = svcs

    @staticmethod
    def _apply_dst(nss, ff):
        if not ff.destination_pod and not ff.destination_service:
            ff.destination_pod[:] = [""]
        pods, svcs = _add_namespaces(list(ff.destination_pod), nss), _add_namespaces(list(ff.destination_service), nss)
        ff.destination_pod[:] = pods
        ff.destination_service[:] = svcs

    def flow_filters(self) -> list:
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left = self.left if self.left is not None else flow_pb2.FlowFilter()
        right = self.right if self.right is not None else flow_pb2.FlowFilter()
        if self.dst_ns:
            self._apply_dst(self.dst_ns, left)
            self._apply_dst(self.dst_ns, right)
        if self.src_ns:
            self._apply_src(self.src_ns, left)
            self._apply_src(self.src_ns, right)
        if self.ns:
            self._apply_src(self.ns, left)
            self._apply_dst(self.ns, right)
        if left == right:
            return [left]
        return [left, right]


def _parse_tcp_flags(val: str):
    flags = flow_pb2.TCPFlags()
    for f in val.split(","):
        name = f.upper()
        if name not in ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"):
            raise ValueError(f"unknown tcp flag: {f}")
        setattr(flags, name, True)
    return flags


def _ip_version(v: str) -> int:
    v = v.lower()
    if v in ("4", "v4", "ipv4", "ip4"):
        return flow_pb2.IPv4
    if v in ("6", "v6", "ipv6", "ip6"):
        return flow_pb2.IPv6
    return flow_pb2.IP_NOT_USED


def _parse_identity(s: str) -> int:
    if s in RESERVED_IDENTITIES:
        return RESERVED_IDENTITIES[s]
    try:
        return _go_parse_uint(s, 0, 32)
    except ValueError:
        raise ValueError(f"invalid security identity, expected one of "
                         f"{sorted(RESERVED_IDENTITIES, key=RESERVED_IDENTITIES.get)} or a numeric value") from None


def _parse_workload(s: str):
    if s == "":
        return flow_pb2.Workload()
    parts = s.split("/", 1)
    if len(parts) == 1:
        return flow_pb2.Workload(name=parts[0])
    return flow_pb2.Workload(kind=parts[0], name=parts[1])


def _parse_type(val: str):
    tf = flow_pb2.EventTypeFilter()
    s = val.split(":", 1)
    t = MESSAGE_TYPE_NAMES.get(s[0])
    if t is not None:
        tf.type = t
    else:
        # Go shadows `t` here, so a numeric type never enables the named sub-types below.
        try:
            tf.type = _int32(_go_parse_uint(s[0], 10, 32))
        except ValueError:
            raise ValueError(f"unable to parse type '{s[0]}', not a known type name and unable to "
                             f"parse as numeric value") from None
        t = 0
    if len(s) > 1:
        if t == MESSAGE_TYPE_TRACE:
            for k, v in TRACE_OBSERVATION_POINTS.items():
                if s[1] == v:
                    tf.match_sub_type, tf.sub_type = True, k
                    break
        elif t == MESSAGE_TYPE_AGENT and s[1] in AGENT_EVENT_SUBTYPES:
            tf.match_sub_type, tf.sub_type = True, AGENT_EVENT_SUBTYPES[s[1]]
        if not tf.match_sub_type:
            try:
                st = _go_parse_uint(s[1], 10, 32)
            except ValueError:
                raise ValueError(f"unable to parse event sub-type '{s[1]}', not a known sub-type name "
                                 f"and unable to parse as numeric value") from None
            tf.match_sub_type, tf.sub_type = True, _int32(st)
    return tf


def _set_filter(t: _Tracker, name: str, val: str):
    """flowFilter.set(f, name, val, track=true)."""
    wipe = t.add(name)
    t.check_conflicts()

    def app(field, value):
        return lambda ff: getattr(ff, field).append(value)

    def ext(field, msg):
        return lambda ff: getattr(ff, field).add().CopyFrom(msg)

    both_sides = {  # flag -> (left field, right field)
        "fqdn": ("source_fqdn", "destination_fqdn"), "pod": ("source_pod", "destination_pod"),
        "ip": ("source_ip", "destination_ip"), "label": ("source_label", "destination_label"),
        "service": ("source_service", "destination_service"),
        "port": ("source_port", "destination_port"),
        "cluster": ("source_cluster_name", "destination_cluster_name"),
    }
    same_field = {
        "uuid": "uuid", "from-fqdn": "source_fqdn", "to-fqdn": "destination_fqdn",
        "from-pod": "source_pod", "to-pod": "destination_pod", "from-ip": "source_ip",
        "snat-ip": "source_ip_xlated", "to-ip": "destination_ip", "from-label": "source_label",
        "to-label": "destination_label", "from-service": "source_service",
        "to-service": "destination_service", "from-port": "source_port",
        "to-port": "destination_port", "trace-id": "trace_id", "http-status": "http_status_code",
        "http-method": "http_method", "http-path": "http_path", "http-url": "http_url",
        "protocol": "protocol", "node-name": "node_name", "node-label": "node_labels",
        "from-cluster": "source_cluster_name", "to-cluster": "destination_cluster_name",
    }
    if name in both_sides:
        lf, rf = both_sides[name]
        t.apply_left(app(lf, val))
        t.apply_right(app(rf, val))
    elif name in same_field:
        t.apply(app(same_field[name], val))
    elif name == "ipv4":
        t.apply(app("ip_version", flow_pb2.IPv4))
    elif name == "ipv6":
        t.apply(app("ip_version", flow_pb2.IPv6))
    elif name == "ip-version":
        t.apply(app("ip_version", _ip_version(val)))
    elif name == "namespace":
        t.ns.append(val)
    elif name == "from-namespace":
        t.src_ns.append(val)
    elif name == "to-namespace":
        t.dst_ns.append(val)
    elif name == "all-namespaces":
        t.ns.append("")
    elif name == "from-all-namespaces":
        t.src_ns.append("")
    elif name == "to-all-namespaces":
        t.dst_ns.append("")
    elif name == "ip-trace-id":
        if val == "0":
            raise ValueError("invalid --ip-trace-id value; must be greater than 0")
        t.apply(app("ip_trace_id", _go_parse_uint(val, 10, 64)))
    elif name == "verdict":
        if wipe:
            t.apply(lambda ff: ff.ClearField("verdict"))
        if val not in flow_pb2.Verdict.DESCRIPTOR.values_by_name:
            raise ValueError(f"invalid --verdict value: {val}")
        t.apply(app("verdict", flow_pb2.Verdict.Value(val)))
    elif name == "drop-reason-desc":
        if val == "":
            raise ValueError("empty --drop-reason-desc value")
        if val not in flow_pb2.DropReason.DESCRIPTOR.values_by_name:
            raise ValueError(f"invalid --drop-reason-desc value: {val}")
        t.apply(app("drop_reason_desc", flow_pb2.DropReason.Value(val)))
    elif name == "http-header":
        if ":" not in val:
            raise ValueError(f"invalid http-header value {val!r}, expected name:value")
        key, hval = val.split(":", 1)
        t.apply(ext("http_header", flow_pb2.HTTPHeader(key=key, value=hval)))
    elif name == "type":
        if wipe:
            t.apply(lambda ff: ff.ClearField("event_type"))
        t.apply(ext("event_type", _parse_type(val)))
    elif name == "workload":
        w = _parse_workload(val)
        t.apply_left(ext("source_workload", w))
        t.apply_right(ext("destination_workload", w))
    elif name == "from-workload":
        t.apply(ext("source_workload", _parse_workload(val)))
    elif name == "to-workload":
        t.apply(ext("destination_workload", _parse_workload(val)))
    elif name in ("identity", "from-identity", "to-identity"):
        ident = _parse_identity(val)
        if name == "identity":
            t.apply_left(app("source_identity", ident))
            t.apply_right(app("destination_identity", ident))
        elif name == "from-identity":
            t.apply(app("source_identity", ident))
        else:
            t.apply(app("destination_identity", ident))
    elif name == "tcp-flags":
        t.apply(ext("tcp_flags", _parse_tcp_flags(val)))
    elif name == "traffic-direction":
        td = val.lower()
        if td == "ingress":
            t.apply(app("traffic_direction", flow_pb2.INGRESS))
        elif td == "egress":
            t.apply(app("traffic_direction", flow_pb2.EGRESS))
        else:
            raise ValueError(f"{td}: invalid traffic direction, expected ingress or egress")
    elif name == "cel-expression":
        t.apply(lambda ff: ff.experimental.cel_expression.append(val))
    elif name == "interface":
        t.apply(ext("interface", flow_pb2.NetworkInterface(name=val)))
    elif name == "encrypted":
        t.apply(app("encrypted", True))
    elif name == "unencrypted":
        t.apply(app("encrypted", False))
    else:  # pragma: no cover - every FILTER_FLAGS name but "not" is handled above
        raise AssertionError(name)
    t.check_namespace_conflicts(t.left)
    t.check_namespace_conflicts(t.right)


class _FlowFilterFlags:
    """flowFilter: --not sends the next filter flag to the blacklist."""

    def __init__(self):
        self.whitelist: _Tracker | None = None
        self.blacklist: _Tracker | None = None
        self.blacklisting = False

    def set(self, name: str, val: str):
        if name == "not":
            if self.blacklisting:
                raise ValueError("consecutive --not statements")
            self.blacklisting = True
            return
        if self.blacklisting:
            self.blacklisting = False
            if self.blacklist is None:
                self.blacklist = _Tracker()
            _set_filter(self.blacklist, name, val)
            return
        if self.whitelist is None:
            self.whitelist = _Tracker()
        _set_filter(self.whitelist, name, val)


# --- argument parsing (pflag) -------------------------------------------------------------

def _parse_args(argv: list[str]):
    filters = _FlowFilterFlags()
    opts: dict[str, object] = {
        "all": False, "last": 0, "first": 0, "follow": False, "since": "", "until": "",
        "output": "compact", "field-mask": None, "use-default-field-masks": True,
        "allowlist": [], "denylist": [], "print-raw-filters": False, "input-file": "",
    }
    positional: list[str] = []

    def set_flag(name: str, value: str):
        if name in FILTER_FLAGS:
            filters.set(name, value)
            return
        kind = OTHER_FLAGS[name][1]
        if kind == "bool":
            v: object = _go_parse_bool(value)
        elif kind == "uint64":
            v = _go_parse_uint(value, 0, 64)
        elif kind == "uint16":
            v = _go_parse_uint(value, 0, 16)
        elif kind == "duration":
            v = go_parse_duration(value)
        elif kind == "slice":
            row = next(csv.reader([value])) if value else []
            v = row if opts.get(name) is None else list(opts[name]) + row  # type: ignore[arg-type]
        elif kind == "array":
            v = list(opts.get(name) or []) + [value]
        else:
            v = value
        opts[name] = v

    def no_opt_default(name: str):
        if name in FILTER_FLAGS:
            return FILTER_FLAGS[name][1]
        return "true" if OTHER_FLAGS[name][1] == "bool" else None

    args = list(argv)
    # `hubble observe [flows]`: the command words themselves.
    while args and args[0] in ("hubble", "observe", "flows") and not positional:
        args.pop(0)
    while args:
        s = args.pop(0)
        if len(s) < 2 or s[0] != "-":
            positional.append(s)
            continue
        if s == "--":
            positional.extend(args)
            break
        if s.startswith("--"):
            body = s[2:]
            if not body or body[0] in "-=":
                raise ValueError(f"bad flag syntax: {s}")
            name, eq, value = body.partition("=")
            if name in ("experimental-field-mask", "experimental-use-default-field-masks"):
                raise ValueError(f"unknown flag: --{name} (hubble v1.18 and older; v1.19 renamed it "
                                 f"--{name.removeprefix('experimental-')})")
            if name not in FILTER_FLAGS and name not in OTHER_FLAGS:
                raise ValueError(f"unknown flag: --{name}")
            if not eq:
                dflt = no_opt_default(name)
                if dflt is not None:
                    value = dflt
                elif args:
                    value = args.pop(0)
                else:
                    raise ValueError(f"flag needs an argument: --{name}")
            set_flag(name, value)
            continue
        shorts = s[1:]
        rest_args = args  # pflag passes the same remaining args for each shorthand
        consumed = False
        while shorts:
            c, shorts = shorts[0], shorts[1:]
            name = _SHORTHANDS.get(c)
            if name is None:
                raise ValueError(f"unknown shorthand flag: {c!r} in {s}")
            if shorts.startswith("=") and len(shorts) > 1:
                value, shorts = shorts[1:], ""
            elif no_opt_default(name) is not None:
                value = no_opt_default(name)
            elif shorts:
                value, shorts = shorts, ""
            elif rest_args and not consumed:
                value, consumed = rest_args[0], True
            else:
                raise ValueError(f"flag needs an argument: -{c}")
            set_flag(name, value)
        if consumed:
            args.pop(0)
    if positional:
        raise ValueError(f"unexpected arguments: {positional}")
    return filters, opts


def _parse_raw_filters(values: list[str]) -> list:
    # encoding/json into flowpb.FlowFilter; several JSON objects may follow each other.
    out = []
    dec = json.JSONDecoder()
    for text in values:
        pos = 0
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            obj, pos = dec.raw_decode(text, pos)
            out.append(json_format.ParseDict(obj, flow_pb2.FlowFilter()))
    return out


def _validate_field_mask(paths) -> None:
    # fieldmaskpb.New(&flowpb.Flow{}, paths...): every path must name fields of Flow.
    for path in paths:
        desc = flow_pb2.Flow.DESCRIPTOR
        parts = path.split(".")
        for i, part in enumerate(parts):
            fd = desc.fields_by_name.get(part) if desc is not None else None
            if fd is None or (i < len(parts) - 1 and (fd.message_type is None or fd.is_repeated)):
                raise ValueError(f"failed to construct field mask: invalid path {path!r} for message flow.Flow")
            desc = fd.message_type


def build_request(argv: list[str], now: datetime) -> observer_pb2.GetFlowsRequest:
    """The GetFlowsRequest ``hubble observe <argv>`` sends when run at ``now``.

    ``argv`` are the words after ``hubble observe`` (a leading ``hubble``/``observe``/
    ``flows`` is skipped). ``now`` stands for Go's time.Now() in relative --since/--until
    (naive datetimes are UTC). Raises ValueError wherever the real CLI exits with an error
    or would not send a request.
    """
    filters, opts = _parse_args(argv)

    # handleFlowArgs (flows.go)
    if filters.blacklisting:
        raise ValueError("trailing --not found in the arguments")
    output = opts["output"]
    json_out = False
    if output in ("compact", "dict"):
        pass
    elif output in ("json", "JSON", "jsonpb"):
        json_out = True  # "json" is jsonpb unless HUBBLE_COMPAT=legacy-json-output (not modelled)
    elif output in ("tab", "table"):
        if opts["follow"]:
            raise ValueError("table output format is not compatible with follow mode")
    else:
        raise ValueError(f"invalid output format: {output}")
    field_mask = list(opts["field-mask"] or [])
    if not json_out:
        if field_mask:
            raise ValueError(f"{output} output format is not compatible with custom field mask")
        if opts["use-default-field-masks"]:
            field_mask = list(DEFAULT_FIELD_MASK)

    # getFlowsRequest (flows.go)
    first = opts["first"] > 0  # type: ignore[operator]
    last = opts["last"] > 0  # type: ignore[operator]
    if first and last:
        raise ValueError("cannot set both --first and --last")
    if first and opts["all"]:
        raise ValueError("cannot set both --first and --all")
    if first and opts["follow"]:
        raise ValueError("cannot set both --first and --follow")
    if last and opts["all"]:
        raise ValueError("cannot set both --last and --all")

    since = until = None
    if opts["since"] != "":
        try:
            since = _timestamp(hubble_time_from_string(str(opts["since"]), now))
        except ValueError as e:
            raise ValueError(f"failed to parse the since time: {e}") from None
    if opts["until"] != "" and not opts["follow"]:
        try:
            until = _timestamp(hubble_time_from_string(str(opts["until"]), now))
        except ValueError as e:
            raise ValueError(f"failed to parse the until time: {e}") from None

    number = int(opts["last"])  # type: ignore[arg-type]
    if since is None and until is None and not first:
        if opts["all"]:
            number = MAX_UINT64
        elif number == 0 and not opts["follow"] and opts["input-file"] == "":
            number = FLOW_PRINT_COUNT

    wl = filters.whitelist.flow_filters() if filters.whitelist is not None else []
    bl = filters.blacklist.flow_filters() if filters.blacklist is not None else []
    wl += _parse_raw_filters(list(opts["allowlist"]))  # type: ignore[arg-type]
    bl += _parse_raw_filters(list(opts["denylist"]))  # type: ignore[arg-type]

    if first:
        number = int(opts["first"])  # type: ignore[arg-type]

    if opts["print-raw-filters"]:
        raise ValueError("--print-raw-filters prints the filters and sends no request")
    if opts["input-file"]:
        raise ValueError("--input-file reads flows from a file and sends no request")

    req = observer_pb2.GetFlowsRequest(number=number, follow=bool(opts["follow"]), first=first)
    req.whitelist.extend(wl)
    req.blacklist.extend(bl)
    if since is not None:
        req.since.CopyFrom(since)
    if until is not None:
        req.until.CopyFrom(until)
    if field_mask:
        _validate_field_mask(field_mask)
        req.field_mask.paths.extend(field_mask)
    return req
