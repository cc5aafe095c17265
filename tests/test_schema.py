"""Migrations are derived from ingest/schema.py, applied once, and match what the store reports."""

from __future__ import annotations

import pytest

from ingest.migrate import MigrationError, SQL_DIR, column_drift, migrate, migration_files, render
from ingest.schema import DATA_TABLES, SCHEMA_MIGRATIONS, SCHEMA_VERSION


def test_committed_sql_migrations_are_current():
    committed = {p.name: p.read_text() for p in SQL_DIR.glob("*.sql")}
    assert committed == migration_files(), "run: flowlog migrate --write-sql"


def test_migrate_is_idempotent_and_tables_match_the_definitions(config, client):
    db = config.store.database
    assert migrate(client, db, 0) == 0
    assert column_drift(client, db) == []
    versions = client.query(f"SELECT version FROM `{db}`.{SCHEMA_MIGRATIONS.name}").result_rows
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_newer_schema_is_refused(config, client):
    db = config.store.database
    client.insert(f"`{db}`.{SCHEMA_MIGRATIONS.name}", [[SCHEMA_VERSION + 1, 0, "from the future"]],
                  column_names=SCHEMA_MIGRATIONS.column_names)
    with pytest.raises(MigrationError, match="newer than this flowlog knows"):
        migrate(client, db, 0)


def test_ttl_is_rendered_only_when_set():
    with_ttl = "\n".join(render(1, "flowlog", 30))
    assert with_ttl.count("TTL toDateTime(time) + INTERVAL 30 DAY") == len(DATA_TABLES)
    assert "\nTTL " not in "\n".join(render(1, "flowlog", 0))


def test_hand_edited_table_is_reported(config, client):
    db = config.store.database
    client.command(f"ALTER TABLE `{db}`.http_flows DROP COLUMN query")
    assert any(line.startswith("http_flows:") for line in column_drift(client, db))
