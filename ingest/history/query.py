"""The SQL a history request runs: the selective parts of its filters, pushed down.

`flows_sql` reads the full flows from l7_audit for one time window. The whitelist's
fields that the typed tables hold (pods, identities, verdicts, HTTP status codes and
methods, DNS query patterns, uuids) become conditions that find a superset of the
flows Hubble's filters match, never fewer; `filters` then decides each flow exactly.
Every value a user gives travels as a query parameter, never in the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.flow import flow_pb2
from ..store.schema import DNS_FLOWS, HTTP_FLOWS, INGEST_GAPS, L7_AUDIT
from .filters import L7_EVENT_TYPE, parse_namespaced_name



# Past this many values a request's condition is left out of its SQL, which would outgrow
# ClickHouse's max_query_size (256 KiB) and the URL a query's parameters travel in.
MAX_PARAMETERS = 256


def _time_range(column: str = "time") -> str:
    return (f"{column} >= fromUnixTimestamp64Nano({{lo:Int64}}, 'UTC') "
            f"AND {column} < fromUnixTimestamp64Nano({{hi:Int64}}, 'UTC')")


@dataclass
class Pushdown:
    """A condition over `l7_audit AS a` and the parameters it names."""
    condition: str = "1"
    parameters: dict = field(default_factory=dict)

    def parameter(self, value, type_: str) -> str:
        name = f"p{len(self.parameters)}"
        self.parameters[name] = value
        return f"{{{name}:{type_}}}"


@dataclass
class _Parts:
    """One filter's conditions, by where they can be checked."""
    audit: list[str] = field(default_factory=list)
    http: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    # Which kinds of stored flow the filter can match at all.
    kinds: set[str] = field(default_factory=lambda: {"HTTP", "DNS", "OTHER"})


def _enum_names(enum, numbers) -> list[str] | None:
    """The names the decoder stores for these enum numbers; None if one has no name here."""
    names = []
    for number in numbers:
        try:
            names.append(enum.Name(number))
        except ValueError:
            return None
    return names


def _one_filter(flow_filter: flow_pb2.FlowFilter, push: Pushdown) -> _Parts:
    parts = _Parts()
    both = (parts.http, parts.dns)
    if flow_filter.uuid and "" not in flow_filter.uuid:  # "" is a flow without one: its row has a content hash
        parts.audit.append(f"has({push.parameter(list(flow_filter.uuid), 'Array(String)')}, a.flow_id)")
    for side, values in (("src", flow_filter.source_pod), ("dst", flow_filter.destination_pod)):
        if values:
            alternatives = []
            for value in values:
                namespace, prefix = parse_namespaced_name(value)
                same = [f"{side}_namespace = {push.parameter(namespace, 'String')}"] if namespace else []
                alternatives.append("(" + " AND ".join(same + [
                    f"startsWith({side}_pod, {push.parameter(prefix, 'String')})"]) + ")")
            for conditions in both:
                conditions.append("(" + " OR ".join(alternatives) + ")")
    for side, values in (("src", flow_filter.source_identity), ("dst", flow_filter.destination_identity)):
        if values:
            for conditions in both:
                conditions.append(f"has({push.parameter(list(values), 'Array(UInt32)')}, {side}_identity)")
    verdicts = _enum_names(flow_pb2.Verdict, flow_filter.verdict) if flow_filter.verdict else None
    if verdicts:
        for conditions in both:
            conditions.append(f"has({push.parameter(verdicts, 'Array(String)')}, verdict)")
    if flow_filter.event_type and not any(t.type in (0, L7_EVENT_TYPE) for t in flow_filter.event_type):
        parts.kinds.clear()  # type 0 is any type
    if flow_filter.http_status_code:
        # Hubble compares the code's text, at least 3 digits, so 5031 is a 5+ (and a 50+).
        full = [int(v) for v in flow_filter.http_status_code if not v.endswith("+")]
        prefixes = [v[:-1] for v in flow_filter.http_status_code if v.endswith("+")]
        alternatives = ([f"has({push.parameter(full, 'Array(UInt16)')}, status_code)"] if full else []) + [
            f"(status_code >= 100 AND startsWith(toString(status_code), {push.parameter(prefix, 'String')}))"
            for prefix in prefixes]
        parts.http.append("(" + " OR ".join(alternatives) + ")")
        parts.kinds &= {"HTTP"}
    if flow_filter.http_method:
        parts.kinds &= {"HTTP"}
        if all(m.isascii() for m in flow_filter.http_method):
            # Go's EqualFold folds some other letters to ASCII ones (ſ to s): such a stored
            # method is left to the exact test.
            methods = [m.lower() for m in flow_filter.http_method]
            parts.http.append(f"(has({push.parameter(methods, 'Array(String)')}, lower(method)) "
                              "OR NOT isValidASCII(method))")
    if flow_filter.http_path or flow_filter.http_url or flow_filter.http_header:
        parts.kinds &= {"HTTP"}
    if flow_filter.dns_query:
        parts.dns.append("(" + " OR ".join(f"match(query, {push.parameter(p, 'String')})"
                                           for p in flow_filter.dns_query) + ")")
        parts.kinds &= {"DNS"}
    protocols = {p.lower() for p in flow_filter.protocol}
    if protocols and protocols <= {"http", "dns", "kafka"}:
        parts.kinds &= {"HTTP" if p == "http" else "DNS" if p == "dns" else "OTHER" for p in protocols}
    return parts


