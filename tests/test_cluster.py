"""`flowlog migrate --cluster`: valid ClickHouse, and the same columns as a single server."""

from __future__ import annotations

import re
import subprocess
import sys

from ingest.store.migrations import SCHEMA_VERSION, render, render_current
from ingest.store.schema import ALL_TABLES, Cluster

from .helpers import REPO

CLUSTER = Cluster("flowlog_cluster")


def cluster_statements(config) -> list[str]:
    return [s for v in range(1, SCHEMA_VERSION + 1) for s in render(v, config.store, CLUSTER)]


def test_every_cluster_statement_is_valid_clickhouse(config, client):
    statements = cluster_statements(config)
    assert len(statements) >= 2 * len(ALL_TABLES)
    for statement in statements:
        client.query(f"EXPLAIN AST {statement}")
    text = "\n".join(statements)
    assert text.count(" ON CLUSTER `flowlog_cluster`") == len(statements)
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/" in text
    assert "ENGINE = ReplicatedAggregatingMergeTree(" in text
    assert "ENGINE = Distributed(`flowlog_cluster`, " in text and "cityHash64(node))" in text


def test_the_cluster_schema_as_of_now_is_valid_clickhouse(config, client):
    statements = render_current(config.store, CLUSTER)
    for statement in statements:
        client.query(f"EXPLAIN AST {statement}")
    creates = [s for s in statements if s.startswith("CREATE")]
    assert all(" ON CLUSTER `flowlog_cluster`" in s for s in creates)
    # The database; each table, shard-local and Distributed; each rollup's view; the input
    # table (one per node, no shards) and its three views.
    assert len(creates) == 1 + 2 * len(ALL_TABLES) + sum(t.name.endswith("_1m") for t in ALL_TABLES) + 1 + 3
    assert statements[-1].startswith(f"INSERT INTO `{config.store.database}`.`schema_migrations`")
    # Sent to its shard before the INSERT returns, so the version read next finds it.
    assert " SETTINGS insert_distributed_sync = 1 VALUES " in statements[-1]


def test_cluster_tables_have_the_single_server_columns(config, client):
    """Create the shard-local tables with their replication stripped, and compare what the engine reports."""
    db = config.store.database
    shard = f"{db}_shard"
    client.command(f"CREATE DATABASE `{shard}`")
    try:
        for statement in cluster_statements(config):
            if not statement.startswith("CREATE TABLE") or "ENGINE = Distributed" in statement:
                continue
            local = re.sub(r"ENGINE = Replicated(\w+)\('[^']*', '\{replica\}'\)", r"ENGINE = \1",
                           statement.replace(" ON CLUSTER `flowlog_cluster`", "").replace(f"`{db}`.", f"`{shard}`."))
            client.command(local)
        for alter in cluster_statements(config):
            if alter.startswith("ALTER") and "_local`" in alter and "MODIFY QUERY" not in alter:  # tables only
                client.command(alter.replace(" ON CLUSTER `flowlog_cluster`", "").replace(f"`{db}`.", f"`{shard}`."))

        def columns(database, suffix):
            rows = client.query("SELECT table, name, type FROM system.columns WHERE database = {d:String} "
                                "ORDER BY table, position", parameters={"d": database}).result_rows
            return [(t.removesuffix(suffix), n, ty) for t, n, ty in rows
                    if not t.endswith(("_mv", "_from_input")) and t != "flow_input"]

        assert columns(shard, "_local") == columns(db, "")
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{shard}`")


def test_migrate_print_cluster_cli_and_random_sharding():
    result = subprocess.run([sys.executable, "-m", "ingest", "migrate", "--print", "--cluster", "c1",
                             "--sharding", "random"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ENGINE = Distributed(`c1`, `flowlog`, `http_flows_local`, rand())" in result.stdout
