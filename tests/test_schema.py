"""Migrations are derived from ingest/store/, applied once, and match what the store reports."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from ingest.config import StoreConfig
from ingest.store.migrations import (MIGRATION_NAMES, MIGRATIONS, SCHEMA_VERSION, SQL_DIR, MigrationError,
                                     applied_version, column_drift, columns_as_of, migrate, migration_files, render,
                                     render_current, sort_key_drift)
from ingest.store.schema import DATA_TABLES, HTTP_FLOWS, ROLLUPS, SCHEMA_MIGRATIONS

from .helpers import REPO, create_at, rows_as_of


def test_committed_sql_migrations_are_current():
    committed = {p.name: p.read_text() for p in SQL_DIR.glob("*.sql")}
    assert committed == migration_files(), "run: flowlog migrate --write-sql"


def test_migrate_is_idempotent_and_tables_match_the_definitions(config, client):
    db = config.store.database
    assert migrate(client, config.store) == 0
    assert column_drift(client, db) == []
    # An empty database is created as of now, which its one row says.
    versions = client.query(f"SELECT version, description FROM `{db}`.{SCHEMA_MIGRATIONS.name}").result_rows
    assert versions == [(SCHEMA_VERSION, f"{MIGRATION_NAMES[SCHEMA_VERSION]} (created as of this version)")]


def test_a_creation_cut_short_is_finished_as_of_now(config, client):
    store = dataclasses.replace(config.store, database=config.store.database + "_cut")
    statements = render_current(store)
    try:
        for statement in statements[:len(statements) // 2]:  # neither every table nor the version row
            client.command(statement)
        assert applied_version(client, store.database) == 0
        assert migrate(client, store) == SCHEMA_VERSION
        assert column_drift(client, store.database) == [] and applied_version(client, store.database) == SCHEMA_VERSION
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{store.database}`")


def test_a_table_an_older_build_creates_meanwhile_is_migrated_not_recorded_over(config, client):
    """An older build's pod runs its migration 1 on the same empty database while this one
    creates the schema as of now: its l7_audit (version 1's columns) comes first. Recording
    this version over it would leave it unmigrated for good; it is migrated in turn."""
    store = dataclasses.replace(config.store, database=config.store.database + "_race")
    older_audit = next(s for s in render(1, store) if s.startswith(f"CREATE TABLE IF NOT EXISTS `{store.database}`"
                                                                   f".`l7_audit`"))

    class OlderPodMeanwhile:
        def __init__(self):
            self.raced = False

        def command(self, statement, **kwargs):
            if not self.raced and statement.startswith(f"CREATE TABLE IF NOT EXISTS `{store.database}`.`l7_audit`"):
                self.raced = True
                client.command(older_audit)
            return client.command(statement, **kwargs)

        def __getattr__(self, name):
            return getattr(client, name)

    racing = OlderPodMeanwhile()
    try:
        assert migrate(racing, store) == SCHEMA_VERSION and racing.raced
        assert column_drift(client, store.database) == []
        assert applied_version(client, store.database) == SCHEMA_VERSION
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{store.database}`")


def test_tables_of_an_older_version_with_no_version_recorded_are_migrated_in_turn(config, client, caplog):
    """Migration 1 of an older build cut short before it recorded itself: its tables are
    version 1's, so each later migration has to change them."""
    store = dataclasses.replace(config.store, database=config.store.database + "_v1")
    client.command(f"CREATE DATABASE `{store.database}`")
    try:
        for statement in render(1, store):
            client.command(statement)
        assert applied_version(client, store.database) == 0 and column_drift(client, store.database)
        with caplog.at_level("INFO", logger="ingest.store.migrations"):
            assert migrate(client, store) == SCHEMA_VERSION
        assert caplog.text.count("applied schema migration") == SCHEMA_VERSION
        assert column_drift(client, store.database) == []
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{store.database}`")


def test_a_newer_schema_is_refused(config, client):
    db = config.store.database
    client.insert(f"`{db}`.{SCHEMA_MIGRATIONS.name}", [[SCHEMA_VERSION + 1, 0, "from the future"]],
                  column_names=SCHEMA_MIGRATIONS.column_names)
    with pytest.raises(MigrationError, match="newer than this flowlog knows"):
        migrate(client, config.store)


def test_ttl_is_rendered_only_when_set():
    store = StoreConfig(ttl_days=30, rollup_ttl_days=400)
    rendered = "\n".join(render(1, store) + render(2, store) + render(3, store))
    assert rendered.count("TTL toDateTime(time) + INTERVAL 30 DAY") == len(DATA_TABLES)
    assert rendered.count("TTL toDateTime(time) + INTERVAL 400 DAY") == len(ROLLUPS)
    assert "\nTTL " not in "\n".join(s for v in range(1, SCHEMA_VERSION + 1) for s in render(v, StoreConfig()))


def test_hand_edited_table_is_reported(config, client):
    db = config.store.database
    client.command(f"ALTER TABLE `{db}`.http_flows DROP COLUMN query")
    assert any(line.startswith("http_flows:") for line in column_drift(client, db))


def test_a_table_sorted_by_an_older_key_is_reported_not_refused(config, client, caplog):
    db = config.store.database
    assert sort_key_drift(client, db) == []
    client.command(f"CREATE TABLE `{db}`.http_old AS `{db}`.http_flows")
    client.command(f"DROP TABLE `{db}`.http_flows")
    client.command(f"CREATE TABLE `{db}`.http_flows AS `{db}`.http_old ENGINE = MergeTree ORDER BY (time)")
    with caplog.at_level("WARNING", logger="ingest.store.migrations"):
        assert migrate(client, config.store) == 0
    assert "http_flows is sorted by (time); this version sorts new tables by toStartOfHour(time), if(" in caplog.text


def test_on_a_cluster_the_sort_keys_of_the_shard_local_tables_are_compared(config, client):
    from ingest.store.schema import Cluster

    db = config.store.database
    cluster = Cluster("flowlog")
    # The Distributed tables have no sort key; only the shard-local ones count.
    client.command(f"CREATE TABLE `{db}`.http_flows_local AS `{db}`.http_flows")
    client.command(f"CREATE TABLE `{db}`.dns_flows_local AS `{db}`.dns_flows ENGINE = MergeTree ORDER BY (time)")
    drift = sort_key_drift(client, db, cluster)
    assert len(drift) == 1 and drift[0].startswith("dns_flows_local is sorted by (time); "), drift


def test_a_request_and_its_response_are_stored_side_by_side(config, client):
    from ingest.runner import replay

    from .helpers import HTTP_348

    replay(config, client, [str(HTTP_348)])
    db = config.store.database
    client.command(f"OPTIMIZE TABLE `{db}`.http_flows FINAL")
    # In storage order (one part, read by one thread), the flow after a request is its
    # response: same client port and URL.
    pairs = client.query(f"""
        SELECT countIf(next_type = 'RESPONSE' AND next_url = url AND next_port = src_port), count()
        FROM (SELECT l7_type, url, src_port,
                     leadInFrame(l7_type) OVER w AS next_type, leadInFrame(url) OVER w AS next_url,
                     leadInFrame(dst_port) OVER w AS next_port
              FROM `{db}`.http_flows
              WINDOW w AS (ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING))
        WHERE l7_type = 'REQUEST'
        SETTINGS max_threads = 1""").result_rows[0]
    assert pairs[1] > 100 and pairs[0] / pairs[1] > 0.9, pairs


def test_rollups_follow_the_raw_tables_and_ignore_retried_blocks(config, client):
    from ingest.runner import replay
    from ingest.pipeline.sink import Sink
    from ingest.pipeline.records import SealedBatch
    from ingest.pipeline.spool import Spool
    from ingest.runner import Writer
    from ingest.store.schema import HTTP_FLOWS

    from .helpers import DNS_330, HTTP_348

    replay(config, client, [str(HTTP_348), str(DNS_330)])
    db = config.store.database
    http = client.query(f"SELECT sum(requests), sum(errors), destination_workload FROM `{db}`.http_rollup_1m "
                        "GROUP BY destination_workload ORDER BY 1 DESC LIMIT 1").result_rows
    raw = client.query(f"SELECT count(), countIf(status_code >= 500), src_workload_name FROM `{db}`.http_flows "
                       "WHERE l7_type = 'RESPONSE' GROUP BY src_workload_name ORDER BY 1 DESC LIMIT 1").result_rows
    assert http == raw
    dns = client.query(f"SELECT sum(queries), sum(responses), sumIf(responses, rcode_name = 'NXDOMAIN') "
                       f"FROM `{db}`.dns_rollup_1m").result_rows
    assert dns == [(165, 165, 102)]
    # An insert retried with the same token (its first attempt landed) counts once in the rollup too.
    # As the decoder makes them: times in integer nanoseconds, ids as text.
    rows = client.query(f"SELECT * REPLACE (toUnixTimestamp64Nano(time) AS time, toString(flow_id) AS flow_id) "
                        f"FROM `{db}`.http_flows "
                        "WHERE l7_type = 'RESPONSE' ORDER BY time LIMIT 3")
    copies = [tuple(r) for r in rows.result_rows]
    sink = Sink(client, db)
    client.command(f"ALTER TABLE `{db}`.http_flows DELETE WHERE flow_id IN {{ids:Array(String)}}",
                   parameters={"ids": [r[2] for r in copies]}, settings={"mutations_sync": 2})
    before = client.query(f"SELECT sum(requests) FROM `{db}`.http_rollup_1m").result_rows[0][0]
    spool = Spool(config.state_path / "spool", 1 << 20)
    batch = SealedBatch(batch_id="retried", source="test", rows={HTTP_FLOWS.name: copies}, check_stored={},
                         newest_ns=0, resolved=True)
    for _ in range(2):
        spool.append(batch)
        assert Writer(spool, sink).drain(force=True)
    after = client.query(f"SELECT sum(requests) FROM `{db}`.http_rollup_1m").result_rows[0][0]
    assert after - before == 3


def _table_settings(client, db: str, table: str) -> str:
    return client.query("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                        parameters={"db": db, "t": table}).result_rows[0][0]


def test_migration_5_turns_on_vertical_merges_in_a_store_created_before_it(config, client):
    from dataclasses import replace

    store = replace(config.store, database=config.store.database + "_v4")
    create_at(client, store, 4)
    try:
        for table in ("http_flows", "dns_flows", "l7_audit"):
            assert "vertical_merge" not in _table_settings(client, store.database, table)
        assert migrate(client, store) == SCHEMA_VERSION - 4
        for table in ("http_flows", "dns_flows", "l7_audit"):
            assert ("vertical_merge_algorithm_min_rows_to_activate = 1, "
                    "vertical_merge_algorithm_min_columns_to_activate = 1") in _table_settings(client, store.database,
                                                                                              table)
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{store.database}`")


def test_audit_granules_hold_about_a_megabyte(config, client):
    import os

    from ingest.store.schema import L7_AUDIT

    db = config.store.database
    # 3,000 flows of 1.4 KB: one granule at ClickHouse's default of 10 MB, five at 1 MB.
    rows = [(1_741_000_000_000_000_000 + i, "node-1", f"id-{i:05d}", "HTTP", "REQUEST", os.urandom(1400), 0)
            for i in range(3000)]
    client.insert(f"`{db}`.{L7_AUDIT.name}", rows, column_names=L7_AUDIT.column_names)
    client.command(f"OPTIMIZE TABLE `{db}`.{L7_AUDIT.name} FINAL")
    marks = client.query("SELECT sum(marks) FROM system.parts WHERE active AND database = {db:String} "
                         "AND table = 'l7_audit'", parameters={"db": db}).result_rows[0][0]
    # A part has one final mark after its last granule.
    assert 4 <= marks - 1 <= 6, marks


def test_path_and_query_are_computed_from_the_stored_url_as_urlsplit_splits_it(config, client):
    from urllib.parse import urlsplit

    from ingest.config import HTTPConfig
    from ingest.decode.decoder import Decoder
    from ingest.store.schema import HTTP_FLOWS

    from .helpers import http_flow

    db = config.store.database
    urls = ["http://api:8080/v1/items?token=t0k#frag", "http://user:pw@api/v1/a%20b?x=1&y=%2F", "https://[::1]:443/p?",
            "http://reviews:9080/reviews/0", "http://api", "http://h//double//slash?x=1", "http://h/p??x",
            "grpc://svc.ns:50051/pkg.Svc/Method"]
    rows = [Decoder().decode(http_flow(url, {})).row for url in urls]
    rows.append(Decoder(HTTPConfig(strip_query=True)).decode(http_flow("http://api/v1?token=t0k", {})).row)
    client.insert(f"`{db}`.http_flows", rows, column_names=HTTP_FLOWS.column_names)
    stored = client.query(f"SELECT url, path, query FROM `{db}`.http_flows").result_rows
    assert len(stored) == len(urls) + 1
    assert sorted(stored) == sorted((url, urlsplit(url).path, urlsplit(url).query) for url, _, _ in stored)
    assert ("http://api/v1", "/v1", "") in stored


def test_migration_6_keeps_the_rows_of_a_store_created_before_it(config, client, tmp_path):
    """flow_id becomes a UUID (an id that is none becomes the MD5 of its text, as the decoder
    now makes it), path and query become computed, ports and IPs recompress: the rows read
    the same afterwards, and a replay of the same flows finds every one stored."""
    import uuid
    from dataclasses import replace

    from ingest.store.schema import uuid_text
    from ingest.runner import replay
    from ingest.store.schema import DNS_FLOWS, HTTP_FLOWS

    from .helpers import DNS_330, HTTP_348

    # Ids that version 5 kept as they came, and a UUID column cannot hold as they are.
    files = []
    for fixture, odd_id in ((HTTP_348, "flow-17"), (DNS_330, "1B4E28BA-2FA1-41D2-883F-0016D3CCA427")):
        lines = fixture.read_bytes().splitlines()
        lines[0] = lines[0].replace(b'"flow":{', b'"flow":{"uuid":"' + odd_id.encode() + b'",', 1)
        files.append(tmp_path / fixture.name)
        files[-1].write_bytes(b"\n".join(lines) + b"\n")
    store = replace(config.store, database=config.store.database + "_v5")
    db = store.database
    create_at(client, store, 5)
    try:
        for table, table_rows in rows_as_of([line for f in files for line in f.read_bytes().splitlines()], 5).items():
            names = [c.name for c in columns_as_of(next(t for t in DATA_TABLES if t.name == table), 5)]
            client.insert(f"`{db}`.{table}", table_rows, column_names=names)
        columns = {table: [c.name for c in columns_as_of(table, 5)] for table in (HTTP_FLOWS, DNS_FLOWS)}

        def stored(table) -> list[tuple]:
            result = client.query(f"SELECT {', '.join(columns[table])} FROM `{db}`.{table.name}").result_rows
            at = columns[table].index("flow_id")
            return sorted((row[:at] + (uuid.UUID(uuid_text(row[at])) if isinstance(row[at], str) else row[at],)
                           + row[at + 1:] for row in result), key=repr)

        before = {table: stored(table) for table in columns}
        assert len(before[HTTP_FLOWS]) == 348 and len(before[DNS_FLOWS]) == 330
        assert migrate(client, store) == SCHEMA_VERSION - 5
        # The statements can run again (a migration cut short is redone whole).
        for statement in render(6, store):
            client.command(statement)
        assert column_drift(client, db) == []
        for table, table_rows in before.items():
            assert stored(table) == table_rows
        again = replay(replace(config, store=store), client, [str(f) for f in files])
        assert again.stored == {} and again.duplicates == 678
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{db}`")


def _flowlog_print(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "ingest", "migrate", "--print", *args], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def _statements(printed: str) -> list[str]:
    code = "\n".join(line for line in printed.splitlines() if not line.startswith("--"))
    return [statement.strip() for statement in code.split(";\n\n") if statement.strip().rstrip(";")]


def _settings_sorted(create: str) -> str:
    """A table's CREATE with its SETTINGS in name order: a setting a migration turned on comes
    last in a migrated table, in its place in a table created as of now; the table is the same."""
    head, sep, rest = create.partition(" SETTINGS ")
    settings, comment_sep, comment = rest.partition(" COMMENT '")
    return head + sep + ", ".join(sorted(settings.split(", "))) + comment_sep + comment


def test_migrate_print_creates_the_tables_every_migration_leaves(config, client):
    """For a DBA who creates the tables by hand, and for `migrate` on an empty database: the
    schema as it is now, not its history, leaving the same tables as every migration in turn."""
    created, by_hand = config.store.database, f"{config.store.database}_by_hand"
    db = f"{config.store.database}_in_turn"
    create_at(client, dataclasses.replace(config.store, database=db), 1)
    assert migrate(client, dataclasses.replace(config.store, database=db)) == SCHEMA_VERSION - 1
    printed = _flowlog_print("--set", f"store.database={by_hand}")
    assert printed.startswith(f"-- The hubble-flowlog schema as of version {SCHEMA_VERSION}, for database {by_hand}.")
    assert "ALTER" not in printed

    def layout(database):
        rows = client.query("SELECT name, engine, replaceAll(create_table_query, {d:String}, 'DB') FROM "
                            "system.tables WHERE database = {d:String} ORDER BY name",
                            parameters={"d": database}).result_rows
        return [(name, engine, _settings_sorted(query)) for name, engine, query in rows]

    try:
        for statement in _statements(printed):
            client.command(statement.rstrip(";"))
        # The tables, each rollup and its view, schema_migrations, the input table and its 3 views.
        assert layout(by_hand) == layout(db) and len(layout(db)) == len(DATA_TABLES) + 2 * len(ROLLUPS) + 1 + 1 + 3
        assert layout(created) == layout(db)
        assert column_drift(client, by_hand) == []
        assert applied_version(client, by_hand) == SCHEMA_VERSION
        assert migrate(client, dataclasses.replace(config.store, database=by_hand)) == 0  # nothing left to do
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{by_hand}`")
        client.command(f"DROP DATABASE IF EXISTS `{db}`")


def test_migrate_history_heads_each_migration_with_what_it_did():
    printed = _flowlog_print("--history")
    heads = [line for line in printed.splitlines() if line.startswith("-- Migration ")]
    assert [head.split(":")[0] for head in heads] == [f"-- Migration {m.version:04d}_{m.name}" for m in MIGRATIONS]
    assert all(len(head.split(": ", 1)[1]) > 20 for head in heads)
    assert "ALTER TABLE `flowlog`.`http_flows` ADD COLUMN IF NOT EXISTS `dst_dns_name`" in printed


def test_migration_7_names_endpoints_without_a_workload_in_the_rollups_from_then_on(config, client, tmp_path):
    """Servers outside the cluster rolled up as one blank workload; from version 7 each is
    named by identity and IP, as the queries on the raw flows name it. The view's query is
    replaced in place, so every flow stored before and after is rolled up once."""
    from ingest.runner import replay

    from .helpers import HTTP_348, fixture_lines

    db = f"{config.store.database}_v6"
    store = dataclasses.replace(config.store, database=db)
    create_at(client, store, 6)
    at_v6 = dataclasses.replace(config, store=store)
    try:
        # Stored by a build of schema version 6.
        v6_names = [c.name for c in columns_as_of(HTTP_FLOWS, 6) if not c.alias]
        client.insert(f"`{db}`.http_flows", rows_as_of(HTTP_348.read_bytes().splitlines(), 6)["http_flows"],
                      column_names=v6_names)
        assert migrate(client, store) == SCHEMA_VERSION - 6
        later = []
        for index, line in enumerate(fixture_lines(HTTP_348)):  # the same traffic, a day later
            line["flow"]["time"] = line["flow"]["time"].replace("2021-10-04", "2021-10-05")
            line["flow"]["uuid"] = f"00000000-0000-4000-8000-{index:012d}"
            later.append(json.dumps(line))
        (tmp_path / "later.json").write_text("\n".join(later) + "\n")
        replay(at_v6, client, [str(tmp_path / "later.json")])

        def rolled_up(day):
            return client.query(f"SELECT destination_workload, sum(requests) FROM `{db}`.http_rollup_1m "
                                "WHERE destination_namespace = '' AND toDate(time) = {d:Date} "
                                "GROUP BY destination_workload ORDER BY 1", parameters={"d": day}).result_rows

        assert rolled_up("2021-10-04") == [("", 59)]
        assert rolled_up("2021-10-05") == [("host 10.128.0.5", 10), ("world 10.128.0.3", 19),
                                           ("world 10.128.0.4", 20), ("world 10.128.0.6", 10)]
        raw = client.query(f"SELECT count() FROM `{db}`.http_flows WHERE l7_type = 'RESPONSE'").result_rows
        rollup = client.query(f"SELECT sum(requests) FROM `{db}`.http_rollup_1m").result_rows
        assert raw == rollup == [(2 * 173,)]
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{db}`")


def test_a_client_with_no_workload_is_rolled_up_by_identity_without_its_ip(config, client, tmp_path):
    """Clients on the internet would make a rollup row each, every minute; servers keep their IP."""
    from ingest.runner import replay

    from .helpers import HTTP_348, fixture_lines

    response = next(line for line in fixture_lines(HTTP_348) if line["flow"]["l7"]["type"] == "RESPONSE"
                    and line["flow"]["destination"].get("pod_name"))
    lines = []
    for index, ip in enumerate(("198.51.100.7", "198.51.100.8")):
        line = json.loads(json.dumps(response))
        line["flow"]["uuid"] = f"00000000-0000-4000-8000-{index:012d}"
        line["flow"]["destination"] = {"identity": 2, "labels": ["reserved:world"]}
        line["flow"]["IP"]["destination"] = ip
        lines.append(json.dumps(line))
    (tmp_path / "world.json").write_text("\n".join(lines) + "\n")
    replay(config, client, [str(tmp_path / "world.json")])
    db = config.store.database
    assert client.query(f"SELECT source_namespace, source_workload, sum(requests) FROM `{db}`.http_rollup_1m "
                        "GROUP BY ALL").result_rows == [("", "world", 2)]
    assert client.query(f"SELECT dst_workload_name FROM `{db}`.http_flows ORDER BY 1").result_rows == [
        ("world 198.51.100.7",), ("world 198.51.100.8",)]


def test_migration_9_weighs_rollup_latency_by_flows_and_leaves_out_responses_without_one(config, client):
    """An aggregated exporter line stands for many responses and usually carries no latency:
    from version 9 the rollup's t-digest and mean take each line with its weight and leave
    the ones without a latency out, as the queries on http_flows do. Rows rolled up before
    count every response in the mean's divisor, as the mean did then."""
    from .helpers import HTTP_348

    db = f"{config.store.database}_v8"
    store = dataclasses.replace(config.store, database=db)
    create_at(client, store, 8)
    names = [c.name for c in columns_as_of(HTTP_FLOWS, 8) if not c.alias]
    response = next(row for row in rows_as_of(HTTP_348.read_bytes().splitlines(), 8)["http_flows"]
                    if row[names.index("l7_type")] == "RESPONSE")

    def responses(day: str, lines: list[tuple[int, int]]) -> list[tuple]:
        """One response a (latency_ns, aggregate_count), all of one server and minute."""
        rows = []
        for index, (latency_ns, aggregate_count) in enumerate(lines):
            values = dict(zip(names, response))
            values.update(time=f"{day} 12:00:{index:02d}", latency_ns=latency_ns, aggregate_count=aggregate_count,
                          flow_id=f"00000000-0000-4000-8000-{day[-2:]}{index:010d}")
            rows.append([values[name] for name in names])
        return rows

    def rolled_up(day: str) -> tuple:
        return client.query(
            "SELECT sum(requests), sum(responses_with_latency), sum(latency_sum_ns) / sum(responses_with_latency), "
            "quantilesTDigestMerge(0.1, 0.5, 0.9)(latency) FROM {db:Identifier}.http_rollup_1m "
            "WHERE toDate(time) = {d:Date}", parameters={"db": db, "d": day}).result_rows[0]

    # 10 ms once, 20 ms for an aggregated line of 8, an aggregated line of 50 without a
    # latency, 30 ms once.
    lines = [(10_000_000, 0), (20_000_000, 8), (0, 50), (30_000_000, 0)]
    try:
        client.insert(f"`{db}`.http_flows", responses("2021-10-04", lines), column_names=names)
        quantiles_v8 = client.query("SELECT quantilesTDigestMerge(0.1, 0.5, 0.9)(latency) FROM "
                                    "{db:Identifier}.http_rollup_1m", parameters={"db": db}).result_rows[0][0]
        assert migrate(client, store) == SCHEMA_VERSION - 8
        # Rolled up by version 8: unweighted, the line without a latency counted as 0 ns.
        assert rolled_up("2021-10-04") == (60, 60, (10 + 8 * 20 + 30) * 1_000_000 / 60, quantiles_v8)
        assert quantiles_v8[1] < 20_000_000
        client.insert(f"`{db}`.http_flows", responses("2021-10-05", lines), column_names=names)
        requests, with_latency, mean_ns, quantiles = rolled_up("2021-10-05")
        assert (requests, with_latency) == (60, 10)
        assert mean_ns == (10 + 8 * 20 + 30) * 1_000_000 / 10
        # The median is the aggregated line's 20 ms, as http_flows answers exactly over the
        # same rows (the digest interpolates between its three values at the tails).
        exact = client.query("SELECT quantileExactWeightedIf(0.5)(latency_ns, greatest(aggregate_count, 1), "
                             "latency_ns > 0) FROM {db:Identifier}.http_flows WHERE toDate(time) = '2021-10-05'",
                             parameters={"db": db}).result_rows[0][0]
        assert quantiles[1] == exact == 20_000_000
    finally:
        client.command(f"DROP DATABASE IF EXISTS `{db}`")
