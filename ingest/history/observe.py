"""`flowlog observe`: `hubble observe` for those without the Hubble CLI, against
`flowlog serve`, a Hubble server or Hubble Relay.

The flags mean what Hubble's mean (cilium/cilium `hubble/cmd/observe`, v1.19, as vendored
in cilium/hubble), and `build_request` builds the `GetFlowsRequest` Hubble would send
for them: the same whitelist and blacklist (filter flags in command-line order, `--not`
before one puts it in the blacklist, `--namespace` and the two-sided flags as two filters
OR'ed), `number` 20 by default, `--since`/`--until` resolved here against the current
time (also in days and weeks, 7d, 2w, which Go's durations lack), and Hubble's default
field mask for compact, dict and table output. `--dns-query` is ours. Prints with
`printer.Printer`. It does not: read `--input-file`, port-forward, use basic auth, skip
certificate checks, or take `--allowlist`/`--denylist` JSON.

Exit status: 0 at the end of the stream, 1 for a gRPC error (one line on stderr), 2 for
flags that do not go together or cannot be read, 130 on Ctrl-C, 141 when stdout closes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from datetime import datetime, timezone
from fractions import Fraction

import grpc

from ..api.flow import flow_pb2
from ..api.observer import observer_pb2, observer_pb2_grpc
from ..times import parse_duration
from .printer import OUTPUTS, RESERVED_IDENTITIES, TRACE_POINTS, Printer

DEFAULT_SERVER = "localhost:4245"
DEFAULT_NUMBER = 20  # hubble's FlowPrintCount
ALL = 2**64 - 1  # --all: "last" MaxUint64
TLS_PREFIX = "tls://"
# What Hubble asks for when it prints compact, dict or table output (hubble/pkg/defaults).
FIELD_MASK = ("time", "verdict", "ethernet", "IP", "l4", "source.identity", "source.namespace", "source.pod_name",
              "destination.identity", "destination.namespace", "destination.pod_name", "Type", "node_name", "l7",
              "event_type", "source_service", "destination_service", "is_reply", "Summary", "ip_trace_id")
MASKED_OUTPUTS = ("compact", "dict", "table")
# -t TYPE[:SUBTYPE] (Cilium's monitor message type names), and the agent sub-types Hubble names.
EVENT_TYPES = {"drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5, "trace-sock": 7, "l7": 129,
               "agent": 130}
AGENT_SUBTYPES = {"unspecified": 0, "message": 1, "agent-started": 2, "endpoint-regenerate-success": 3,
                  "endpoint-regenerate-failure": 4, "policy-updated": 5, "policy-deleted": 6, "endpoint-created": 7,
                  "endpoint-deleted": 8, "ipcache-upserted": 9, "ipcache-deleted": 10}
IDENTITY_NAMES = {name: number for number, name in RESERVED_IDENTITIES.items() if number} | {
    "overlay-to-encrypt": 11}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]

# Filter flag -> (the field it fills in the first filter, in the second). A flag with two
# different fields ("either side") makes two filters, which the server ORs.
_FIELDS = {
    "uuid": ("uuid", "uuid"),
    "node-name": ("node_name", "node_name"),
    "pod": ("source_pod", "destination_pod"),
    "from-pod": ("source_pod", "source_pod"),
    "to-pod": ("destination_pod", "destination_pod"),
    "label": ("source_label", "destination_label"),
    "from-label": ("source_label", "source_label"),
    "to-label": ("destination_label", "destination_label"),
    "ip": ("source_ip", "destination_ip"),
    "from-ip": ("source_ip", "source_ip"),
    "to-ip": ("destination_ip", "destination_ip"),
    "fqdn": ("source_fqdn", "destination_fqdn"),
    "from-fqdn": ("source_fqdn", "source_fqdn"),
    "to-fqdn": ("destination_fqdn", "destination_fqdn"),
    "port": ("source_port", "destination_port"),
    "from-port": ("source_port", "source_port"),
    "to-port": ("destination_port", "destination_port"),
    "identity": ("source_identity", "destination_identity"),
    "from-identity": ("source_identity", "source_identity"),
    "to-identity": ("destination_identity", "destination_identity"),
    "http-status": ("http_status_code", "http_status_code"),
    "http-method": ("http_method", "http_method"),
    "http-path": ("http_path", "http_path"),
    "http-url": ("http_url", "http_url"),
    "dns-query": ("dns_query", "dns_query"),
    "verdict": ("verdict", "verdict"),
    "traffic-direction": ("traffic_direction", "traffic_direction"),
    "type": ("event_type", "event_type"),
    "protocol": ("protocol", "protocol"),
}
_NAMESPACES = {"namespace": "ns", "from-namespace": "src_ns", "to-namespace": "dst_ns"}
# Flags that cannot be combined in one list (Hubble's, for the flags here).
_CONFLICTS = (
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-namespace", "namespace"),
    ("from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace"),
    ("to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"),
    ("to-pod", "namespace"),
    ("from-pod", "namespace"),
    ("label", "from-label"),
    ("label", "to-label"),
    ("port", "to-port"),
    ("port", "from-port"),
    ("identity", "to-identity"),
    ("identity", "from-identity"),
)


class ObserveError(ValueError):
    """Flags that do not go together, or a value that is none of what a flag takes."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `flowlog observe`. Filter flags (and `--not`) are kept in order in
    `args.observe_filters`; TLS flags use dests that `flowlog run` does not."""
    # As every flowlog command (and hubble's own --debug): gRPC's own lines, and where an
    # unexpected error came from.
    parser.add_argument("--debug", action="store_true", help="gRPC's own lines, and where an error came from")
    server = parser.add_argument_group("server")
    server.add_argument("--server", default=DEFAULT_SERVER,
                        help=f"address of the server, tls:// for TLS (default {DEFAULT_SERVER})")
    server.add_argument("--timeout", default="5s", type=_duration_flag, help="dialing timeout (default 5s)")
    server.add_argument("--tls", dest="observe_tls", action="store_true", help="connect with TLS")
    server.add_argument("--tls-ca-cert-files", dest="observe_tls_ca_cert_files", action="append", default=[],
                        metavar="FILES", help="CA certificates (PEM), comma-separated or repeated")
    server.add_argument("--tls-client-cert-file", dest="observe_tls_client_cert_file", metavar="FILE",
                        help="client certificate (PEM), for mTLS")
    server.add_argument("--tls-client-key-file", dest="observe_tls_client_key_file", metavar="FILE",
                        help="client key (PEM), for mTLS")
    server.add_argument("--tls-server-name", dest="observe_tls_server_name", metavar="NAME",
                        help="the name the server's certificate must carry")

    select = parser.add_argument_group("selectors")
    select.add_argument("--last", type=_uint64, default=0, metavar="N",
                        help=f"the last N flows (default {DEFAULT_NUMBER}); N per node through Relay")
    select.add_argument("--first", type=_uint64, default=0, metavar="N", help="the first N flows")
    select.add_argument("--all", action="store_true", help="every flow held")
    select.add_argument("-f", "--follow", action="store_true", help="follow new flows")
    select.add_argument("--since", metavar="TIME", help="from a time: relative (3s, 4m, 1h43m) or RFC 3339 "
                        "(2021-10-04, 2021-10-04T14Z, 2021-10-04T14:28:38.735Z, ...)")
    select.add_argument("--until", metavar="TIME", help="up to a time, as --since (ignored with --follow)")

    filters = parser.add_argument_group(
        "filters", "Repeat a flag to match any of its values; different flags must all match; "
                   "--not before a flag excludes what it matches.")
    _filter(filters, "--not", nargs=0, help="exclude what the next filter matches")
    for flags, text in (
            (("--uuid",), "the flow with this id"),
            (("-n", "--namespace"), "flows from or to pods in this namespace"),
            (("--from-namespace",), "flows from pods in this namespace"),
            (("--to-namespace",), "flows to pods in this namespace"),
            (("--pod",), "flows from or to this pod name prefix ([namespace/]pod)"),
            (("--from-pod",), "flows from this pod name prefix"),
            (("--to-pod",), "flows to this pod name prefix"),
            (("-l", "--label"), "flows from or to endpoints with this label selector (key=value, reserved:world)"),
            (("--from-label",), "flows from endpoints with this label selector"),
            (("--to-label",), "flows to endpoints with this label selector"),
            (("--ip",), "flows from or to this IP or CIDR"),
            (("--from-ip",), "flows from this IP or CIDR"),
            (("--to-ip",), "flows to this IP or CIDR"),
            (("--fqdn",), "flows from or to this name (*.cilium.io)"),
            (("--from-fqdn",), "flows from this name"),
            (("--to-fqdn",), "flows to this name"),
            (("--port",), "flows from or to this port"),
            (("--from-port",), "flows from this port"),
            (("--to-port",), "flows to this port"),
            (("--identity",), "flows from or to this security identity (number or reserved name)"),
            (("--from-identity",), "flows from this security identity"),
            (("--to-identity",), "flows to this security identity"),
            (("--http-status",), "HTTP responses with this status code or prefix (404, 5+)"),
            (("--http-method",), "HTTP flows with this method"),
            (("--http-path",), "HTTP flows whose path matches this RE2 regular expression"),
            (("--http-url",), "HTTP flows whose URL matches this RE2 regular expression"),
            (("--dns-query",), "DNS flows whose query matches this RE2 regular expression"),
            (("--node-name",), "flows seen on nodes matching this pattern (k8s*, cluster/*)"),
            (("--verdict",), "flows with this verdict (FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, "
                             "TRANSLATED)"),
            (("--traffic-direction",), "ingress or egress"),
            (("-t", "--type"), "event type TYPE[:SUBTYPE]: l7, trace[:to-endpoint...], drop, policy-verdict, "
                               "capture, trace-sock"),
            (("--protocol",), "L4 or L7 protocol (tcp, udp, icmp, http, dns, ...)")):
        _filter(filters, *flags, help=text)

    output = parser.add_argument_group("output")
    output.add_argument("-o", "--output", choices=OUTPUTS, default="compact",
                        help="compact (default), dict, jsonpb (json is its alias) or table")
    output.add_argument("--print-node-name", action="store_true", help="print the node name of each flow")


def build_request(args: argparse.Namespace, now: datetime) -> observer_pb2.GetFlowsRequest:
    """The request `hubble observe` sends for these flags at `now` (timezone-aware)."""
    whitelist, blacklist = _Filters(), _Filters()
    negate = False
    for name, value in args.observe_filters:
        if name == "not":
            if negate:
                raise ObserveError("consecutive --not statements")
            negate = True
            continue
        (blacklist if negate else whitelist).set(name, value)
        negate = False
    if negate:
        raise ObserveError("trailing --not found in the arguments")
    if args.output == "table" and args.follow:
        raise ObserveError("table output format is not compatible with follow mode")

    first, last = args.first > 0, args.last > 0
    for conflict, message in ((first and last, "--first and --last"), (first and args.all, "--first and --all"),
                              (first and args.follow, "--first and --follow"), (last and args.all, "--last and --all")):
        if conflict:
            raise ObserveError(f"cannot set both {message}")
    since = _time("since", args.since, now) if args.since else None
    until = _time("until", args.until, now) if args.until and not args.follow else None

    number = args.last
    if since is None and until is None and not first:
        if args.all:
            number = ALL
        elif not number and not args.follow:
            number = DEFAULT_NUMBER
    request = observer_pb2.GetFlowsRequest(number=args.first if first else number, follow=args.follow, first=first,
                                           whitelist=whitelist.flow_filters(), blacklist=blacklist.flow_filters())
    if since is not None:
        request.since.FromNanoseconds(since)
    if until is not None:
        request.until.FromNanoseconds(until)
    if args.output in MASKED_OUTPUTS:
        request.field_mask.paths.extend(FIELD_MASK)
    return request


def run(args: argparse.Namespace) -> int:
    try:
        request = build_request(args, datetime.now(timezone.utc))
        channel = _channel(args)
    except ObserveError as err:
        print(f"flowlog observe: {err}", file=sys.stderr)
        return 2
    printer = Printer(args.output, sys.stdout, sys.stderr, node_name=args.print_node_name)
    call, failure, status = None, "", 0
    try:
        with channel:
            try:
                if not _connects(channel, args.timeout):
                    failure = f"DEADLINE_EXCEEDED: no connection within {args.timeout:g}s"
                else:
                    call = observer_pb2_grpc.ObserverStub(channel).GetFlows(request)
                    for response in call:
                        printer.write(response)
            except grpc.RpcError as err:
                failure = f"{err.code().name}: {err.details() or ''}"
            except KeyboardInterrupt:
                status = 130
            finally:
                if call is not None:
                    call.cancel()
            printer.close()  # what came before an error or Ctrl-C, as Hubble's deferred Close
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`flowlog observe | head`): stop quietly; Python's own flush
        # of stdout at exit would fail again, so point it elsewhere.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    if failure:
        print(f"flowlog observe: {args.server}: {' '.join(failure.split())}", file=sys.stderr)
        return 1
    return status


class _Filters:
    """Hubble's filterTracker: the whitelist (or the blacklist) as flags fill it, as up to
    two filters whose union is asked for."""

    def __init__(self):
        self.sides: list[flow_pb2.FlowFilter] | None = None
        self.ns: list[str] = []
        self.src_ns: list[str] = []
        self.dst_ns: list[str] = []
        self.changed: list[str] = []

    def set(self, name: str, value: str) -> None:
        if name not in self.changed:
            self.changed.append(name)
            for group in _CONFLICTS:
                used = [flag for flag in group if flag in self.changed]
                if len(used) > 1:
                    raise ObserveError(f"filters --{used[0]} and --{used[1]} cannot be combined")
        if name in _NAMESPACES:
            getattr(self, _NAMESPACES[name]).append(value)
        else:
            if self.sides is None:
                self.sides = [flow_pb2.FlowFilter(), flow_pb2.FlowFilter()]
            item = _value(name, value)
            for side, field in zip(self.sides, _FIELDS[name]):
                getattr(side, field).append(item)
        for side in self.sides or ():
            self._check_namespaces(side)

    def flow_filters(self) -> list[flow_pb2.FlowFilter]:
        if self.sides is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left, right = self.sides or (flow_pb2.FlowFilter(), flow_pb2.FlowFilter())
        for side in (left, right):
            if self.dst_ns:
                _in_namespaces(side, "destination", self.dst_ns)
            if self.src_ns:
                _in_namespaces(side, "source", self.src_ns)
        if self.ns:
            _in_namespaces(left, "source", self.ns)
            _in_namespaces(right, "destination", self.ns)
        return [left] if left == right else [left, right]

    def _check_namespaces(self, side: flow_pb2.FlowFilter) -> None:
        for namespaces, names in ((self.ns, side.source_pod), (self.ns, side.source_service),
                                  (self.ns, side.destination_pod), (self.ns, side.destination_service),
                                  (self.src_ns, side.source_pod), (self.src_ns, side.source_service),
                                  (self.dst_ns, side.destination_pod), (self.dst_ns, side.destination_service)):
            for namespace in namespaces:
                for name in names:
                    if "/" in name and name.split("/")[0] not in ("", namespace):
                        raise ObserveError(f'namespace conflict: "{namespace}" does not contain "{name}"')


def _in_namespaces(side: flow_pb2.FlowFilter, end: str, namespaces: list[str]) -> None:
    """Hubble's namespace flags: the pod (and service) prefixes of one end of a filter
    put in each namespace; with none, any pod of the namespaces."""
    pods, services = getattr(side, f"{end}_pod"), getattr(side, f"{end}_service")
    if not pods and not services:
        pods.append("")
    for names in (pods, services):
        qualified = [name for given in names for name in ([given] if "/" in given else
                                                          [f"{namespace}/{given}" for namespace in namespaces])]
        del names[:]
        names.extend(qualified)


def _value(name: str, value: str):
    """A filter flag's value as its FlowFilter field takes it."""
    if name == "verdict":
        try:
            return flow_pb2.Verdict.Value(value)
        except ValueError:
            raise ObserveError(f"invalid --verdict value: {value}") from None
    if name == "traffic-direction":
        direction = value.lower()
        if direction not in ("ingress", "egress"):
            raise ObserveError(f"{direction}: invalid traffic direction, expected ingress or egress")
        return flow_pb2.TrafficDirection.Value(direction.upper())
    if name.endswith("identity"):
        return _identity(value)
    if name == "type":
        return _event_type(value)
    return value


