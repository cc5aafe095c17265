"""The `flowlog` command as a newcomer meets it."""

from __future__ import annotations

import subprocess
import sys

from .helpers import REPO


def flowlog(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ingest", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_demo_runs_the_real_path_and_prints_the_sql_summary(tmp_path):
    result = flowlog("demo", "--duration", "10", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "HTTP latency and errors per destination workload" in out
    assert "│ default/webpod" in out and "│ default/checkout" in out
    assert "│ webpod.default.svc.cluster.local." in out and "NXDOMAIN" in out and "10.96.143.27" in out
    # Two minutes of history plus ten live seconds, all of it stored.
    assert (tmp_path / "clickhouse").is_dir()
    stored = flowlog("sql", "--state-dir", str(tmp_path), "--format", "tsv",
                     "SELECT count() > 2000, max(time) > now() - 60 FROM l7_audit")
    assert stored.stdout.splitlines()[1] == "1\t1", stored.stderr
    # The README's examples on the demo's data: webpod's ClusterIP, which no flow carries, and
    # the API outside the cluster named as the demo's own table names it.
    assert "│ world 203.0.113.10" in out
    talkers = flowlog("query", "audit_talkers", "--state-dir", str(tmp_path), "--since", "10m", "--format", "tsv",
                      "-p", "destination=10.96.143.27")
    assert [line.split("\t")[:3] for line in talkers.stdout.splitlines()[1:]] == [["default", "curl-pod", "http"]], \
        talkers.stderr
    latency = flowlog("query", "http_latency", "--state-dir", str(tmp_path), "--since", "10m", "--format", "tsv")
    assert ["", "world 203.0.113.10"] in [line.split("\t")[:2] for line in latency.stdout.splitlines()]


def test_unreachable_store_fails_at_start_naming_the_dsn_without_its_password(tmp_path):
    result = flowlog("migrate", "--store", "http://ingest:hunter2@127.0.0.1:1", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith("flowlog: error: cannot reach store http://ingest:*****@127.0.0.1:1")
    assert "hunter2" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_sql_errors_are_one_line_and_formats_are_clickhouses(tmp_path):
    assert flowlog("migrate", "--state-dir", str(tmp_path)).returncode == 0  # sql makes no store of its own
    bad = flowlog("sql", "--state-dir", str(tmp_path), "SELEC 1")
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 1 and last.startswith("flowlog: error: ") and "Syntax error" in last
    csv = flowlog("sql", "--state-dir", str(tmp_path), "--format", "csv", "SELECT 1 AS a, 'x' AS b")
    assert csv.stdout.splitlines() == ['"a","b"', '1,"x"']
    own = flowlog("sql", "--state-dir", str(tmp_path), "SELECT 1 AS a FORMAT JSONEachRow")
    assert own.stdout.strip() == '{"a":1}'


def test_reading_commands_neither_create_nor_migrate_a_database(tmp_path):
    """sql and query read: a mistyped --database is an error, not a new empty schema."""
    assert flowlog("migrate", "--state-dir", str(tmp_path)).returncode == 0
    for command in (["sql", "SELECT count() FROM http_flows"], ["query", "http_latency", "--since", "1h"]):
        result = flowlog(*command, "--state-dir", str(tmp_path), "--set", "store.database=typo")
        assert result.returncode == 1 and "typo" in result.stderr.strip().splitlines()[-1], result.stderr
        assert "created the schema" not in result.stderr
    databases = flowlog("sql", "--state-dir", str(tmp_path), "--format", "tsv", "SHOW DATABASES")
    assert "typo" not in databases.stdout.split() and "flowlog" in databases.stdout.split()


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    """`flowlog migrate --history | head -1`: the reader leaves early, which is no error."""
    for command in ("migrate --history", "migrate --print"):
        done = subprocess.run(f"{sys.executable} -m ingest {command} --state-dir {tmp_path} 2>{tmp_path}/err | head -1",
                              shell=True, capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.stdout.startswith("--") and (tmp_path / "err").read_text() == "", command


def test_help_everywhere():
    for command in ("run", "replay", "migrate", "sql", "demo"):
        result = flowlog(command, "--help")
        assert result.returncode == 0 and "--store" in result.stdout


def test_an_embedded_store_another_process_holds_is_named_as_in_use(tmp_path):
    assert flowlog("migrate", "--state-dir", str(tmp_path)).returncode == 0
    store = tmp_path / "clickhouse"
    holder = subprocess.Popen([sys.executable, "-c", f"import chdb, sys; c = chdb.connect({str(store)!r}); "
                               "print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = flowlog("sql", "--state-dir", str(tmp_path), "SELECT 1")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"flowlog: error: store chdb://{store}: the embedded store in {store} is in use by another process (a "
            "flowlog run, replay or demo holds it while it runs): stop that first, or store in a ClickHouse server, "
            "which many can read at once")
    finally:
        holder.communicate("")
