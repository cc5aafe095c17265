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


def test_help_everywhere():
    for command in ("run", "replay", "migrate", "sql", "demo"):
        result = flowlog(command, "--help")
        assert result.returncode == 0 and "--store" in result.stdout
