"""Schema migrations: how each version changed the tables, and applying them once each, in order.

`schema` defines the tables as they are now; each `Migration` here records what one
version did: the tables it created, the columns it added, the columns it changed (with
their definition before, and a statement to run first when stored values must be
converted), the settings it turned on. The DDL of every version, for one server or a
cluster, is derived from the two together, so the migration files in `sql/migrations/`
are generated, never written by hand, and a table as an older version left it
(`columns_as_of`) is known without keeping the old definitions in `schema`.

An empty database is created as this version defines it, in one step. Applied
versions are recorded in `schema_migrations`. A database whose recorded version is
newer than this build knows is refused rather than written to. After migrating, the
columns the store reports (`system.columns`) are compared with the definitions, so a
hand-edited table is reported instead of failing inserts later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..config import StoreConfig
from .flow_input import FLOW_INPUT, InputTable
from .schema import (ALL_TABLES, DNS_FLOWS, DNS_ROLLUP, HTTP_FLOWS, HTTP_ROLLUP, INGEST_GAPS, INGEST_LEDGER, L7_AUDIT,
                     LC, SCHEMA_MIGRATIONS, VERTICAL_MERGES, Cluster, Column, Rollup, Setting, Table, on_cluster)

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent.parent / "sql" / "migrations"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Change:
    """A column of table altered in place: `before` is its definition until then. `prepare`
    is an ALTER clause run first, on the table that holds the rows, so that the stored
    values convert to the new type (a MODIFY that meets one it cannot convert fails after
    the table has already taken the new type)."""
    table: Table
    before: Column
    prepare: str = ""


@dataclass(frozen=True)
class ViewChange:
    """A rollup column whose expression in the rollup's view changed: `before` is the
    expression until then. The view's query is replaced in place (ALTER TABLE ... MODIFY
    QUERY), so no inserted block goes unrolled-up; rows rolled up before keep their values."""
    rollup: Rollup
    column: str
    before: str


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    summary: str  # what it did and why, for the comment heading its DDL
    creates: tuple[Table, ...] = ()
    # (table, column name): added at the end of the table.
    adds: tuple[tuple[Table, str], ...] = ()
    changes: tuple[Change, ...] = ()
    # (table, setting name): turned on with ALTER TABLE ... MODIFY SETTING.
    settings: tuple[tuple[Table, str], ...] = ()
    views: tuple[ViewChange, ...] = ()


def _before_6(table: Table) -> tuple[Change, ...]:
    """Schema version 6 made the flow tables smaller (README, Performance): flow_id a UUID,
    path and query computed from url, T64 on ports, ZSTD(9) on url and headers, ZSTD(3)
    on IPs."""
    changes = [Change(table, Column("flow_id", "String", "ZSTD(1)", comment="Hubble uuid, else a hash of the flow "
                                    "content"),
                      # As schema.uuid_text: an id stored before that is no UUID becomes the MD5 of its
                      # text. A server runs mutations in the background: the MODIFY must not start
                      # before it is done.
                      prepare="UPDATE flow_id = lower(hex(MD5(toString(flow_id)))) WHERE "
                              "toUUIDOrNull(toString(flow_id)) IS NULL SETTINGS mutations_sync = 2")]
    for side, what in (("src", "source"), ("dst", "destination")):
        changes += [Change(table, Column(f"{side}_ip", "String", "ZSTD(1)", comment=f"IP address of the {what}")),
                    Change(table, Column(f"{side}_port", "UInt16", "ZSTD(1)", comment=f"L4 port of the {what}"))]
    if table is HTTP_FLOWS:
        changes += [Change(table, Column("url", "String", "ZSTD(1)",
                                         comment="full URL as Hubble reported it (userinfo stripped)")),
                    Change(table, Column("path", "String", "ZSTD(1)")),
                    Change(table, Column("query", "String", "ZSTD(1)", comment="URL query string")),
                    Change(table, Column("headers", f"Map({LC}, String)", "ZSTD(1)",
                                         comment="allow-listed headers, sensitive values redacted"))]
    return tuple(changes)


MIGRATIONS = (
    Migration(1, "core_tables", "the typed flow tables, the audit table of whole flows, the gaps",
              creates=(HTTP_FLOWS, DNS_FLOWS, L7_AUDIT, INGEST_GAPS, SCHEMA_MIGRATIONS)),
    Migration(2, "rollups_1m", "per-minute rollups of HTTP and DNS, filled by materialized views",
              creates=(HTTP_ROLLUP, DNS_ROLLUP)),
    Migration(3, "ingest_ledger", "a ledger row per batch and node: received, stored, duplicates, lost",
              creates=(INGEST_LEDGER,)),
    Migration(4, "http_dst_dns_name", "the DNS name a client resolved for a server outside the cluster",
              adds=((HTTP_FLOWS, "dst_dns_name"),)),
    Migration(5, "vertical_merges", "vertical merges for the wide flow tables: less memory when parts merge",
              settings=tuple((table, setting.name) for table in (HTTP_FLOWS, DNS_FLOWS, L7_AUDIT)
                             for setting in VERTICAL_MERGES)),
    Migration(6, "smaller_flows", "smaller flow tables: flow_id a UUID, path and query computed from url, "
              "stronger codecs", changes=_before_6(HTTP_FLOWS) + _before_6(DNS_FLOWS)),
    Migration(7, "workload_names", "one name for an endpoint with no workload everywhere (world 203.0.113.10), "
              "rolled up from now on; rows rolled up before keep an empty workload",
              adds=tuple((table, f"{side}_workload_name") for table in (HTTP_FLOWS, DNS_FLOWS) for side in ("src", "dst")),
              views=(ViewChange(HTTP_ROLLUP, "source_workload", "if(l7_type = 'RESPONSE', dst_workload, src_workload)"),
                     ViewChange(HTTP_ROLLUP, "destination_workload",
                                "if(l7_type = 'RESPONSE', src_workload, dst_workload)"),
                     ViewChange(DNS_ROLLUP, "source_workload", "if(l7_type = 'RESPONSE', dst_workload, src_workload)"))),
    Migration(8, "aggregate_count", "the flows an aggregated exporter line stands for (Cilium 1.19), counted with "
              "that weight by the rollups from now on",
              adds=tuple((table, "aggregate_count") for table in (HTTP_FLOWS, DNS_FLOWS, L7_AUDIT)),
              views=(ViewChange(HTTP_ROLLUP, "requests", "count()"),
                     ViewChange(HTTP_ROLLUP, "errors", "countIf(status_code >= 500)"),
                     ViewChange(HTTP_ROLLUP, "latency_sum_ns", "sum(latency_ns)"),
                     ViewChange(DNS_ROLLUP, "queries", "countIf(l7_type = 'REQUEST')"),
                     ViewChange(DNS_ROLLUP, "responses", "countIf(l7_type = 'RESPONSE')"),
                     ViewChange(DNS_ROLLUP, "responses_with_ips", "countIf(l7_type = 'RESPONSE' AND notEmpty(ips))"),
                     ViewChange(DNS_ROLLUP, "ips_returned", "sum(length(ips))"))),
    Migration(9, "weighted_latency", "HTTP latency in the rollup weighted by the flows a row stands for, without "
              "the responses that carry none, and their count for the mean; rows rolled up before count all their "
              "responses",
              adds=((HTTP_ROLLUP, "responses_with_latency"),),
              views=(ViewChange(HTTP_ROLLUP, "latency", "quantileTDigestState(latency_ns)"),)),
    Migration(10, "flow_input", "an input table the flows can be sent to as protobuf, from which ClickHouse derives "
              "l7_audit, http_flows and dns_flows (store.derive = store)",
              creates=(FLOW_INPUT,)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
# Every table, in the order they are created (the input table's views write to the flow tables).
EVERY_TABLE = ALL_TABLES + (FLOW_INPUT,)
MIGRATION_NAMES = {m.version: m.name for m in MIGRATIONS}

for _migration in MIGRATIONS:
    for _table, _name in _migration.settings:
        if not next(s for s in _table.settings if s.name == _name).alterable:
            # Only CREATE TABLE can give it: it belongs in the table's definition, for new tables.
            raise ImportError(f"migration {_migration.version}: {_table.name} setting {_name} cannot be altered")


def created_in(table: Table) -> int:
    """The version whose migration created table."""
    return next(m.version for m in MIGRATIONS if any(t is table for t in m.creates))


def columns_as_of(table: Table, version: int) -> tuple[Column, ...]:
    """Table's columns as schema version `version` left them (none before it was created)."""
    if version < created_in(table):
        return ()
    columns = list(table.columns)
    for migration in reversed(MIGRATIONS):
        if migration.version <= version:
            break
        for change in migration.changes:
            if change.table is table:
                columns = [change.before if c.name == change.before.name else c for c in columns]
        added = {name for t, name in migration.adds if t is table}
        columns = [c for c in columns if c.name not in added]
    return tuple(columns)