def _identity(value: str) -> int:
    if value in IDENTITY_NAMES:
        return IDENTITY_NAMES[value]
    try:  # Go's ParseUint(value, 0, 32): decimal, 0x.., 0o.., 0b.., or 0.. for octal
        number = int(value, 8) if re.fullmatch(r"0[0-7_]+", value) else int(value, 0)
        if not re.fullmatch(r"[0-9a-fA-FxXoObB_]+", value) or not 0 <= number < 2**32:
            raise ValueError(value)
        return number
    except ValueError:
        raise ObserveError(f"invalid security identity, expected one of [{' '.join(IDENTITY_NAMES)}] "
                           "or a numeric value") from None


def _event_type(value: str) -> flow_pb2.EventTypeFilter:
    name, has_sub, sub = value.partition(":")
    known = EVENT_TYPES.get(name, 0)
    number = known or _uint32(name, f"unable to parse type '{name}', not a known type name and unable to parse "
                                    "as numeric value")
    event = flow_pb2.EventTypeFilter(type=_int32(number))
    if has_sub:
        names = {4: {v: k for k, v in TRACE_POINTS.items()}, 130: AGENT_SUBTYPES}.get(known, {})
        sub_type = names[sub] if sub in names else _uint32(
            sub, f"unable to parse event sub-type '{sub}', not a known sub-type name and unable to parse as "
                 "numeric value")
        event.match_sub_type = True
        event.sub_type = _int32(sub_type)
    return event


