"""Every stored table and column as it is now, defined once.

The DDL, the insert column lists, the rows the decoder fills (by column name), the
rollups' views and cluster mode are all derived from the definitions here. Adding a
column is an edit here and one where its value comes from (the decoder): append a
`Column`, record it in a new migration in `migrations`, give the decoder a value for
it, and run `flowlog migrate --write-sql` to emit the migration's SQL. How older
versions of a table differed lives in `migrations`, not here.

This module knows nothing about connections; `migrations` applies what it renders.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

TIME = "DateTime64(9, 'UTC')"
LC = "LowCardinality(String)"


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    codec: str = ""
    comment: str = ""
    # Rollups only: the expression over the source table that fills this column.
    expr: str = ""
    # Not stored: ClickHouse computes it from this expression when it is read.
    alias: str = ""
    # Stored; what a row written without it (or a part written before it was added) holds.
    default: str = ""

    def ddl(self) -> str:
        default = f" DEFAULT {self.default}" if self.default else ""
        kind = f" ALIAS {self.alias}" if self.alias else f" CODEC({self.codec})" if self.codec else ""
        comment = f" COMMENT {_quote(self.comment)}" if self.comment else ""
        return f"`{self.name}` {self.type}{default}{kind}{comment}"

    @property
    def is_aggregate(self) -> bool:
        return self.type.startswith(("AggregateFunction", "SimpleAggregateFunction"))


@dataclass(frozen=True)
class Setting:
    """A MergeTree setting of one table. One that ClickHouse fixes when the table is
    created (alterable=False) can only be given in CREATE TABLE: tables created before
    it was added keep ClickHouse's default."""
    name: str
    value: int
    alterable: bool = True

    def sql(self) -> str:
        return f"{self.name} = {self.value}"


# A merge reads its parts side by side. Below 131,072 rows (ClickHouse's default
# threshold; six 20,000-row batches are 120,000) it merges horizontally, holding a block
# of every column of every part at once: about 200 MB for each of http_flows, dns_flows
# and l7_audit, all three merging at the same time. A vertical merge does the sort key
# first, then one column at a time: 68, 21 and 187 MB (system.merges); with 1 MB audit
# granules as well (below) 48, 24 and 58 MB, and the peak RSS of `bench/run.py --phases
# e2e` went from 860 to 712 MB at the same throughput.
VERTICAL_MERGES = (Setting("vertical_merge_algorithm_min_rows_to_activate", 1),
                   Setting("vertical_merge_algorithm_min_columns_to_activate", 1))


@dataclass(frozen=True)
class Cluster:
    """A ClickHouse cluster (`remote_servers` name) and how rows are spread over its shards:
    by node, so one Cilium node's flows stay on one shard, or at random."""
    name: str
    sharding_key: str = "cityHash64(node)"


def on_cluster(cluster: Cluster | None) -> str:
    return f" ON CLUSTER `{cluster.name}`" if cluster else ""