def _view_columns_as_of(rollup: Rollup, version: int) -> tuple[Column, ...]:
    """The rollup's columns with the expressions its view had as of version."""
    columns = list(columns_as_of(rollup, version))
    for migration in reversed(MIGRATIONS):
        if migration.version <= version:
            break
        for change in migration.views:
            if change.rollup is rollup:
                columns = [replace(c, expr=change.before) if c.name == change.column else c for c in columns]
    return tuple(columns)


def _settings_as_of(table: Table, version: int) -> tuple[Setting, ...]:
    later = {name for m in MIGRATIONS if m.version > version for t, name in m.settings if t is table}
    return tuple(s for s in table.settings if s.name not in later)


def _alter(database: str, names: list[str], cluster: Cluster | None, clause: str) -> list[str]:
    return [f"ALTER TABLE `{database}`.`{name}`{on_cluster(cluster)} {clause}" for name in names]


def migration_statements(version: int, database: str, cluster: Cluster | None = None) -> list[str]:
    """The statements that take the schema from version-1 to version (templated on the TTLs)."""
    migration = MIGRATIONS[version - 1]
    statements = []
    for table in EVERY_TABLE:
        if isinstance(table, InputTable):
            # Its views are made from the target tables' columns as they are now: a migration
            # that changes those tables must also recreate the views.
            if any(t is table for t in migration.creates):
                statements += [table.create_sql(database, cluster)] + table.view_sqls(database, cluster)
            continue
        if any(t is table for t in migration.creates):
            statements.append(table.create_sql(database, cluster, columns_as_of(table, version),
                                               _settings_as_of(table, version)))
            if cluster is not None:
                statements.append(table.distributed_sql(database, cluster))
            if isinstance(table, Rollup):
                statements.append(table.view_sql(database, cluster, _view_columns_as_of(table, version)))
            continue
        # On a cluster, the Distributed table's columns must match the shard-local table's;
        # the rows, and so the values to convert and the settings, are in the shard-local one.
        names = [table.local_name, table.name] if cluster else [table.name]
        holder = [table.local_name if cluster else table.name]
        added = {name for t, name in migration.adds if t is table}
        changes = {c.before.name: c for c in migration.changes if c.table is table}
        columns = columns_as_of(table, version)
        for index, column in enumerate(columns):
            if column.name in added:
                statements += _alter(database, names, cluster, f"ADD COLUMN IF NOT EXISTS {column.ddl()}")
            change = changes.get(column.name)
            if change is None:
                continue
            if change.prepare:
                statements += _alter(database, holder, cluster, change.prepare)
            if column.alias and not change.before.alias:
                # A stored column with a codec cannot be modified into an ALIAS, and REMOVE
                # CODEC fails once it has none; its values are what the alias computes. Both
                # clauses can run again, as a migration cut short is redone whole.
                clauses = [f"DROP COLUMN IF EXISTS `{column.name}`",
                           f"ADD COLUMN IF NOT EXISTS {column.ddl()} AFTER `{columns[index - 1].name}`"]
            else:
                clauses = [f"MODIFY COLUMN {column.ddl()}"]
            statements += [statement for name in names for clause in clauses
                           for statement in _alter(database, [name], cluster, clause)]
        if any(change.rollup is table for change in migration.views):
            # The view reads the shard-local raw table, so it exists once per shard.
            statements.append(f"ALTER TABLE `{database}`.`{table.view_name}`{on_cluster(cluster)} MODIFY QUERY "
                              + table.view_select(database, cluster, _view_columns_as_of(table, version)))
        turned_on = [s.sql() for s in table.settings if any(t is table and n == s.name for t, n in migration.settings)]
        if turned_on:
            statements += _alter(database, holder, cluster, f"MODIFY SETTING {', '.join(turned_on)}")
    return statements