def _uint32(text: str, message: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= 2**32:
        raise ObserveError(message)
    return int(text)


def _int32(number: int) -> int:
    return number - 2**32 if number >= 2**31 else number


def _filter(group, *flags: str, nargs=None, help: str) -> None:
    group.add_argument(*flags, dest="observe_filters", action=_FilterFlag, nargs=nargs, default=[],
                       metavar=None if nargs == 0 else "VALUE", help=help)


class _FilterFlag(argparse.Action):
    """Appends (flag name, value) to one list, so the order of the flags (which `--not`
    applies to) is kept."""

    def __call__(self, parser, namespace, values, option_string=None):
        name = max(self.option_strings, key=len).lstrip("-")
        value = None if self.nargs == 0 else values
        setattr(namespace, self.dest, list(getattr(namespace, self.dest) or []) + [(name, value)])


# Go's time.ParseDuration: a sequence of decimal numbers with units, or 0.
_DURATION = re.compile(r"([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|0)")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9}
# The layouts hubble's --since and --until take besides durations: YearMonthDay,
# YearMonthDayHour, YearMonthDayHourMinute, RFC 3339 with any fraction, and RFC 1123Z.
_DAY_TO_SECOND = re.compile(r"(\d{4})-(\d{2})-(\d{2})"
                            r"(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?(Z|[+-]\d{2}:\d{2}))?")
