"""An independent reference for what a Hubble history server answers to GetFlows.

It evaluates a GetFlowsRequest over fixture lines (``{"flow": {...}, "node_name": ...,
"time": ...}``, proto3 JSON; proto field names, lowerCamel JSON names also read) the way
Hubble's own server does. Written from the Go source of cilium/cilium v1.19.4 as vendored in
cilium/hubble tag v1.19.4 (commit 39037bdd6cb6acb02a241dde33b5ffcf0e8471e2):

- ``pkg/hubble/filters/*.go``: filters.go (Apply: whitelist OR, blacklist NOR; one
  FlowFilter is the AND of its fields; DefaultFilters), and one file per field (cited at
  each matcher below).
- ``pkg/hubble/filters/labels.go``, ``labelparser.go``, ``pkg/labels/{labels,array}.go``,
  ``pkg/k8s/slim/k8s/apis/labels/selector.go``: label selectors.
- ``pkg/hubble/filters/patterns.go``: FQDN and node name patterns.
- ``pkg/hubble/k8s/utils.go`` ParseNamespaceName; ``pkg/defaults/cluster.go``
  (ClusterName "default").
- ``pkg/hubble/observer/local_observer.go`` (cilium/cilium blob at commit 022290f96e27,
  read through the code index; logic unchanged in the facts for v1.19.4): newRingReader and
  eventsReader.Next, for number / first / since / until.
- ``pkg/hubble/parser/fieldmask/fieldmask.go`` (commit 03a87723378): field masks.

Decisions beyond the Go code (the Go server reads a ring in arrival order; a store reads in
time order):

- Order: flow ``time`` (nanoseconds; the line's ``time`` if the flow has none), then the
  flow's ``node_name`` (else the line's), then the flow's ``uuid`` text, then the order the
  lines were given (Python's sort is stable). ``tie_key`` may replace the uuid part with the
  server's own id text.
- ``now``: flows stamped after ``now`` are not in the store yet: they are dropped before
  anything else, so they neither count toward ``number`` nor appear (``now=None``: keep
  all). An unset ``until`` is no bound at all, as in the Go server (whose ring simply holds
  nothing newer than its clock).
- ``follow``: only the stored part of the stream is modelled (where the stream starts, up
  to ``now``/``until``; number does not stop a follow stream). ``first`` with ``follow``
  raises ValueError (Hubble: INVALID_ARGUMENT).
- A filter Hubble refuses to build (bad status code, regex, CIDR, empty pod name, unknown
  protocol, http_* with a non-L7 event type, ...) raises ValueError: the server answers an
  error. ``experimental.cel_expression`` raises NotImplementedError (no CEL here).
- Regular expressions are Go RE2: the ``re2`` module (google-re2) when importable, else
  Python ``re`` (ASCII classes, ``$`` only at the end unless (?m), ``\\z``) after refusing
  what RE2 refuses (back-references, look-arounds); Unicode classes \\pX raise
  NotImplementedError without re2.
- ``reply``: Hubble's ReplyFilter reads only ``is_reply`` (a BoolValue); a flow without it
  matches no reply filter unless its verdict is DROPPED (then it counts as false). The
  deprecated ``reply`` field of these 2021 captures is ignored, as the server ignores it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2

try:  # google-re2
    import re2 as _re2  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

__all__ = ["compile_request", "expected_responses", "flow_time_ns", "masked_response", "matches"]

L7_EVENT_TYPE = 129  # pkg/monitor/api MessageTypeAccessLog
DEFAULT_CLUSTER_NAME = "default"  # pkg/defaults/cluster.go ClusterName


# --- reading proto3 JSON ------------------------------------------------------------------

def _json_name(name: str) -> str:
    out, upper = [], False
    for c in name:
        if c == "_":
            upper = True
        elif upper:
            out.append(c.upper())
            upper = False
        else:
            out.append(c)
    return "".join(out)


def _get(d: Any, name: str, default: Any = None) -> Any:
    if not isinstance(d, dict):
        return default
    if name in d:
        return d[name]
    return d.get(_json_name(name), default)


def _msg(d: Any, name: str) -> dict | None:
    """A sub-message, None when absent (Go's nil)."""
    v = _get(d, name)
    return v if isinstance(v, dict) else None


def _str(d: Any, name: str) -> str:
    v = _get(d, name)
    return v if isinstance(v, str) else ""


def _int(d: Any, name: str) -> int:
    v = _get(d, name)
    if v is None or v == "":
        return 0
    return int(v)


def _enum(d: Any, name: str, enum) -> int:
    v = _get(d, name)
    if v is None:
        return 0
    if isinstance(v, str):
        try:
            return enum.Value(v)
        except ValueError:
            return int(v) if v.lstrip("-").isdigit() else -1
    return int(v)


_TS_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")


def _parse_ts(text: str) -> int:
    m = _TS_RE.fullmatch(text)
    if not m:
        raise ValueError(f"bad timestamp {text!r}")
    y, mo, d, h, mi, s, frac, z = m.groups()
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    secs = int((dt - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    if z not in ("Z", "z"):
        sign = 1 if z[0] == "+" else -1
        secs -= sign * (int(z[1:3]) * 3600 + int(z[4:6]) * 60)
    return secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def flow_time_ns(line: dict) -> int:
    """The time the server orders and bounds by: the flow's time (ev.Timestamp)."""
    flow = _msg(line, "flow") or {}
    t = _get(flow, "time") or _get(line, "time")
    if not t:
        raise ValueError("a line without a time")
    return _parse_ts(t)


def _ts_ns(ts) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


# --- regular expressions (Go regexp = RE2) ------------------------------------------------

_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z", "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}


def _re2_to_python(p: str) -> str:
    multiline = bool(re.search(r"\(\?[a-zA-Z]*m[a-zA-Z]*[:)]", p))
    out, i, in_class = [], 0, False
    while i < len(p):
        c = p[i]
        if c == "\\":
            if i + 1 >= len(p):
                raise ValueError("trailing backslash at end of expression")
            n = p[i + 1]
            if n == "Q":
                end = p.find("\\E", i + 2)
                lit = p[i + 2:] if end < 0 else p[i + 2:end]
                out.append(re.escape(lit))
                i = len(p) if end < 0 else end + 2
                continue
            if n.isdigit() and n != "0" and not in_class:
                raise ValueError(f"invalid escape sequence: \\{n}")  # no back-references in RE2
            if n in "pP":
                raise NotImplementedError("Unicode classes need the re2 module")
            if n == "Z":
                raise ValueError("invalid escape sequence: \\Z")
            out.append("\\Z" if n == "z" and not in_class else p[i:i + 2])
            i += 2
            continue
        if in_class:
            if c == "[" and p.startswith("[:", i):
                end = p.find(":]", i + 2)
                name = p[i + 2:end] if end > 0 else ""
                if name.startswith("^"):
                    raise NotImplementedError("negated POSIX classes need the re2 module")
                if name in _POSIX:
                    out.append(_POSIX[name])
                    i = end + 2
                    continue
            if c == "[":
                out.append("\\[")
                i += 1
                continue
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if p.startswith("^", i):
                out.append("^")
                i += 1
            if p.startswith("]", i):
                out.append("\\]")
                i += 1
            continue
        if c == "(" and p.startswith("(?", i):
            if p.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
                raise ValueError("invalid or unsupported Perl syntax: look-around")
            if p.startswith("(?<", i):
                out.append("(?P<")
                i += 3
                continue
            m = re.match(r"\(\?([a-zA-Z-]*)[:)]", p[i:])
            if m and "U" in m.group(1):
                raise NotImplementedError("(?U) needs the re2 module")
        if c == "$" and not multiline:
            out.append("\\Z")
            i += 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _go_regexp(pattern: str):
    """regexp.Compile; the result has .search(text)."""
    if _re2 is not None:
        options = _re2.Options()
        options.log_errors = False
        try:
            return _re2.compile(pattern, options)
        except _re2.error as e:
            msg = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else e
            raise ValueError(f"failed to compile regexp {pattern!r}: {msg}") from None
    try:
        return re.compile(_re2_to_python(pattern), re.ASCII)
    except re.error as e:
        raise ValueError(f"failed to compile regexp {pattern!r}: {e}") from None


# --- FQDN and node name patterns (patterns.go) --------------------------------------------

_FQDN_RE = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"


def _fqdn_pattern_regexp(pattern: str) -> str:
    pattern = pattern.strip()
    pattern = pattern.removesuffix(".")
    pattern = pattern.lower()
    if pattern == "":
        raise ValueError("empty pattern")
    if pattern.endswith("."):
        raise ValueError("multiple trailing dots in pattern")
    out = []
    for r in pattern:
        if r == ".":
            out.append(r"\.")
        elif r == "*":
            out.append(r"[-.0-9a-z]*")
        elif r in "-_" or "0" <= r <= "9" or "a" <= r <= "z":
            out.append(r)
        else:
            raise ValueError(f"{r!r}: invalid rune in pattern")
    return "".join(out)


def _compile_fqdn_patterns(patterns: Iterable[str]):
    return re.compile(r"\A(?:" + "|".join(_fqdn_pattern_regexp(p) for p in patterns) + r")\Z")


def _compile_node_name_patterns(patterns: Iterable[str]):
    parts = []
    for p in patterns:
        if p == "":
            raise ValueError("empty pattern")
        elems = p.split("/")
        if len(elems) > 2:
            raise ValueError("too many slashes in pattern")
        cluster, node = (elems[0], elems[1]) if len(elems) == 2 else ("", elems[0])
        parts.append((_fqdn_pattern_regexp(cluster) if cluster else _FQDN_RE) + "/"
                     + (_fqdn_pattern_regexp(node) if node else _FQDN_RE))
    return re.compile(r"\A(?:" + "|".join(parts) + r")\Z")


# --- labels (pkg/labels, labelparser.go, k8s selector.go) ---------------------------------

class _Label:
    __slots__ = ("key", "source", "value")

    def __init__(self, source: str, key: str, value: str):
        self.source, self.key, self.value = source, key, value

    def has_key(self, target: _Label) -> bool:
        # Label.HasKey: source must match unless the target's is "any"; cidr-aware for cidr.
        if target.source != "any" and self.source != target.source:
            return False
        if target.source == "cidr" and self.source == "cidr":
            tc, lc = _cidr_key(target.key), _cidr_key(self.key)
            return (tc is not None and lc is not None and tc.version == lc.version
                    and tc.prefixlen <= lc.prefixlen and lc.network_address in tc)
        return self.key == target.key


def _cidr_key(key: str):
    try:
        return ipaddress.ip_network(key.replace("-", ":"), strict=False)
    except ValueError:
        return None


def _parse_source(s: str, delim: str) -> tuple[str, str]:
    if s == "":
        return "", ""
    if s[0] == "$":
        return "reserved", s[1:]
    i = s.find(delim)
    if i < 0:
        if delim != "." and s.startswith("reserved."):
            return "reserved", s[len("reserved."):]
        return "", s
    return s[:i], s[i + 1:]


def _parse_label(s: str, delim: str = ":") -> _Label:
    src, nxt = _parse_source(s, delim)
    source = src or "unspec"
    i = nxt.find("=")
    if i < 0:
        key, value = nxt, ""
    elif i == 0 and src == "reserved":
        key, value = nxt[1:], ""
    else:
        key, value = nxt[:i], nxt[i + 1:]
    return _Label(source, key, value)


class _LabelArray:
    def __init__(self, labels: list[str]):
        # ParseLabelArrayFromArray sorts by key (Go's sort.Slice, not stable; equal keys
        # from different sources keep input order here).
        self.labels = sorted((_parse_label(x) for x in labels), key=lambda lb: lb.key)

    def lookup(self, key: str) -> tuple[str, bool]:
        target = _parse_label(key, ".")  # ParseSelectDotLabel
        if target.source == "unspec":
            target.source = "any"
        for lb in self.labels:
            if lb.has_key(target):
                return lb.value, True
        return "", False


def _translate_selector(selector: str) -> str:
    """labelparser.go translateSelector: `k8s:foo` -> `k8s.foo`, bare keys -> `any.`."""
    out: list[str] = []
    i, n = 0, len(selector)
    while i < n:
        while i < n and (selector[i].isspace() or selector[i] == "!"):  # advanceToNextKey
            out.append(selector[i])
            i += 1
        key_start = i  # translateKey
        while i < n and not (selector[i].isspace() or selector[i] in "=!,"):
            i += 1
        key = selector[key_start:i]
        if ":" not in key:
            key = "any:" + key
        out.append(key.replace(":", ".", 1))
        nesting = 0  # advanceToNextSelector
        while i < n:
            c = selector[i]
            i += 1
            if c == "(":
                nesting += 1
            elif c == ")":
                nesting -= 1
            out.append(c)
            if c == "," and nesting == 0:
                break
    return "".join(out)


_QNAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def _validate_label_key(k: str) -> None:
    parts = k.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
            raise ValueError(f"invalid label key {k!r}: bad prefix")
    else:
        raise ValueError(f"invalid label key {k!r}")
    if not name or len(name) > 63 or not _QNAME_RE.fullmatch(name):
        raise ValueError(f"invalid label key {k!r}")


def _validate_label_value(v: str) -> None:
    if len(v) > 63 or not _LABEL_VALUE_RE.fullmatch(v):
        raise ValueError(f"invalid label value {v!r}")


_SPECIAL = "=!(),><"
_TOKENS = {")": "CPAR", ",": "COMMA", "!": "NOTEXIST", "==": "DEQ", "=": "EQ", ">": "GT",
           "in": "IN", "<": "LT", "!=": "NEQ", "notin": "NOTIN", "(": "OPAR"}


def _lex(s: str) -> list[tuple[str, str]]:
    items, i, n = [], 0, len(s)
    while True:
        while i < n and s[i] in " \t\r\n":
            i += 1
        if i >= n:
            items.append(("END", ""))
            return items
        if s[i] in _SPECIAL:
            buf, last = "", None
            while i < n and s[i] in _SPECIAL:
                buf += s[i]
                if buf in _TOKENS:
                    last = (_TOKENS[buf], buf)
                    i += 1
                elif last is not None:
                    break
                else:
                    i += 1
            if last is None:
                raise ValueError(f"error expected: keyword found '{buf}'")
            items.append(last)
        else:
            start = i
            while i < n and s[i] not in _SPECIAL and s[i] not in " \t\r\n":
                i += 1
            word = s[start:i]
            items.append((_TOKENS.get(word, "ID") if word in ("in", "notin") else "ID", word))


def _parse_selector(selector: str) -> list[tuple[str, str, set[str]]]:
    """k8s labels.Parse over the translated selector: [(key, op, values)]."""
    toks = _lex(_translate_selector(selector))
    pos = 0

    def peek(values_ctx=True):
        t, lit = toks[pos]
        if values_ctx and t in ("IN", "NOTIN"):
            t = "ID"
        return t, lit

    def take(values_ctx=True):
        nonlocal pos
        t = peek(values_ctx)
        pos += 1
        return t

    reqs = []
    while True:
        t, lit = peek()
        if t == "END":
            return reqs
        if t not in ("ID", "NOTEXIST"):
            raise ValueError(f"found '{lit}', expected: !, identifier, or 'end of string'")
        # parseKeyAndInferOperator
        op = None
        t, lit = take()
        if t == "NOTEXIST":
            op = "!"
            t, lit = take()
        if t != "ID":
            raise ValueError(f"found '{lit}', expected: identifier")
        key = lit
        _validate_label_key(key)
        if peek()[0] in ("END", "COMMA"):
            op = op or "exists"
            reqs.append((key, op, set()))
        elif op == "!":
            raise ValueError(f"found '{peek()[1]}', expected: ',' or 'end of string'")
        else:
            t, lit = take(values_ctx=False)
            ops = {"IN": "in", "EQ": "=", "DEQ": "==", "GT": ">", "LT": "<", "NOTIN": "notin", "NEQ": "!="}
            if t not in ops:
                raise ValueError(f"found '{lit}', expected an operator")
            op = ops[t]
            values: set[str] = set()
            if op in ("in", "notin"):
                t, lit = take()
                if t != "OPAR":
                    raise ValueError(f"found '{lit}' expected: '('")
                t, lit = peek()
                if t == "CPAR":
                    take()
                    values.add("")
                elif t in ("ID", "COMMA"):
                    while True:
                        t, lit = take()
                        if t == "ID":
                            values.add(lit)
                            t2, lit2 = peek()
                            if t2 == "COMMA":
                                continue
                            if t2 == "CPAR":
                                break
                            raise ValueError(f"found '{lit2}', expected: ',' or ')'")
                        elif t == "COMMA":
                            if not values:
                                values.add("")
                            t2 = peek()[0]
                            if t2 in ("CPAR", "COMMA"):
                                values.add("")
                            if t2 == "CPAR":
                                break
                        else:
                            raise ValueError(f"found '{lit}', expected: ',', or identifier")
                    if take()[0] != "CPAR":
                        raise ValueError("expected: ')'")
                else:
                    raise ValueError(f"found '{lit}', expected: ',', ')' or identifier")
                if not values:
                    raise ValueError("for 'in', 'notin' operators, values set can't be empty")
            else:
                t, lit = peek()
                if t in ("END", "COMMA"):
                    values.add("")
                else:
                    t, lit = take()
                    if t != "ID":
                        raise ValueError(f"found '{lit}', expected: identifier")
                    values.add(lit)
                if op in (">", "<"):
                    for v in values:
                        if not re.fullmatch(r"[+-]?[0-9]+", v):
                            raise ValueError("for 'Gt', 'Lt' operators, the value must be an integer")
            for v in values:
                _validate_label_value(v)
            reqs.append((key, op, values))
        t, lit = take()
        if t == "END":
            return reqs
        if t != "COMMA":
            raise ValueError(f"found '{lit}', expected: ',' or 'end of string'")
        if peek()[0] not in ("ID", "NOTEXIST"):
            raise ValueError(f"found '{peek()[1]}', expected: identifier after ','")


def _selector_matches(reqs, labels: _LabelArray) -> bool:
    for key, op, values in reqs:
        val, exists = labels.lookup(key)
        if op in ("in", "=", "=="):
            ok = exists and val in values
        elif op in ("notin", "!="):
            ok = (not exists) or val not in values
        elif op == "exists":
            ok = exists
        elif op == "!":
            ok = not exists
        else:  # > <
            if not exists or not re.fullmatch(r"[+-]?[0-9]+", val):
                ok = False
            else:
                lv, rv = int(val), int(next(iter(values)))
                ok = lv > rv if op == ">" else lv < rv
        if not ok:
            return False
    return True


# --- Go net/url ParseRequestURI, enough for paths -----------------------------------------

def _url_path(raw: str) -> str | None:
    """url.ParseRequestURI(raw).Path, or None on error."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw) or raw == "":
        return None
    if raw == "*":
        return "*"
    scheme, rest = "", raw
    for i, c in enumerate(raw):
        if c.isascii() and c.isalpha():
            continue
        if c.isascii() and (c.isdigit() or c in "+-.") and i > 0:
            continue
        if c == ":":
            if i == 0:
                return None  # missing protocol scheme
            scheme, rest = raw[:i].lower(), raw[i + 1:]
        break
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        return "" if scheme else None  # opaque URL, or "invalid URI for request"
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        host = authority.rpartition("@")[2]
        if host.startswith("["):
            end = host.find("]")
            if end < 0:
                return None
            port = host[end + 1:]
            if port and not (port.startswith(":") and port[1:].isdigit() or port == ":"):
                return None
        elif ":" in host:
            port = host.rpartition(":")[2]
            if port and not port.isdigit():
                return None
    # unescape (encodePath mode): every % must start a two-hex-digit escape
    out, i = bytearray(), 0
    b = rest.encode("utf-8", "surrogateescape")
    while i < len(b):
        if b[i] == 0x25:
            h = b[i + 1:i + 3]
            if len(h) < 2 or not all(chr(x) in "0123456789abcdefABCDEF" for x in h):
                return None
            out.append(int(h, 16))
            i += 3
        else:
            out.append(b[i])
            i += 1
    return out.decode("utf-8", "replace")


# --- one FlowFilter -> predicates (one OnBuildFilter each, DefaultFilters order) ----------

def _namespaced_name(values, get):
    # k8s.go filterByNamespacedName with k8s.ParseNamespaceName
    parsed = []
    for name in values:
        if name == "":
            raise ValueError("invalid filter, name must not be empty")
        parts = name.split("/")
        if len(parts) > 1:
            parsed.append((parts[0], parts[1]))
        elif parts[0] == "":
            parsed.append(("", ""))
        else:
            parsed.append(("default", parts[0]))  # no namespace: "default"

    def pred(flow):
        ns, nm = get(flow)
        if ns == "" and nm == "":
            return False
        return any((p == "" or nm.startswith(p)) and (n == "" or n == ns) for n, p in parsed)
    return pred


def _endpoint_ns_pod(side):
    return lambda f: (_str(_msg(f, side), "namespace"), _str(_msg(f, side), "pod_name"))


def _service_ns_name(side):
    return lambda f: (_str(_msg(f, side), "namespace"), _str(_msg(f, side), "name"))


def _ip_filter(values, get):
    # ip.go filterByIPs: exact string match, or CIDR (netip.ParsePrefix) containment
    addresses, prefixes = [], []
    for ip in values:
        try:
            if "/" in ip:
                addr_part, _, bits = ip.partition("/")
                if not bits.isdigit() or "%" in addr_part:
                    raise ValueError
                prefixes.append(ipaddress.ip_network(ip, strict=False))
            else:
                ipaddress.ip_address(ip)
                addresses.append(ip)
        except ValueError:
            raise ValueError(f"invalid IP {ip!r} in filter") from None

    def pred(flow):
        ip = get(flow)
        if ip == "":
            return False
        if ip in addresses:
            return True
        if prefixes:
            try:
                a = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(a.version == p.version and a in p for p in prefixes)
        return False
    return pred


def _port_of(flow, which):
    l4 = _msg(flow, "l4")
    for proto in ("TCP", "UDP", "SCTP"):
        m = _msg(l4, proto)
        if m is not None:
            return _int(m, which) & 0xFFFF
    return None


def _labels_filter(selectors, get):
    parsed = []
    for s in selectors:
        try:
            parsed.append(_parse_selector(s))
        except ValueError as e:
            raise ValueError(f"invalid label filter {s!r}: {e}") from None

    def pred(flow):
        labels = _LabelArray(get(flow))
        return any(_selector_matches(r, labels) for r in parsed)
    return pred


_PROTOCOLS_L4 = {"icmp": ("ICMPv4", "ICMPv6"), "icmpv4": ("ICMPv4",), "icmpv6": ("ICMPv6",),
                 "tcp": ("TCP",), "udp": ("UDP",), "sctp": ("SCTP",), "vrrp": ("VRRP",),
                 "igmp": ("IGMP",)}
_PROTOCOLS_L7 = {"dns": "dns", "http": "http", "kafka": "kafka"}

_STATUS_FULL = re.compile(r"[1-5][0-9]{2}")
_STATUS_PREFIX = re.compile(r"[1-5][0-9]?\+")


def _http(flow):
    return _msg(_msg(flow, "l7"), "http")


def _go_equal_fold(a: str, b: str) -> bool:
    return len(a) == len(b) and all(x == y or x.lower() == y.lower() or x.upper() == y.upper()
                                    for x, y in zip(a, b))


def _build(ff) -> list[Callable[[dict], bool]]:
    fs: list[Callable[[dict], bool]] = []
    add = fs.append

    # uuid.go
    if ff.uuid:
        uu = list(ff.uuid)
        add(lambda f: _str(f, "uuid") in uu)
    # event_type.go (flows only: the store holds flows)
    if ff.event_type:
        types = [(t.type, t.match_sub_type, t.sub_type) for t in ff.event_type]

        def event_type(f):
            ev = _msg(f, "event_type")
            if ev is None:
                return False
            et, st = _int(ev, "type"), _int(ev, "sub_type")
            return any((t == 0 or t == et) and (not m or s == st) for t, m, s in types)
        add(event_type)
    # verdict.go
    if ff.verdict:
        vs = set(ff.verdict)
        add(lambda f: _enum(f, "verdict", flow_pb2.Verdict) in vs)
    # drop_reason_desc.go: DROPPED flows only
    if ff.drop_reason_desc:
        drs = set(ff.drop_reason_desc)
        add(lambda f: _enum(f, "verdict", flow_pb2.Verdict) == flow_pb2.DROPPED
            and _enum(f, "drop_reason_desc", flow_pb2.DropReason) in drs)
    # reply.go: is_reply (BoolValue) only; absent counts as false for DROPPED flows only
    if ff.reply:
        rs = set(ff.reply)

        def reply(f):
            is_reply = _get(f, "is_reply")
            if isinstance(is_reply, dict):  # BoolValue written as a message
                is_reply = is_reply.get("value", False)
            if is_reply is None and _enum(f, "verdict", flow_pb2.Verdict) != flow_pb2.DROPPED:
                return False
            return bool(is_reply) in rs
        add(reply)
    # encrypted.go: IP.encrypted
    if ff.encrypted:
        es = set(ff.encrypted)
        add(lambda f: bool(_get(_msg(f, "IP"), "encrypted", False)) in es)
    # identity.go: endpoint must be present
    for field, side in (("source_identity", "source"), ("destination_identity", "destination")):
        ids = set(getattr(ff, field))
        if ids:
            add(lambda f, ids=ids, side=side: _msg(f, side) is not None and _int(_msg(f, side), "identity") in ids)
    # protocol.go
    if ff.protocol:
        l4s, l7s = [], []
        for p in ff.protocol:
            lp = p.lower()
            if lp in _PROTOCOLS_L4:
                l4s.extend(_PROTOCOLS_L4[lp])
            elif lp in _PROTOCOLS_L7:
                l7s.append(_PROTOCOLS_L7[lp])
            else:
                raise ValueError(f"invalid protocol filter: unknown protocol: {p!r}")
        add(lambda f: any(_msg(_msg(f, "l4"), k) is not None for k in l4s)
            or any(_msg(_msg(f, "l7"), k) is not None for k in l7s))
    # ip.go
    for field, key in (("source_ip", "source"), ("destination_ip", "destination"),
                       ("source_ip_xlated", "source_xlated")):
        if getattr(ff, field):
            add(_ip_filter(list(getattr(ff, field)), lambda f, key=key: _str(_msg(f, "IP"), key)))
    # k8s.go PodFilter, WorkloadFilter (workload.go), ServiceFilter
    if ff.source_pod:
        add(_namespaced_name(list(ff.source_pod), _endpoint_ns_pod("source")))
    if ff.destination_pod:
        add(_namespaced_name(list(ff.destination_pod), _endpoint_ns_pod("destination")))
    for field, side in (("source_workload", "source"), ("destination_workload", "destination")):
        wf = [(w.name, w.kind) for w in getattr(ff, field)]
        if wf:
            add(lambda f, wf=wf, side=side: any(
                any((n == "" or n == _str(w, "name")) and (k == "" or k == _str(w, "kind")) for n, k in wf)
                for w in (_get(_msg(f, side), "workloads") or [])))
    if ff.source_service:
        add(_namespaced_name(list(ff.source_service), _service_ns_name("source_service")))
    if ff.destination_service:
        add(_namespaced_name(list(ff.destination_service), _service_ns_name("destination_service")))
    # fqdn.go
    for field, names in (("source_fqdn", "source_names"), ("destination_fqdn", "destination_names")):
        if getattr(ff, field):
            rx = _compile_fqdn_patterns(getattr(ff, field))
            add(lambda f, rx=rx, names=names: any(rx.search(n) for n in (_get(f, names) or [])))
    if ff.dns_query:
        qs = [_go_regexp(q) for q in ff.dns_query]

        def dns_query(f):
            dns = _msg(_msg(f, "l7"), "dns")
            return dns is not None and any(q.search(_str(dns, "query")) for q in qs)
        add(dns_query)
    # labels.go
    if ff.source_label:
        add(_labels_filter(ff.source_label, lambda f: _get(_msg(f, "source"), "labels") or []))
    if ff.destination_label:
        add(_labels_filter(ff.destination_label, lambda f: _get(_msg(f, "destination"), "labels") or []))
    if ff.node_labels:
        add(_labels_filter(ff.node_labels, lambda f: _get(f, "node_labels") or []))
    # port.go: TCP, then UDP, then SCTP; ports parsed as uint16
    for field, which in (("source_port", "source_port"), ("destination_port", "destination_port")):
        if getattr(ff, field):
            ports = set()
            for p in getattr(ff, field):
                if not p.isdigit() or int(p) > 65535:
                    raise ValueError(f"invalid port {p!r}")
                ports.add(int(p))
            add(lambda f, ports=ports, which=which: _port_of(f, which) in ports)
    # http.go
    http_fields = (ff.http_status_code, ff.http_method, ff.http_path, ff.http_url, ff.http_header)
    if any(http_fields) and ff.event_type and not any(t.type == L7_EVENT_TYPE for t in ff.event_type):
        raise ValueError("filtering by http fields requires the event type filter to only match 'l7' events")
    if ff.http_status_code:
        full, prefix = [], []
        for s in ff.http_status_code:
            if _STATUS_FULL.fullmatch(s):
                full.append(s)
            elif _STATUS_PREFIX.fullmatch(s):
                prefix.append(s[:-1])
            else:
                raise ValueError(f"invalid http status code filter: invalid status code prefix: {s!r}")

        def status(f):
            h = _http(f)
            code = _int(h, "code") if h is not None else 0
            if h is None or code == 0:  # not a response
                return False
            c = f"{code:03d}"
            return c in full or any(c.startswith(p) for p in prefix)
        add(status)
    if ff.http_method:
        methods = list(ff.http_method)

        def method(f):
            h = _http(f)
            m = _str(h, "method") if h is not None else ""
            return m != "" and any(_go_equal_fold(m, x) for x in methods)
        add(method)
    if ff.http_path:
        prx = [_go_regexp(p) for p in ff.http_path]

        def path(f):
            h = _http(f)
            url = _str(h, "url") if h is not None else ""
            if url == "":
                return False
            p = _url_path(url)
            return p is not None and any(r.search(p) for r in prx)
        add(path)
    if ff.http_url:
        urx = [_go_regexp(p) for p in ff.http_url]

        def url_f(f):
            h = _http(f)
            url = _str(h, "url") if h is not None else ""
            return url != "" and any(r.search(url) for r in urx)
        add(url_f)
    if ff.http_header:
        wanted = {(h.key, h.value) for h in ff.http_header}

        def header(f):
            h = _http(f)
            headers = _get(h, "headers") if h is not None else None
            return bool(headers) and any((_str(x, "key"), _str(x, "value")) in wanted for x in headers)
        add(header)
    # tcp.go: every flag of one filter entry must be set in the flow
    if ff.tcp_flags:
        wanted_flags = [[n for n in ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS") if getattr(t, n)]
                        for t in ff.tcp_flags]

        def tcp_flags(f):
            flags = _msg(_msg(_msg(f, "l4"), "TCP"), "flags")
            if flags is None:
                return False
            return any(all(_get(flags, n, False) for n in w) for w in wanted_flags)
        add(tcp_flags)
    # nodename.go: the flow's node_name, prefixed "default/" when it has no cluster part
    if ff.node_name:
        nrx = _compile_node_name_patterns(ff.node_name)

        def node(f):
            n = _str(f, "node_name")
            if n == "":
                return False
            if "/" not in n:
                n = DEFAULT_CLUSTER_NAME + "/" + n
            return bool(nrx.search(n))
        add(node)
    # cluster_name.go
    for field, side in (("source_cluster_name", "source"), ("destination_cluster_name", "destination")):
        names = list(getattr(ff, field))
        if names:
            if "" in names:
                raise ValueError("invalid filter, name must not be empty")
            add(lambda f, names=names, side=side: _str(_msg(f, side), "cluster_name") in names)
    # ip.go IPVersionFilter (a flow without IP has IP_NOT_USED)
    if ff.ip_version:
        ivs = set(ff.ip_version)
        add(lambda f: _enum(_msg(f, "IP"), "ipVersion", flow_pb2.IPVersion) in ivs)
    # tracing.go
    if ff.trace_id:
        tids = list(ff.trace_id)
        add(lambda f: _str(_msg(_msg(f, "trace_context"), "parent"), "trace_id") in tids)
    # traffic_direction.go
    if ff.traffic_direction:
        tds = set(ff.traffic_direction)
        add(lambda f: _enum(f, "traffic_direction", flow_pb2.TrafficDirection) in tds)
    # cel_expression.go
    if ff.experimental.cel_expression:
        raise NotImplementedError("CEL expressions are not modelled by this reference")
    # network_interface.go
    if ff.interface:
        ifs = [(i.index, i.name) for i in ff.interface]

        def iface(f):
            i = _msg(f, "interface")
            if i is None:
                return False
            return any((idx == 0 or idx == _int(i, "index")) and (nm == "" or nm == _str(i, "name"))
                       for idx, nm in ifs)
        add(iface)
    # ip_tracing.go
    if ff.ip_trace_id:
        itids = set(ff.ip_trace_id)
        add(lambda f: _int(_msg(f, "ip_trace_id"), "trace_id") in itids)
    return fs


def compile_request(request: observer_pb2.GetFlowsRequest) -> Callable[[dict], bool]:
    """filters.BuildFilterList for whitelist and blacklist, then filters.Apply."""
    white = [_build(ff) for ff in request.whitelist]
    black = [_build(ff) for ff in request.blacklist]

    def pred(line: dict) -> bool:
        flow = _msg(line, "flow")
        if flow is None:
            return True  # lost events bypass filters (local_observer.go eventsReader.Next)
        if white and not any(all(p(flow) for p in fs) for fs in white):
            return False
        return not any(all(p(flow) for p in fs) for fs in black)
    return pred


def matches(request: observer_pb2.GetFlowsRequest, line: dict) -> bool:
    """Whether Hubble's filters let this fixture line through the request's filters."""
    return compile_request(request)(line)


def expected_responses(request: observer_pb2.GetFlowsRequest, lines: Iterable[dict],
                       now: datetime | None = None, *,
                       tie_key: Callable[[dict], str] | None = None) -> list[dict]:
    """The lines a history server holding exactly ``lines`` answers, in answer order.

    local_observer.go: newRingReader picks the start (first without since: the oldest;
    follow with number 0 and no since: the newest, nothing stored; else rewind from the
    newest counting matching flows until `number` is reached, or with since until a
    matching flow is older than since, whatever the number), eventsReader.Next reads forward (skip flows before since, end at the
    first flow after until, stop after `number` unless following).
    """
    if request.first and request.follow:
        raise ValueError("first cannot be specified with follow")
    pred = compile_request(request)
    flows = list(lines)
    for line in flows:
        if _msg(line, "flow") is None:
            raise ValueError("expected_responses takes flow lines only")

    def order(line: dict):
        flow = _msg(line, "flow") or {}
        node = _str(flow, "node_name") or _str(line, "node_name")
        third = tie_key(line) if tie_key is not None else _str(flow, "uuid")
        return (flow_time_ns(line), node, third)

    flows.sort(key=order)
    if now is not None:  # flows stamped after `now` are not in the store yet
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        d = now - datetime(1970, 1, 1, tzinfo=UTC)
        now_ns = (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000
        flows = [x for x in flows if flow_time_ns(x) <= now_ns]
    ts = [flow_time_ns(x) for x in flows]
    ok = [pred(x) for x in flows]
    since = _ts_ns(request.since) if request.HasField("since") else None
    until = _ts_ns(request.until) if request.HasField("until") else None
    number = request.number

    # newRingReader
    if request.first and since is None:
        start = 0
    elif request.follow and number == 0 and since is None:
        start = len(flows)
    else:
        # Cilium v1.19.4's newRingReader: "since takes precedence over Number": with since,
        # rewind to it whatever the number. One deliberate difference: flows after until
        # are not counted, so `--until T --last N` is the newest N up to T (Hubble counts
        # the newest N in its ring and then cuts them at T, which in a store that keeps
        # months would answer nothing).
        start, count = 0, 0
        for i in range(len(flows) - 1, -1, -1):
            if not ok[i] or (until is not None and ts[i] > until):
                continue
            count += 1
            if since is not None:
                if ts[i] < since:
                    start = i + 1
                    break
            elif count == number:
                start = i
                break

    # eventsReader.Next
    out: list[dict] = []
    for i in range(start, len(flows)):
        if not request.follow and number > 0 and len(out) >= number:
            break
        if until is not None and ts[i] > until:
            break
        if since is not None and ts[i] < since:
            continue
        if ok[i]:
            out.append(flows[i])
    return out


# --- field masks (parser/fieldmask) -------------------------------------------------------

def _mask_tree(paths: Iterable[str]) -> dict:
    tree: dict = {}
    for path in sorted(set(paths)):  # fm.Normalize(): sorted, covered paths dropped
        node = tree
        parts = path.split(".")
        for j, part in enumerate(parts):
            if part in node and node[part] is None:
                break  # a shorter path already takes the whole field
            if j == len(parts) - 1:
                node[part] = None
            else:
                node = node.setdefault(part, {})
    return tree


def _copy_masked(tree: dict, src: dict | None) -> dict:
    dst: dict = {}
    for name, sub in tree.items():
        if sub is None:
            if src is not None and (name in src or _json_name(name) in src):
                dst[name] = _get(src, name)
        else:
            dst[name] = _copy_masked(sub, _msg(src, name))  # Alloc: always present
    return dst


def masked_response(request: observer_pb2.GetFlowsRequest, line: dict) -> dict:
    """The GetFlowsResponse (as a proto-name JSON dict) the server sends for ``line``.

    With a field mask (``field_mask``, else ``experimental.field_mask``), the flow holds only
    the masked fields, nested messages on a mask path are always present (maybe empty), and
    the response's time and node_name come from the masked flow (absent if masked out).
    """
    paths = list(request.field_mask.paths) or list(request.experimental.field_mask.paths)
    flow = _msg(line, "flow") or {}
    if paths:
        flow = _copy_masked(_mask_tree(paths), flow)
    resp: dict = {"flow": flow}
    if _get(flow, "node_name"):
        resp["node_name"] = _get(flow, "node_name")
    if _get(flow, "time"):
        resp["time"] = _get(flow, "time")
    return resp
