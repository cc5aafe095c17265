"""Every stored table and column, defined once.

The DDL (and so the versioned migrations in `sql/migrations/`), the insert column
lists and the decoder's row layout are all derived from the definitions here. Adding
a column is one edit: append a `Column` with `since=<next version>`, give the decoder
a value for it, and run `flowlog migrate --write-sql` to emit the new migration.

This module knows nothing about connections; `migrate` applies what it renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Bumped whenever a column or table is added; migrations 1..SCHEMA_VERSION exist.
SCHEMA_VERSION = 1

TIME = "DateTime64(9, 'UTC')"
LC = "LowCardinality(String)"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    codec: str = ""
    comment: str = ""
    since: int = 1

    def ddl(self) -> str:
        codec = f" CODEC({self.codec})" if self.codec else ""
        comment = f" COMMENT '{self.comment}'" if self.comment else ""
        return f"`{self.name}` {self.type}{codec}{comment}"


@dataclass(frozen=True)
class Table:
    name: str
    comment: str
    columns: tuple[Column, ...]
    order_by: str
    # The column that identifies a stored row; used to drop rows stored before.
    id_column: str
    indexes: tuple[str, ...] = ()
    partition_by: str = "toDate(time)"
    ttl: bool = True
    since: int = 1

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def columns_as_of(self, version: int) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.since <= version)

    def create_sql(self, database: str, version: int) -> str:
        body = ",\n    ".join([c.ddl() for c in self.columns_as_of(version)] + list(self.indexes))
        ttl = "\nTTL toDateTime(time) + INTERVAL ${ttl_days} DAY" if self.ttl else ""
        settings = "non_replicated_deduplication_window = 1000"
        if self.ttl:
            settings += ", ttl_only_drop_parts = 1"
        return (f"CREATE TABLE IF NOT EXISTS `{database}`.`{self.name}`\n(\n    {body}\n)\n"
                f"ENGINE = MergeTree\nPARTITION BY {self.partition_by}\nORDER BY ({self.order_by}){ttl}\n"
                f"SETTINGS {settings}\nCOMMENT '{self.comment}'")


def _endpoint(side: str, what: str) -> tuple[Column, ...]:
    return (
        Column(f"{side}_namespace", LC, comment=f"Kubernetes namespace of the {what}"),
        Column(f"{side}_pod", LC, comment=f"pod name of the {what}"),
        Column(f"{side}_workload", LC, comment=f"workload of the {what} (Hubble workloads, else derived from pod name or app label)"),
        Column(f"{side}_identity", "UInt32", "ZSTD(1)", comment=f"Cilium security identity of the {what}"),
        Column(f"{side}_ip", "String", "ZSTD(1)", comment=f"IP address of the {what}"),
        Column(f"{side}_port", "UInt16", "ZSTD(1)", comment=f"L4 port of the {what}"),
        Column(f"{side}_labels", f"Array({LC})", comment=f"Cilium labels of the {what}"),
        Column(f"{side}_names", "Array(String)", "ZSTD(1)", comment=f"DNS names of the {what} known to Cilium"),
    )


FLOW_COLUMNS = (
    Column("time", TIME, "Delta, ZSTD(1)", comment="time of the flow, UTC, nanoseconds"),
    Column("node", LC, comment="Cilium node that observed the flow"),
    Column("flow_id", "String", "ZSTD(1)", comment="Hubble uuid, else a hash of the flow content"),
    Column("verdict", LC, comment="FORWARDED, DROPPED, ..."),
    Column("l7_type", LC, comment="REQUEST or RESPONSE"),
    Column("traffic_direction", LC, comment="INGRESS or EGRESS"),
    Column("is_reply", "Nullable(Bool)", comment="true for replies; NULL when Hubble did not know"),
    *_endpoint("src", "source"),
    *_endpoint("dst", "destination"),
)

HTTP_FLOWS = Table(
    name="http_flows",
    comment="One row per L7 HTTP flow (requests and responses)",
    columns=FLOW_COLUMNS + (
        Column("method", LC),
        Column("url", "String", "ZSTD(1)", comment="full URL as Hubble reported it (userinfo stripped)"),
        Column("host", LC),
        Column("path", "String", "ZSTD(1)"),
        Column("query", "String", "ZSTD(1)", comment="URL query string"),
        Column("protocol", LC, comment="HTTP/1.1, HTTP/2, ..."),
        Column("status_code", "UInt16", "ZSTD(1)", comment="0 on requests"),
        Column("latency_ns", "UInt64", "ZSTD(1)", comment="request to response, on responses; 0 on requests"),
        Column("headers", f"Map({LC}, String)", "ZSTD(1)", comment="allow-listed headers, sensitive values redacted"),
    ),
    order_by="toStartOfHour(time), dst_namespace, dst_workload, src_namespace, src_workload, time",
    id_column="flow_id",
    indexes=("INDEX idx_flow_id flow_id TYPE bloom_filter(0.01) GRANULARITY 4",),
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
    ),
    order_by="toStartOfHour(time), src_namespace, src_workload, query, time",
    id_column="flow_id",
    indexes=("INDEX idx_flow_id flow_id TYPE bloom_filter(0.01) GRANULARITY 4",),
)

L7_AUDIT = Table(
    name="l7_audit",
    comment="Every ingested L7 flow in full (flow.Flow protobuf bytes), for audits and re-derivation",
    columns=(
        Column("time", TIME, "Delta, ZSTD(1)"),
        Column("node", LC),
        Column("flow_id", "String", "ZSTD(1)"),
        Column("type", LC, comment="HTTP, DNS or KAFKA: which L7 record the flow holds"),
        Column("l7_type", LC),
        Column("flow", "String", "ZSTD(3)", comment="the flow.Flow message, protobuf wire format"),
    ),
    order_by="toStartOfHour(time), node, flow_id",
    id_column="flow_id",
)

INGEST_GAPS = Table(
    name="ingest_gaps",
    comment="Lost events, node status changes and stream interruptions: what may be missing",
    columns=(
        Column("time", TIME, "Delta, ZSTD(1)", comment="when the gap was reported"),
        Column("node", LC),
        Column("gap_id", "String", "ZSTD(1)", comment="hash of the report, so a replay stores it once"),
        Column("kind", LC, comment="lost_events, node_status or stream_interrupted"),
        Column("source", LC, comment="who lost them (HUBBLE_RING_BUFFER, ...) or the source address"),
        Column("count", "UInt64", comment="events lost; 0 when unknown"),
        Column("first", TIME, comment="first time covered by the gap"),
        Column("last", TIME, comment="last time covered by the gap"),
        Column("message", "String", "ZSTD(1)"),
    ),
    order_by="node, time",
    id_column="gap_id",
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
    ttl=False,
)

DATA_TABLES = (HTTP_FLOWS, DNS_FLOWS, L7_AUDIT, INGEST_GAPS)
ALL_TABLES = DATA_TABLES + (SCHEMA_MIGRATIONS,)
MIGRATION_NAMES = {1: "core_tables"}


def migration_statements(version: int, database: str) -> list[str]:
    """The statements that take the schema from version-1 to version (templated on ttl_days)."""
    statements = []
    for table in ALL_TABLES:
        if table.since == version:
            statements.append(table.create_sql(database, version))
            continue
        for column in table.columns:
            if column.since == version and table.since < version:
                statements.append(f"ALTER TABLE `{database}`.`{table.name}` ADD COLUMN IF NOT EXISTS {column.ddl()}")
    return statements


def migration_sql(version: int) -> str:
    """A migration file's text: the statements with ${database} left as a placeholder."""
    header = (f"-- Migration {version:04d}_{MIGRATION_NAMES[version]}: generated from ingest/schema.py by\n"
              "-- `flowlog migrate --write-sql`; do not edit. ${database} and ${ttl_days} are\n"
              "-- filled in from the config when `flowlog migrate` applies it.\n\n")
    return header + ";\n\n".join(migration_statements(version, "${database}")) + ";\n"
