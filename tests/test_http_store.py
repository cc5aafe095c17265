"""A ClickHouse server over HTTP, as in production: the same rows as the embedded store.

Every other test stores into the embedded engine, which clickhouse-connect reaches
without HTTP. Here the store is `bench.store_server`, a stand-in that speaks
ClickHouse's HTTP interface (chunked, lz4-compressed Native inserts; query parameters,
long ones sent as a form) and runs each statement on the real engine in its own process,
the set-up the bench measures what a node pays with. `flowlog replay` runs as a user
runs it, once into that server and once into an embedded store, and the stored rows are
compared column by column.
"""

from __future__ import annotations

import subprocess
import sys

import clickhouse_connect
import pytest

from bench.store_server import StoreServer
from ingest import config as config_mod
from ingest.store.connection import missing_settings

from .helpers import REPO, create_at

FIXTURES = REPO / "tests" / "fixtures" / "hubble"
LINES = [FIXTURES / "basic-sample-348-http-flows.json", FIXTURES / "basic-sample-330-dns-flows.json"]
TABLES = {"http_flows": "flow_id", "dns_flows": "flow_id", "l7_audit": "flow_id"}


def flowlog(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ingest", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with StoreServer(tmp_path_factory.mktemp("http-store")) as store:
        yield store


def rows(store: str, state: str, table: str, order: str) -> str:
    """Every column of every row, in a stable order, as TSV under a header line (TSV escapes a
    newline inside a value, so each row is one line)."""
    return flowlog("sql", "--store", store, "--state-dir", state, "--format", "tsv",
                   f"SELECT * FROM {table} ORDER BY {order}, time")


def test_replay_into_a_server_over_http_stores_what_the_embedded_store_stores_once(server, tmp_path):
    embedded = f"chdb://{tmp_path / 'embedded'}"
    for store, state in ((server.dsn, tmp_path / "state-http"), (embedded, tmp_path / "state-embedded")):
        summary = flowlog("replay", *map(str, LINES), "--no-progress", "--store", store, "--state-dir", str(state))
        assert "678 L7 flows" in summary and "0 already stored" in summary, summary
    for table, order in TABLES.items():
        over_http = rows(server.dsn, str(tmp_path / "state-http"), table, order)
        assert over_http == rows(embedded, str(tmp_path / "state-embedded"), table, order), table
        assert over_http.count("\n") - 1 == {"http_flows": 348, "dns_flows": 330, "l7_audit": 678}[table]
    # Again with a fresh state dir: the lookups send a batch's ids as a query parameter,
    # thousands of them long, so clickhouse-connect sends them as a form, not in the URL.
    again = flowlog("replay", str(LINES[0]), "--no-progress", "--store", server.dsn,
                    "--state-dir", str(tmp_path / "state-again"))
    assert "348 L7 flows" in again and "stored nothing new; 348 already stored" in again, again
    ledger = flowlog("sql", "--store", server.dsn, "--state-dir", str(tmp_path / "state-http"), "--format", "tsv",
                     "SELECT sum(received), sum(stored_audit), sum(duplicates), "
                     "(SELECT count() FROM l7_audit) FROM ingest_ledger")
    assert ledger.splitlines()[1:] == ["1026\t678\t348\t678"]


def test_the_server_derives_the_flow_tables_from_flow_input_with_the_schema_sent_along(server, tmp_path):
    """store.derive = store against a server: the protobuf schema goes with each insert
    (format_schema_source = string); the rows are those the ingester fills itself."""
    embedded = f"chdb://{tmp_path / 'embedded'}"
    flowlog("replay", *map(str, LINES), "--no-progress", "--store", embedded, "--state-dir", str(tmp_path / "e"))
    summary = flowlog("replay", *map(str, LINES), "--no-progress", "--store", server.dsn, "--state-dir",
                      str(tmp_path / "state-derived"), "--set", "store.database=derived", "--set",
                      "store.derive=store", "--set", "metrics.l7=false")
    assert "stored 330 dns_flows, 348 http_flows, 678 l7_audit; 0 already stored" in summary, summary
    # Compressed as the other tables' inserts are: each flow goes twice, and flows repeat.
    assert "INSERT INTO `derived`.`flow_input` FORMAT Protobuf [lz4]" in server.statements.read_text()
    for table, order in TABLES.items():
        derived = flowlog("sql", "--store", server.dsn, "--state-dir", str(tmp_path / "state-derived"), "--set",
                          "store.database=derived", "--format", "tsv", f"SELECT * FROM {table} ORDER BY {order}, time")
        assert derived == rows(embedded, str(tmp_path / "e"), table, order), table


def test_inserts_into_a_current_schema_send_the_types_and_no_describe(server, tmp_path):
    """clickhouse-connect asks the server for a table's column types before each insert
    unless it is given them; on a schema of this build's version they come from schema.py."""
    before = server.statements.read_text().count("\n")
    flowlog("replay", str(LINES[1]), "--no-progress", "--store", server.dsn, "--database", "typed",
            "--state-dir", str(tmp_path / "state"))
    statements = server.statements.read_text().splitlines()[before:]
    inserts = [s for s in statements if s.startswith("INSERT INTO `typed`.")]
    assert {s.split("`")[3] for s in inserts} >= {"dns_flows", "l7_audit", "ingest_ledger"}, inserts
    described = [s for s in statements if s.upper().startswith("DESCRIBE")]
    assert described == [], described
    # The log would show one: an insert that is not given the types asks for them.
    client = clickhouse_connect.get_client(dsn=server.dsn)
    client.command("CREATE TABLE typed.untyped (n UInt8) ENGINE = Memory")
    client.insert("typed.untyped", [[1]], column_names=["n"])
    assert any(s.upper().startswith("DESCRIBE") and "untyped" in s
               for s in server.statements.read_text().splitlines()[before:])


def test_store_mode_on_a_database_without_the_input_table_stops_at_start_saying_what_to_do(server, tmp_path):
    """A database at schema version 9 and store.migrate off: every insert into flow_input
    would fail and be retried for as long as the ingester runs; it stops at once instead."""
    client = clickhouse_connect.get_client(dsn=server.dsn)
    create_at(client, config_mod.load(env={}, overrides={"store.database": "at_v9"}).store, 9)
    done = subprocess.run([sys.executable, "-m", "ingest", "replay", str(LINES[1]), "--no-progress", "--store",
                           server.dsn, "--state-dir", str(tmp_path / "state"), "--set", "store.database=at_v9",
                           "--set", "store.migrate=false", "--set", "store.derive=store", "--set", "metrics.l7=false"],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == ("flowlog: error: store.derive = store: database at_v9 has no flow_input, "
                                   "l7_audit_from_input, http_flows_from_input, dns_flows_from_input (schema version "
                                   "10): run `flowlog migrate` or let the ingester migrate (store.migrate: true)")
    assert client.query("SELECT count() FROM at_v9.l7_audit").result_rows == [(0,)]
    # Migrated, the same command stores the flows.
    flowlog("migrate", "--store", server.dsn, "--state-dir", str(tmp_path / "state"), "--database", "at_v9")
    summary = flowlog("replay", str(LINES[1]), "--no-progress", "--store", server.dsn, "--state-dir",
                      str(tmp_path / "state"), "--set", "store.database=at_v9", "--set", "store.migrate=false",
                      "--set", "store.derive=store", "--set", "metrics.l7=false")
    assert "stored 330 dns_flows, 330 l7_audit" in summary, summary


def test_the_settings_a_server_lacks_are_named(server):
    """How the ingester finds out whether a server takes the protobuf schema with an insert
    (format_schema_source, ClickHouse 25.6 or later) before it sends one."""
    client = clickhouse_connect.get_client(dsn=server.dsn)
    assert missing_settings(client, ["format_schema_source", "no_such_setting_here"]) == ["no_such_setting_here"]


def test_a_store_that_redirects_is_an_error_not_a_request_sent_again(server, tmp_path):
    """urllib3 follows a redirect with the same request: an insert whose body streamed
    from a generator went again empty, and ClickHouse takes an empty body as an insert of
    nothing. The store's client follows none; the failure is the sink's to retry."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ingest.store.connection import StoreError, connect

    redirected = []

    class Redirect(BaseHTTPRequestHandler):
        def _moved(self):
            redirected.append(self.command)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", server.dsn + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _moved

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    before = server.statements.read_text()
    try:
        config = config_mod.load(env={}, overrides={"store.dsn": f"http://127.0.0.1:{proxy.server_port}",
                                                    "state_dir": str(tmp_path / "state")})
        with pytest.raises(StoreError, match="cannot reach store"):
            connect(config)
    finally:
        proxy.shutdown()
    # Only the reads clickhouse-connect makes while it starts (before the setting) got through.
    reached = server.statements.read_text()[len(before):].splitlines()
    assert redirected and reached and all(statement.startswith("SELECT") for statement in reached), reached


def test_store_mode_without_one_of_the_views_is_refused_at_start(server, tmp_path):
    """flow_input is a Null table: without a view, its rows for that table would be
    thrown away by inserts that succeed. The views are read from flow_input's own row of
    system.tables (dependencies_table), which a user that may only insert into it sees."""
    from ingest.store.connection import StoreError, check_derive_in_store

    client = clickhouse_connect.get_client(dsn=server.dsn)
    flowlog("migrate", "--store", server.dsn, "--state-dir", str(tmp_path / "state"), "--database", "one_view_less")
    check_derive_in_store(client, "one_view_less", server=True)
    client.command("DROP VIEW one_view_less.dns_flows_from_input")
    with pytest.raises(StoreError, match="database one_view_less has no dns_flows_from_input "):
        check_derive_in_store(client, "one_view_less", server=True)