# eq=False: a table is its one definition, hashed by identity. Batches key rows by table
# on the hot path, and a field-wise hash would walk every column each time.
@dataclass(frozen=True, eq=False)
class Table:
    name: str
    comment: str
    columns: tuple[Column, ...]
    order_by: str
    # The column that identifies a stored row; used to drop rows stored before.
    id_column: str = ""
    indexes: tuple[str, ...] = ()
    partition_by: str = "toDate(time)"
    # The config key whose value (days) becomes the TTL; "" for none.
    ttl_key: str = "ttl_days"
    engine: str = "MergeTree"
    settings: tuple[Setting, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """The stored columns: what rows hold and inserts name."""
        return tuple(c.name for c in self.columns if not c.alias)

    @property
    def column_types(self) -> tuple[str, ...]:
        """The stored columns' ClickHouse types, in the order of column_names."""
        return tuple(c.type for c in self.columns if not c.alias)

    @property
    def id_type(self) -> str:
        return next(c.type for c in self.columns if c.name == self.id_column)

    def ttl_clause(self) -> str:
        return f"\nTTL toDateTime(time) + INTERVAL ${{{self.ttl_key}}} DAY" if self.ttl_key else ""

    def create_sql(self, database: str, cluster: Cluster | None = None, columns: tuple[Column, ...] | None = None,
                   settings: tuple[Setting, ...] | None = None) -> str:
        """CREATE TABLE for one node, or for a cluster the shard-local replicated table; with
        the columns and settings given (a migration's, as the table was then), else today's."""
        columns = self.columns if columns is None else columns
        settings = self.settings if settings is None else settings
        body = ",\n    ".join([c.ddl() for c in columns] + list(self.indexes))
        name, engine, clauses = self.name, self.engine, []
        if cluster is None:
            # Retried inserts with the same insert_deduplication_token are stored once
            # (replicated tables deduplicate by default).
            clauses.append("non_replicated_deduplication_window = 1000")
        else:
            name = self.local_name
            engine = (f"Replicated{self.engine}('/clickhouse/tables/{{shard}}/{database}/{name}', '{{replica}}')")
        if self.ttl_key:
            clauses.append("ttl_only_drop_parts = 1")
        clauses += [setting.sql() for setting in settings]
        settings_clause = f"\nSETTINGS {', '.join(clauses)}" if clauses else ""
        return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{name}`{on_cluster(cluster)}\n(\n    {body}\n)\n"
                f"ENGINE = {engine}\nPARTITION BY {self.partition_by}\nORDER BY ({self.order_by})"
                f"{self.ttl_clause()}{settings_clause}\nCOMMENT {_quote(self.comment)}")

    @property
    def local_name(self) -> str:
        return f"{self.name}_local"

    def distributed_sql(self, database: str, cluster: Cluster) -> str:
        """The table everything reads and writes in a cluster, spreading rows over the shards."""
        key = cluster.sharding_key if "node" in self.column_names else "rand()"
        return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}`{on_cluster(cluster)} "
                f"AS `{database}`.`{self.local_name}`\n"
                f"ENGINE = Distributed(`{cluster.name}`, `{database}`, `{self.local_name}`, {key})")