_RFC1123Z = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                       r"(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-]\d{4})")
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_MIN_NS, _MAX_NS = -62135596800 * 10**9, (253402300800 * 10**9) - 1  # years 1 to 9999


def go_duration_ns(text: str) -> int:
    """Nanoseconds in a Go duration (1h30m, 1.5h, 300ms, -2m); ValueError if it is none."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(text)
    total = sum(Fraction(amount) * _UNIT_NS[unit] for amount, unit in _DURATION_PART.findall(match.group(2)))
    return int(-total if match.group(1) == "-" else total)


def _time(flag: str, text: str, now: datetime) -> int:
    """Nanoseconds since the epoch of hubble's --since/--until value at `now`; beyond
    hubble's Go durations, days and weeks (7d, 2w) too, as history reaches that far."""
    try:
        ns = _now_ns(now) - go_duration_ns(text)
    except ValueError:
        try:
            ns = _now_ns(now) - parse_duration(text)
        except ValueError:
            ns = _absolute_ns(text)
        if ns is None:
            raise ObserveError(f"failed to parse the {flag} time: failed to convert {text} to time") from None
    if not _MIN_NS <= ns <= _MAX_NS:
        raise ObserveError(f"failed to convert `{flag}` timestamp to proto: {text} is out of range")
    return ns