def migration_sql(version: int) -> str:
    """A migration file's text: the statements with ${database} left as a placeholder."""
    header = (f"-- Migration {version:04d}_{MIGRATION_NAMES[version]}: {MIGRATIONS[version - 1].summary}.\n"
              "-- Generated from ingest/store/ by\n"
              "-- `flowlog migrate --write-sql`; do not edit. ${database}, ${ttl_days} and\n"
              "-- ${rollup_ttl_days} are filled in from the config when `flowlog migrate` applies it.\n"
              + ("-- By hand on ClickHouse before 24.1: SET allow_experimental_alter_materialized_view_structure = 1\n"
                 if any(_settings_for(s) for s in migration_statements(version, "${database}")) else "")
              + "\n")
    return header + ";\n\n".join(migration_statements(version, "${database}")) + ";\n"


def migration_files() -> dict[str, str]:
    """File name -> text of every migration, as committed under sql/migrations/."""
    return {f"{v:04d}_{MIGRATION_NAMES[v]}.sql": migration_sql(v) for v in range(1, SCHEMA_VERSION + 1)}


def write_sql(directory: Path = SQL_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in migration_files().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written


def cluster_of(store: StoreConfig) -> Cluster | None:
    """The store's cluster, or None for a single server."""
    if not store.cluster:
        return None
    return Cluster(store.cluster, "cityHash64(node)" if store.sharding == "node" else "rand()")


def applied_version(client, database: str) -> int:
    exists = client.query("SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                          parameters={"db": database, "t": SCHEMA_MIGRATIONS.name}).result_rows[0][0]
    if not exists:
        return 0
    rows = client.query(f"SELECT max(version) FROM `{database}`.`{SCHEMA_MIGRATIONS.name}`").result_rows
    return int(rows[0][0] or 0)


def render(version: int, store: StoreConfig, cluster: Cluster | None = None) -> list[str]:
    """The statements of one migration for the configured database (on a cluster if given)."""
    return _with_ttls(migration_statements(version, store.database, cluster), store)


def render_current(store: StoreConfig, cluster: Cluster | None = None) -> list[str]:
    """The schema as it is now, for a DBA who creates the tables by hand: the database, every
    table (and each rollup's view) as this version defines it, and the row that records the
    version, so `flowlog run` finds nothing to migrate. Applied to an empty server, it leaves
    the same tables as every migration in turn."""
    return ([f"CREATE DATABASE IF NOT EXISTS `{store.database}`{on_cluster(cluster)}"]
            + _current(store, cluster, ALL_TABLES) + _current(store, cluster, (FLOW_INPUT,))
            + [_record_current(store, cluster)])


def _current(store: StoreConfig, cluster: Cluster | None, tables: tuple[Table, ...]) -> list[str]:
    """The statements that create tables (and their views) as this version defines them."""
    database = store.database
    statements = []
    for table in tables:
        statements.append(table.create_sql(database, cluster))
        if isinstance(table, InputTable):
            statements += table.view_sqls(database, cluster)
            continue
        if cluster is not None:
            statements.append(table.distributed_sql(database, cluster))
        if isinstance(table, Rollup):
            statements.append(table.view_sql(database, cluster))
    return _with_ttls(statements, store)


def _record_current(store: StoreConfig, cluster: Cluster | None) -> str:
    columns = ", ".join(f"`{name}`" for name in SCHEMA_MIGRATIONS.column_names)
    settings = "".join(f" SETTINGS {name} = {value}" for name, value in _record_settings(cluster).items())
    return (f"INSERT INTO `{store.database}`.`{SCHEMA_MIGRATIONS.name}` ({columns}){settings} VALUES "
            f"({SCHEMA_VERSION}, now64(3), '{MIGRATION_NAMES[SCHEMA_VERSION]} (created as of this version)')")


def _record_settings(cluster: Cluster | None) -> dict:
    """On a cluster `schema_migrations` is Distributed, which sends a row to its shard in
    the background unless told otherwise: the version read right after (whether inserts
    may skip asking for the column types, and /readyz) would miss it."""
    return {"insert_distributed_sync": 1} if cluster is not None else {}


def _with_ttls(statements: list[str], store: StoreConfig) -> list[str]:
    """The TTL placeholders filled from the config; a TTL of 0 days keeps rows forever."""
    for key in ("ttl_days", "rollup_ttl_days"):
        days = int(getattr(store, key))
        line = f"\nTTL toDateTime(time) + INTERVAL ${{{key}}} DAY"
        statements = [s.replace(line, line.replace(f"${{{key}}}", str(days)) if days > 0 else "")
                      for s in statements]
    return statements


# ClickHouse before 24.1 takes ALTER TABLE ... MODIFY QUERY only with this setting on
# (ClickHouse/ClickHouse#59281 dropped the requirement from its docs); later ones accept it.
_MODIFY_QUERY_SETTINGS = {"allow_experimental_alter_materialized_view_structure": 1}


def _settings_for(statement: str) -> dict | None:
    return _MODIFY_QUERY_SETTINGS if " MODIFY QUERY " in statement else None


def migrate(client, store: StoreConfig, cluster: Cluster | None = None) -> int:
    """Apply every missing migration; returns the number of versions the database moved up.

    A database holding nothing of an older version is created as of now (`render_current`:
    15 statements instead of the migrations' 49 and 10 inserts, each a round trip, on a cluster a
    distributed DDL); `tests/test_schema.py` checks both leave the same tables."""
    database = store.database
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster(cluster)}")
    current = applied_version(client, database)
    if current > SCHEMA_VERSION:
        raise MigrationError(f"database {database} has schema version {current}, newer than this "
                             f"flowlog knows ({SCHEMA_VERSION}); upgrade flowlog")
    if current == 0 and _holds_nothing_older(client, database):
        # Also a creation cut short: every statement creates only what is missing. The input
        # table's views come after the check: they need the flow tables as of now.
        for statement in _current(store, cluster, ALL_TABLES):
            client.command(statement)
        if _drifted(client, database, ALL_TABLES):
            # A table of an older version appeared meanwhile (an older build's pod migrating
            # the same empty database): recording this version now would stop anyone from
            # migrating it, so it is migrated in turn, which each step can be redone for.
            applied = _migrate_in_turn(client, store, cluster, 0)
        else:
            for statement in _current(store, cluster, (FLOW_INPUT,)):
                client.command(statement)
            client.command(_record_current(store, cluster))
            log.info("created the schema as of version %04d_%s in %s", SCHEMA_VERSION,
                     MIGRATION_NAMES[SCHEMA_VERSION], database)
            applied = SCHEMA_VERSION
    else:
        applied = _migrate_in_turn(client, store, cluster, current)
    drift = column_drift(client, database)
    if drift:
        raise MigrationError("the tables differ from the schema definition: " + "; ".join(drift))
    for line in sort_key_drift(client, database, cluster):
        log.warning("%s", line)
    return applied


def _migrate_in_turn(client, store: StoreConfig, cluster: Cluster | None, current: int) -> int:
    database = store.database
    for version in range(current + 1, SCHEMA_VERSION + 1):
        for statement in render(version, store, cluster):
            client.command(statement, settings=_settings_for(statement))
        client.insert(f"`{database}`.`{SCHEMA_MIGRATIONS.name}`",
                      [[version, datetime.now(timezone.utc), MIGRATION_NAMES[version]]],
                      column_names=SCHEMA_MIGRATIONS.column_names, settings=_record_settings(cluster) or None)
        log.info("applied schema migration %04d_%s to %s", version, MIGRATION_NAMES[version], database)
    return SCHEMA_VERSION - current


def _holds_nothing_older(client, database: str) -> bool:
    """No table, or only tables as this version defines them: nothing a migration must change."""
    return all(found is None for found in _drifted(client, database).values())


def _drifted(client, database: str, tables: tuple[Table, ...] = EVERY_TABLE) -> dict[str, list[tuple[str, str]] | None]:
    """Each of tables whose columns differ from its definition -> the columns found (None: no such table)."""
    rows = client.query("SELECT table, name, type FROM system.columns WHERE database = {db:String} "
                        "ORDER BY table, position", parameters={"db": database}).result_rows
    actual: dict[str, list[tuple[str, str]]] = {}
    for table, name, type_ in rows:
        actual.setdefault(table, []).append((name, type_))
    return {table.name: actual.get(table.name) for table in tables
            if actual.get(table.name) != [(c.name, c.type) for c in table.columns]}


def column_drift(client, database: str) -> list[str]:
    """Differences between system.columns and the definitions, as readable lines."""
    columns = {table.name: [(c.name, c.type) for c in table.columns] for table in EVERY_TABLE}
    return [f"{name}: expected {columns[name]}, found {found}" for name, found in _drifted(client, database).items()]


def sort_key_drift(client, database: str, cluster: Cluster | None = None) -> list[str]:
    """Tables sorted otherwise than the definitions say. Not an error: a store created by an
    older build keeps its key (ClickHouse cannot change it in place); rows are the same.
    On a cluster the rows, and so the key, are in the shard-local tables."""
    rows = client.query("SELECT name, sorting_key FROM system.tables WHERE database = {db:String}",
                        parameters={"db": database}).result_rows
    actual = dict(rows)
    drift = []
    for table in ALL_TABLES:  # the input table holds no rows: no sort key
        name = table.local_name if cluster else table.name
        # A one-column key comes back in parentheses.
        if name in actual and actual[name] not in (table.order_by, f"({table.order_by})"):
            drift.append(f"{name} is sorted by {actual[name]}; this version sorts new tables by {table.order_by}, "
                         "which stores them smaller: copy the rows into a table created by `flowlog migrate "
                         "--print` to use it")
    return drift