def _typed(database: str, table, conditions: list[str]) -> str:
    if not conditions:
        return "1"
    where = " AND ".join([_time_range(), *conditions])
    return f"(a.time, a.node) IN (SELECT time, node FROM `{database}`.`{table.name}` WHERE {where})"


def pushdown(database: str, whitelist) -> Pushdown:
    """The condition that keeps every flow the whitelist can match (the blacklist is
    applied to decoded flows only)."""
    push = Pushdown()
    if not whitelist:
        return push
    alternatives = []
    for flow_filter in whitelist:
        parts = _one_filter(flow_filter, push)
        kinds = []
        if "HTTP" in parts.kinds:
            kinds.append(f"(a.type = 'HTTP' AND {_typed(database, HTTP_FLOWS, parts.http)})")
        if "DNS" in parts.kinds:
            kinds.append(f"(a.type = 'DNS' AND {_typed(database, DNS_FLOWS, parts.dns)})")
        if "OTHER" in parts.kinds:
            kinds.append("a.type NOT IN ('HTTP', 'DNS')")
        if not kinds:
            continue
        alternatives.append("(" + " AND ".join(parts.audit + ["(" + " OR ".join(kinds) + ")"]) + ")")
    push.condition = " OR ".join(alternatives) if alternatives else "0"
    if len(push.parameters) > MAX_PARAMETERS:
        return Pushdown()  # the time range alone: slower, never wrong
    return push


def flows_sql(database: str, condition: str, descending: bool) -> str:
    """Stored flows in [{lo}, {hi}) that may match, in time order (or reverse), at most
    {limit}: (time in ns, node, flow_id, flow bytes).

    The keys are chosen first, from the small columns alone; only then are the chosen
    flows' bytes read (1.4 KB each): l7_audit is sorted by hour, not by time, so sorting
    the window with its flows would read and sort every flow in it."""
    direction = "DESC" if descending else "ASC"
    order = f"time {direction}, node {direction}, flow_id {direction}"
    table = f"`{database}`.`{L7_AUDIT.name}`"
    return (f"SELECT toUnixTimestamp64Nano(time), node, flow_id, flow FROM {table} "
            f"PREWHERE {_time_range()} AND (time, node, flow_id) IN ("
            f"SELECT a.time, a.node, a.flow_id FROM {table} AS a "
            f"WHERE {_time_range('a.time')} AND ({condition}) "
            f"ORDER BY a.{order.replace(', ', ', a.')} LIMIT {{limit:UInt64}}) "
            f"ORDER BY {order}")


def keys_sql(database: str, condition: str) -> str:
    """The keys (time in ns, node, flow_id) of the stored flows in [{lo}, {hi}) that may match."""
    return (f"SELECT toUnixTimestamp64Nano(a.time), a.node, a.flow_id FROM `{database}`.`{L7_AUDIT.name}` AS a "
            f"WHERE {_time_range('a.time')} AND ({condition})")


def gaps_sql(database: str) -> str:
    """Recorded gaps in [{lo}, {hi}), oldest first, at most {limit}."""
    return (f"SELECT toUnixTimestamp64Nano(time), node, gap_id, kind, source, count, "
            f"toUnixTimestamp64Nano(first), toUnixTimestamp64Nano(last), message "
            f"FROM `{database}`.`{INGEST_GAPS.name}` WHERE {_time_range()} "
            f"ORDER BY time, node, gap_id LIMIT {{limit:UInt64}}")


def time_span_sql(database: str) -> str:
    return (f"SELECT toUnixTimestamp64Nano(min(time)), toUnixTimestamp64Nano(max(time)), count() "
            f"FROM `{database}`.`{L7_AUDIT.name}`")
