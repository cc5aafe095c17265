"""Schema migrations: applies the versions rendered by `schema`, once each, in order.

Applied versions are recorded in `schema_migrations`. A database whose recorded
version is newer than this build knows is refused rather than written to. After
migrating, the columns the store reports (`system.columns`) are compared with the
definitions, so a hand-edited table is reported instead of failing inserts later.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from .config import StoreConfig
from .schema import ALL_TABLES, Cluster, MIGRATION_NAMES, SCHEMA_MIGRATIONS, SCHEMA_VERSION, migration_sql, migration_statements

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "migrations"


class MigrationError(RuntimeError):
    pass


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


def applied_version(client, database: str) -> int:
    exists = client.query("SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                          parameters={"db": database, "t": SCHEMA_MIGRATIONS.name}).result_rows[0][0]
    if not exists:
        return 0
    rows = client.query(f"SELECT max(version) FROM `{database}`.`{SCHEMA_MIGRATIONS.name}`").result_rows
    return int(rows[0][0] or 0)


def render(version: int, store: StoreConfig, cluster: Cluster | None = None) -> list[str]:
    """The statements of one migration for the configured database (on a cluster if given);
    a TTL of 0 days keeps rows forever."""
    statements = migration_statements(version, store.database, cluster)
    for key in ("ttl_days", "rollup_ttl_days"):
        days = int(getattr(store, key))
        line = f"\nTTL toDateTime(time) + INTERVAL ${{{key}}} DAY"
        statements = [s.replace(line, line.replace(f"${{{key}}}", str(days)) if days > 0 else "")
                      for s in statements]
    return statements


def migrate(client, store: StoreConfig, cluster: Cluster | None = None) -> int:
    """Apply every missing migration; returns the number applied."""
    database = store.database
    on_cluster = f" ON CLUSTER `{cluster.name}`" if cluster else ""
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster}")
    current = applied_version(client, database)
    if current > SCHEMA_VERSION:
        raise MigrationError(f"database {database} has schema version {current}, newer than this "
                             f"flowlog knows ({SCHEMA_VERSION}); upgrade flowlog")
    applied = 0
    for version in range(current + 1, SCHEMA_VERSION + 1):
        for statement in render(version, store, cluster):
            client.command(statement)
        client.insert(f"`{database}`.`{SCHEMA_MIGRATIONS.name}`",
                      [[version, datetime.now(timezone.utc), MIGRATION_NAMES[version]]],
                      column_names=SCHEMA_MIGRATIONS.column_names)
        log.info("applied schema migration %04d_%s to %s", version, MIGRATION_NAMES[version], database)
        applied += 1
    drift = column_drift(client, database)
    if drift:
        raise MigrationError("the tables differ from the schema definition: " + "; ".join(drift))
    for line in sort_key_drift(client, database, cluster):
        log.warning("%s", line)
    return applied


def column_drift(client, database: str) -> list[str]:
    """Differences between system.columns and the definitions, as readable lines."""
    rows = client.query("SELECT table, name, type FROM system.columns WHERE database = {db:String} "
                        "ORDER BY table, position", parameters={"db": database}).result_rows
    actual: dict[str, list[tuple[str, str]]] = {}
    for table, name, type_ in rows:
        actual.setdefault(table, []).append((name, type_))
    drift = []
    for table in ALL_TABLES:
        expected = [(c.name, c.type) for c in table.columns]
        if actual.get(table.name) != expected:
            drift.append(f"{table.name}: expected {expected}, found {actual.get(table.name)}")
    return drift


def sort_key_drift(client, database: str, cluster: Cluster | None = None) -> list[str]:
    """Tables sorted otherwise than the definitions say. Not an error: a store created by an
    older build keeps its key (ClickHouse cannot change it in place); rows are the same.
    On a cluster the rows, and so the key, are in the shard-local tables."""
    rows = client.query("SELECT name, sorting_key FROM system.tables WHERE database = {db:String}",
                        parameters={"db": database}).result_rows
    actual = dict(rows)
    drift = []
    for table in ALL_TABLES:
        name = table.local_name if cluster else table.name
        # A one-column key comes back in parentheses.
        if name in actual and actual[name] not in (table.order_by, f"({table.order_by})"):
            drift.append(f"{name} is sorted by {actual[name]}; this version sorts new tables by {table.order_by}, "
                         "which stores them smaller: copy the rows into a table created by `flowlog migrate "
                         "--print` to use it")
    return drift