@dataclass(frozen=True, eq=False)
class Rollup(Table):
    """An AggregatingMergeTree table filled by a materialized view over a raw table."""
    source: Table | None = None
    where: str = ""

    @property
    def view_name(self) -> str:
        return f"{self.name}_mv"

    def view_sql(self, database: str, cluster: Cluster | None = None, columns: tuple[Column, ...] | None = None) -> str:
        """The view; in a cluster it reads each shard's local raw table, so rollups are per shard.
        `columns` gives the expressions of an older version."""
        target = self.local_name if cluster else self.name
        return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{database}`.`{self.view_name}`{on_cluster(cluster)} "
                f"TO `{database}`.`{target}`\n"
                f"AS {self.view_select(database, cluster, columns)}")

    def view_select(self, database: str, cluster: Cluster | None = None,
                    columns: tuple[Column, ...] | None = None) -> str:
        columns = columns or self.columns
        select = ",\n    ".join(f"{c.expr} AS `{c.name}`" for c in columns)
        group_by = ", ".join(f"`{c.name}`" for c in columns if not c.is_aggregate)
        where = f"\nWHERE {self.where}" if self.where else ""
        source = self.source.local_name if cluster else self.source.name
        return f"SELECT\n    {select}\nFROM `{database}`.`{source}`{where}\nGROUP BY {group_by}"


# Schema version 6 took http_flows from 69.2 to 58.2 bytes a flow and dns_flows from 31.5
# to 28.3 on the bench's data: flow_id as a UUID -2.7, path and query computed from url
# -4.1, T64 on ports -1.0, ZSTD(9) on url and headers -2.5, ZSTD(3) on IPs -0.7; no
# throughput measurably lost (README, Performance).
def _endpoint(side: str, what: str) -> tuple[Column, ...]:
    return (
        Column(f"{side}_namespace", LC, comment=f"Kubernetes namespace of the {what}"),
        Column(f"{side}_pod", LC, comment=f"pod name of the {what}"),
        Column(f"{side}_workload", LC, comment=f"workload of the {what} (Hubble workloads, else derived from pod name or app label)"),
        Column(f"{side}_identity", "UInt32", "ZSTD(1)", comment=f"Cilium security identity of the {what}"),
        Column(f"{side}_ip", "String", "ZSTD(3)", comment=f"IP address of the {what}"),
        Column(f"{side}_port", "UInt16", "T64, ZSTD(1)", comment=f"L4 port of the {what}"),
        Column(f"{side}_labels", f"Array({LC})", comment=f"Cilium labels of the {what}"),
        Column(f"{side}_names", "Array(String)", "ZSTD(1)", comment=f"DNS names of the {what} known to Cilium"),
    )


def _reserved(side: str) -> str:
    return (f"arrayStringConcat(arrayMap(label -> substring(label, 10), "
            f"arrayFilter(label -> startsWith(label, 'reserved:'), {side}_labels)), ',')")


# In the rollups, a client with no workload is named by its reserved identities alone
# (world): by IP, clients on the internet would make a row each, every minute. A server
# keeps its name with the IP, as every answer names it: the servers a cluster calls are few.
_CLIENT_IDENTITY = (f"if(l7_type = 'RESPONSE', if(dst_workload != '', dst_workload, {_reserved('dst')}), "
                    f"if(src_workload != '', src_workload, {_reserved('src')}))")


# Cilium 1.19's exporter can write one line for many flows (hubble-export-fieldaggregate):
# a row says so, and everything that counts flows counts it with this weight.
_AGGREGATE_COUNT = Column("aggregate_count", "UInt32", "ZSTD(1)", comment="flows an aggregated exporter line stands "
                          "for (Cilium 1.19 hubble-export-fieldaggregate: ingress + egress + unknown direction); 0 for "
                          "a single flow")
FLOWS_OF_ROW = "greatest(aggregate_count, 1)"


def _workload_names() -> tuple[Column, ...]:
    """How every answer names an endpoint (the queries, the rollups, the demo, the
    dashboards): its workload; an endpoint with none (outside the cluster, a node) by its
    reserved identities and IP, `world 203.0.113.10`, rather than a blank that merges
    every such endpoint into one. Computed when read, from the stored columns."""
    return tuple(Column(
        f"{side}_workload_name", "String",
        alias=f"if({side}_workload != '', {side}_workload, trimLeft(concat({_reserved(side)}, ' ', {side}_ip)))",
        comment=f"the {what}'s workload, else its reserved identities and IP: world 203.0.113.10 (computed)")
        for side, what in (("src", "source"), ("dst", "destination")))


# Client and server of an exchange: on a response Hubble swaps the endpoints, so the
# client is the destination. Names follow Hubble's metric labels.
_CLIENT = "if(l7_type = 'RESPONSE', dst_{0}, src_{0})"
_SERVER = "if(l7_type = 'RESPONSE', src_{0}, dst_{0})"
# A request and its response are sorted side by side (same server, client pod and client
# port, then time): they repeat the URL and headers (request ids, trace ids), which then
# compress as one. That took http_flows from 93.5 to 69 bytes a flow in bench/run.py.
# A query that filters on these same if(...) expressions reads one range of the key for
# both flow types.
_EXCHANGE_ORDER = ", ".join(["toStartOfHour(time)", _SERVER.format("namespace"), _SERVER.format("workload"),
                             _CLIENT.format("namespace"), _CLIENT.format("workload"), _CLIENT.format("pod"),
                             _CLIENT.format("port"), "time"])


FLOW_COLUMNS = (
    Column("time", TIME, "Delta, ZSTD(1)", comment="time of the flow, UTC, nanoseconds"),
    Column("node", LC, comment="Cilium node that observed the flow"),
    Column("flow_id", "UUID", "ZSTD(1)", comment="Hubble's uuid, else a hash of the flow content; l7_audit.flow_id "
           "is its text as it came (a content hash as 32 hex digits; an id that is no UUID is held here as its MD5)"),
    Column("verdict", LC, comment="FORWARDED, DROPPED, ..."),
    Column("l7_type", LC, comment="REQUEST or RESPONSE"),
    Column("traffic_direction", LC, comment="INGRESS or EGRESS"),
    Column("is_reply", "Nullable(Bool)", comment="true for replies; NULL when Hubble did not know"),
    *_endpoint("src", "source"),
    *_endpoint("dst", "destination"),
)

# What ClickHouse's toUUIDOrNull takes: the 36-character form or 32 hex digits, any case.
_UUID_ANY_CASE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}", re.ASCII | re.I)


def uuid_text(text: str) -> str:
    """An id as the flow tables' UUID column holds it: a UUID in lower case, anything else
    as the MD5 of its text (32 hex digits). Migration 6 rewrote the ids stored before it
    the same way, so a flow replayed after it gets the id it was stored with."""
    if _UUID_ANY_CASE.fullmatch(text):
        return text.lower()
    return hashlib.md5(text.encode()).hexdigest()


HTTP_FLOWS = Table(
    name="http_flows",
    comment="One row per L7 HTTP flow (requests and responses)",
    columns=FLOW_COLUMNS + (
        Column("method", LC),
        Column("url", "String", "ZSTD(9)", comment="full URL as Hubble reported it (userinfo stripped)"),
        Column("host", LC),
        Column("path", "String", alias="path(url)", comment="path of the URL (computed)"),
        Column("query", "String", alias="queryString(url)", comment="query string of the URL, without the ? (computed)"),
        Column("protocol", LC, comment="HTTP/1.1, HTTP/2, ..."),
        Column("status_code", "UInt16", "ZSTD(1)", comment="0 on requests"),
        Column("latency_ns", "UInt64", "ZSTD(1)", comment="request to response, on responses; 0 on requests"),
        Column("headers", f"Map({LC}, String)", "ZSTD(9)", comment="allow-listed headers, sensitive values redacted"),
        Column("dst_dns_name", LC, comment="DNS name of the server of the exchange (the request destination): "
               "Hubble's, else for a server with no pod the name the client pod last resolved to its IP"),
        *_workload_names(),
        _AGGREGATE_COUNT,
    ),
    order_by=_EXCHANGE_ORDER,
    id_column="flow_id",
    indexes=("INDEX idx_flow_id flow_id TYPE bloom_filter(0.01) GRANULARITY 4",),
    settings=VERTICAL_MERGES,
)

DNS_FLOWS = Table(
    name="dns_flows",
    comment="One row per L7 DNS flow (queries and responses)",
    columns=FLOW_COLUMNS + (
        Column("query", "String", "ZSTD(1)", comment="the queried name, with trailing dot"),
        Column("qtypes", f"Array({LC})", comment="A, AAAA, ..."),
        Column("rcode", "UInt16", "ZSTD(1)", comment="DNS response code; 0 on queries"),
        Column("rcode_name", LC, comment="NOERROR, NXDOMAIN, ...; empty on queries"),
        Column("ips", "Array(String)", "ZSTD(1)", comment="answer addresses"),
        Column("ttl", "UInt32", "ZSTD(1)", comment="TTL of the answer"),
        Column("cnames", "Array(String)", "ZSTD(1)"),
        Column("rrtypes", f"Array({LC})"),
        Column("observation_source", LC, comment="proxy or another observer"),
        Column("latency_ns", "UInt64", "ZSTD(1)", comment="query to response, on responses"),
        *_workload_names(),
        _AGGREGATE_COUNT,
    ),
    order_by="toStartOfHour(time), src_namespace, src_workload, query, time",
    id_column="flow_id",
    indexes=("INDEX idx_flow_id flow_id TYPE bloom_filter(0.01) GRANULARITY 4",),
    settings=VERTICAL_MERGES,
)

L7_AUDIT = Table(
    name="l7_audit",
    comment="Every ingested L7 flow in full (flow.Flow protobuf bytes), for audits and re-derivation",
    columns=(
        Column("time", TIME, "Delta, ZSTD(1)"),
        Column("node", LC),
        Column("flow_id", "String", "ZSTD(1)"),
        Column("type", LC, comment="HTTP, DNS or KAFKA: which L7 record the flow holds; empty when an exporter's "
               "field mask left it out"),
        Column("l7_type", LC),
        Column("flow", "String", "ZSTD(3)", comment="the flow.Flow message, protobuf wire format"),
        _AGGREGATE_COUNT,
    ),
    order_by="toStartOfHour(time), node, flow_id",
    id_column="flow_id",
    # A granule (the rows a merge reads of each part at once) holds at most 10 MB by default:
    # 7,000 of these 1.4 KB flows, in two copies (compressed and not) per merged part. 1 MB
    # granules took a six-part merge from 187 to 58 MB.
    settings=(Setting("index_granularity_bytes", 1 << 20, alterable=False),) + VERTICAL_MERGES,
)

INGEST_GAPS = Table(
    name="ingest_gaps",
    comment="Lost events, node status changes and stream interruptions: what may be missing",
    columns=(
        Column("time", TIME, "Delta, ZSTD(1)", comment="when the gap was reported (spool_unreadable: when the "
               "lost batch was written)"),
        Column("node", LC),
        Column("gap_id", "String", "ZSTD(1)", comment="hash of the report, so a replay stores it once"),
        Column("kind", LC, comment="lost_events, node_status, stream_interrupted or spool_unreadable"),
        Column("source", LC, comment="who lost them (HUBBLE_RING_BUFFER, ...) or the source address"),
        Column("count", "UInt64", comment="events lost; 0 when unknown"),
        Column("first", TIME, comment="first time covered by the gap"),
        Column("last", TIME, comment="last time covered by the gap"),
        Column("message", "String", "ZSTD(1)"),
    ),
    order_by="node, time",
    id_column="gap_id",
)

_COUNT = "SimpleAggregateFunction(sum, UInt64)"
_ROLLUP_TIME = Column("time", "DateTime('UTC')", "Delta, ZSTD(1)", comment="start of the minute",
                      expr="toStartOfMinute(time)")


def _rollup_endpoints() -> tuple[Column, ...]:
    return (
        Column("source_namespace", LC, expr=_CLIENT.format("namespace")),
        Column("source_workload", LC, expr=_CLIENT_IDENTITY),
        Column("destination_namespace", LC, expr=_SERVER.format("namespace")),
        Column("destination_workload", LC, expr=_SERVER.format("workload_name")),
    )


# A t-digest weighted by the flows a row stands for, without the responses that carry no
# latency (an aggregated exporter line: latency_ns 0), in the type the column has had since
# version 2. The weighted function's state is the same t-digest (ClickHouse keeps both in
# one data structure and writes it the same way), but ClickHouse converts AggregateFunction
# types by name only, so the state passes through its serialized form: per rolled-up row
# of an insert block, not per flow.
_WEIGHTED_LATENCY_DIGEST = (f"CAST(CAST(quantileTDigestWeightedIfState(latency_ns, {FLOWS_OF_ROW}, latency_ns > 0) "
                            "AS String) AS AggregateFunction(quantileTDigest, UInt64))")

HTTP_ROLLUP = Rollup(
    name="http_rollup_1m",
    comment="HTTP responses per minute, client and server workload, method and status class",
    columns=(
        _ROLLUP_TIME,
        Column("node", LC, expr="node"),
        *_rollup_endpoints(),
        Column("reporter", LC, comment="client (seen on egress) or server (seen on ingress), as Hubble's httpV2",
               expr="if(traffic_direction = 'INGRESS', 'server', 'client')"),
        Column("method", LC, expr="method"),
        Column("status_class", LC, comment="2xx, 3xx, 4xx, 5xx; 0xx when the proxy saw no status",
               expr="concat(toString(intDiv(status_code, 100)), 'xx')"),
        Column("requests", _COUNT, expr=f"sum({FLOWS_OF_ROW})"),
        Column("errors", _COUNT, comment="responses with status 500 or more",
               expr=f"sumIf({FLOWS_OF_ROW}, status_code >= 500)"),
        Column("latency_sum_ns", _COUNT, expr=f"sum(latency_ns * {FLOWS_OF_ROW})"),
        Column("latency", "AggregateFunction(quantileTDigest, UInt64)",
               comment="latency_ns t-digest: quantileTDigestMerge(0.99)(latency)",
               expr=_WEIGHTED_LATENCY_DIGEST),
        Column("responses_with_latency", _COUNT, default="requests",
               comment="responses that carry a latency (an aggregated exporter line usually does not): the mean "
                       "latency is sum(latency_sum_ns) / sum(responses_with_latency)",
               expr=f"sumIf({FLOWS_OF_ROW}, latency_ns > 0)"),
    ),
    order_by="destination_namespace, destination_workload, time, source_namespace, source_workload, method, "
             "status_class, node, reporter",
    partition_by="toYYYYMM(time)",
    ttl_key="rollup_ttl_days",
    engine="AggregatingMergeTree",
    source=HTTP_FLOWS,
    where="l7_type = 'RESPONSE'",
)

DNS_ROLLUP = Rollup(
    name="dns_rollup_1m",
    comment="DNS queries and responses per minute, asking workload, name, rcode and query types",
    columns=(
        _ROLLUP_TIME,
        Column("node", LC, expr="node"),
        Column("source_namespace", LC, comment="namespace of the pod that asked", expr=_CLIENT.format("namespace")),
        Column("source_workload", LC, comment="workload of the pod that asked", expr=_CLIENT_IDENTITY),
        Column("query", "String", "ZSTD(1)", expr="query"),
        Column("qtypes", LC, comment="comma-separated, as Hubble's qtypes label", expr="arrayStringConcat(qtypes, ',')"),
        Column("rcode_name", LC, comment="empty for queries", expr="rcode_name"),
        Column("queries", _COUNT, expr=f"sumIf({FLOWS_OF_ROW}, l7_type = 'REQUEST')"),
        Column("responses", _COUNT, expr=f"sumIf({FLOWS_OF_ROW}, l7_type = 'RESPONSE')"),
        Column("responses_with_ips", _COUNT, expr=f"sumIf({FLOWS_OF_ROW}, l7_type = 'RESPONSE' AND notEmpty(ips))"),
        Column("ips_returned", _COUNT, expr=f"sum(length(ips) * {FLOWS_OF_ROW})"),
    ),
    order_by="source_namespace, source_workload, time, query, qtypes, rcode_name, node",
    partition_by="toYYYYMM(time)",
    ttl_key="rollup_ttl_days",
    engine="AggregatingMergeTree",
    source=DNS_FLOWS,
)

_LEDGER_COUNT = "UInt64"
INGEST_LEDGER = Table(
    name="ingest_ledger",
    comment="What each committed batch received and did with it, per source and node: the books that must balance",
    columns=(
        Column("time", TIME, "Delta, ZSTD(1)", comment="oldest flow of the batch from this node (commit time if none)"),
        Column("window_end", TIME, "Delta, ZSTD(1)", comment="newest flow of the batch from this node"),
        Column("committed_at", "DateTime64(3, 'UTC')", "Delta, ZSTD(1)", comment="when the batch was made durable"),
        Column("node", LC),
        Column("source", LC, comment="the Hubble address or the replayed file"),
        Column("ledger_id", "String", "ZSTD(1)", comment="batch id and node"),
        Column("received", _LEDGER_COUNT, comment="L7 flows received"),
        Column("filtered", _LEDGER_COUNT, comment="non-L7 flows received and not stored"),
        Column("stored_http", _LEDGER_COUNT),
        Column("stored_dns", _LEDGER_COUNT),
        Column("stored_audit", _LEDGER_COUNT, comment="L7 flows stored (every stored flow has an audit row)"),
        Column("stored_gaps", _LEDGER_COUNT),
        Column("duplicates", _LEDGER_COUNT, comment="L7 flows received that were already stored"),
        Column("quarantined", _LEDGER_COUNT, comment="input written to the dead-letter file"),
        Column("lost", _LEDGER_COUNT, comment="events Hubble reported lost"),
    ),
    order_by="node, time",
    id_column="ledger_id",
)

SCHEMA_MIGRATIONS = Table(
    name="schema_migrations",
    comment="Versions of the hubble-flowlog schema applied to this database",
    columns=(
        Column("version", "UInt32"),
        Column("applied_at", "DateTime64(3, 'UTC')"),
        Column("description", "String"),
    ),
    order_by="version",
    id_column="version",
    partition_by="tuple()",
    ttl_key="",
)

# The tables the ingester writes.
DATA_TABLES = (HTTP_FLOWS, DNS_FLOWS, L7_AUDIT, INGEST_GAPS, INGEST_LEDGER)
ROLLUPS = (HTTP_ROLLUP, DNS_ROLLUP)
ALL_TABLES = DATA_TABLES + ROLLUPS + (SCHEMA_MIGRATIONS,)