def _now_ns(now: datetime) -> int:
    delta = now - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _absolute_ns(text: str) -> int | None:
    if match := _DAY_TO_SECOND.fullmatch(text):
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        offset = 0 if zone in (None, "Z") else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 60 + int(zone[4:]))
        fields = (year, month, day, hour or 0, minute or 0, second or 0)
    elif match := _RFC1123Z.fullmatch(text):
        day, month, year, hour, minute, second, zone = match.groups()
        offset = (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 60 + int(zone[3:]))
        fields, fraction = (year, _MONTHS.index(month) + 1, day, hour, minute, second), None
    else:
        return None
    try:
        when = datetime(*map(int, fields), tzinfo=timezone.utc)
    except ValueError:
        return None
    return _now_ns(when) - offset * 60 * 10**9 + int((fraction or "0")[:9].ljust(9, "0"))


def _duration_flag(text: str) -> float:
    try:
        return go_duration_ns(text) / 1e9
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 5s, 1m30s)") from None


def _uint64(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= 2**64:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}")
    return int(text)


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """The channel hubble would open: TLS with --tls or a tls:// address, then with the CA
    files given (else the system's) and a client certificate for mTLS."""
    target = args.server
    tls = args.observe_tls or target.startswith(TLS_PREFIX)
    target = target.removeprefix(TLS_PREFIX)
    cert, key = args.observe_tls_client_cert_file, args.observe_tls_client_key_file
    if bool(cert) != bool(key):
        raise ObserveError("certificate and private key are both required, but only one was provided")
    if cert and not tls:
        raise ObserveError("transport layer security required")
    options = list(CHANNEL_OPTIONS)
    if not tls:
        return grpc.insecure_channel(target, options=options)
    ca_files = [path for item in args.observe_tls_ca_cert_files for path in item.split(",") if path]
    roots = b"".join(_read("cert", path) for path in ca_files) or None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots, private_key=_read("key", key),
                                               certificate_chain=_read("cert", cert))
    if args.observe_tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.observe_tls_server_name))
    return grpc.secure_channel(target, credentials, options=options)


def _read(kind: str, path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise ObserveError(f"cannot load {kind} '{path}': {err.strerror}") from None


def _connects(channel: grpc.Channel, timeout_s: float) -> bool:
    """Whether the channel connects, or fails to (the call then says why), within the
    dialing timeout."""
    settled = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                     grpc.ChannelConnectivity.SHUTDOWN):
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        return settled.wait(timeout_s)
    finally:
        channel.unsubscribe(watch)
