"""Exactly once on every path a user can take, not only the ones with a good checkpoint:
a backfill first, another source address, `flowlog demo` twice, a checkpoint removed or
damaged, the state dir removed while running, two runs on one state dir, and Relay
delivering eight nodes out of time order across stream drops. Each ends with every flow
id stored once in every table, the rollups equal to the raw rows, and the ledger
balanced, against the real engine and a real gRPC Observer."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
from prometheus_client import REGISTRY

from ingest.demo.command import run_demo
from ingest.demo.observer import FlowBuffer, ObserverServer
from ingest.pipeline.checkpoint import Checkpoint
from ingest.runner import Ingester, replay
from ingest.statedir import StateDirInUse

from .expected import rfc3339_ns
from .helpers import (DNS_330, HTTP_348, REPO, ArrivalOrderBuffer, RunningIngester, assert_each_flow_stored_once,
                      assert_stored_equals_fixture, count, fixture_lines, ingest_lines, relay_merge, responses_of,
                      wait_for)


def _follow(config, client, server, newest_ns):
    """One `flowlog run` against server until every flow up to newest_ns is committed."""
    config.source.address = server.address
    with RunningIngester(config, client) as ingester:
        wait_for(lambda: server.service.caught_up() and ingester.writer.committed_ns >= newest_ns,
                 what="every flow committed")


def _newest_ns(lines) -> int:
    return max(rfc3339_ns(line["flow"]["time"]) for line in lines)


def test_a_backfill_then_a_run_over_the_same_flows_stores_each_once(config, client, tmp_path):
    """The README's own sequence: `flowlog replay` of what Hubble holds, then `flowlog run`
    against it. The run's first connection has no checkpoint, and looks up what it reads."""
    lines = fixture_lines(HTTP_348) + fixture_lines(DNS_330)
    replay(config, client, [str(HTTP_348), str(DNS_330)])
    ingest_lines(config, client, lines)
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)


def test_the_same_flows_from_another_source_address_are_stored_once(config, client):
    lines = fixture_lines(HTTP_348)
    for _ in range(2):  # each server listens on a port of its own: another checkpoint, none yet
        ingest_lines(config, client, lines)
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)


def test_a_batch_a_killed_replay_left_in_the_spool_does_not_move_where_the_run_resumes(config, client):
    """The run stored the oldest flows; a replay of the newest ones, killed in the same state
    dir, left a batch in the spool. The run starts again: it resumes where it stood, not
    after the replay's flows, which would skip the flows between unread and unrecorded."""
    from ingest.pipeline.records import SealedBatch
    from ingest.pipeline.spool import Spool

    lines = sorted(fixture_lines(HTTP_348), key=lambda line: rfc3339_ns(line["flow"]["time"]))
    buffer = FlowBuffer(responses_of(lines[:150]))
    with ObserverServer(buffer) as server:
        _follow(config, client, server, _newest_ns(lines[:150]))
        nodes = {line["flow"]["node_name"] for line in lines}
        # Its rows are beside the point (newest_ns 0: the run's wait below is for its own
        # flows); its tallies are what moved the resume point.
        Spool(config.state_path / "spool", 1 << 20).append(SealedBatch(
            "left-by-replay", "/tmp/last-20.json", {}, {}, 0,
            {("/tmp/last-20.json", node): {"received": 0, "newest_flow_ns": _newest_ns(lines)} for node in nodes},
            created_ns=time.time_ns()))
        buffer.extend(responses_of(lines[150:]))
        _follow(config, client, server, _newest_ns(lines))
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)


def test_a_run_without_its_checkpoint_stores_nothing_twice(config, client):
    lines = fixture_lines(HTTP_348)
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        _follow(config, client, server, _newest_ns(lines))
        shutil.rmtree(config.state_path / "checkpoints")  # or the node's hostPath lost
        _follow(config, client, server, _newest_ns(lines))
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)
    ledger = client.query(f"SELECT sum(received), sum(duplicates) FROM `{config.store.database}`.ingest_ledger")
    assert ledger.result_rows == [(2 * len(lines), len(lines))]


@pytest.mark.parametrize("damage", [b'{"time_ns": 17, "ids_at', b"\xff\xfe", b"[1, 2]", b'{"nodes": {"a": "x"}}'],
                         ids=["cut short", "not UTF-8", "not an object", "a time that is no number"])
def test_a_checkpoint_that_cannot_be_read_is_named_once_and_every_flow_looked_up(config, client, caplog, damage):
    lines = fixture_lines(HTTP_348)
    before = REGISTRY.get_sample_value("flowlog_checkpoint_unreadable_total") or 0
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        _follow(config, client, server, _newest_ns(lines))
        path = Checkpoint(config.state_path, server.address).path
        path.write_bytes(damage)
        with caplog.at_level(logging.ERROR, logger="ingest.pipeline.checkpoint"):
            _follow(config, client, server, _newest_ns(lines))
        assert Checkpoint(config.state_path, server.address).time_ns == _newest_ns(lines)  # replaced
    [error] = [r.getMessage() for r in caplog.records if r.name == "ingest.pipeline.checkpoint"]
    assert str(path) in error and "cannot be read" in error
    assert (REGISTRY.get_sample_value("flowlog_checkpoint_unreadable_total") or 0) - before == 1
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)


def test_the_state_dir_removed_while_running_is_made_again_and_nothing_is_stored_twice(config, client, caplog):
    lines = fixture_lines(HTTP_348)
    buffer = FlowBuffer(responses_of(lines[:200]))
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        with caplog.at_level(logging.WARNING), RunningIngester(config, client) as ingester:
            wait_for(lambda: ingester.writer.committed_ns >= _newest_ns(lines[:200]), what="the first flows stored")
            # Removed at once, as the ingester sees it: `rm -rf` deletes file by file, and the
            # ingester, seeing its lock gone, may make it again before the directory goes.
            removed = config.state_path.with_name("state-removed")
            config.state_path.rename(removed)
            shutil.rmtree(removed)
            buffer.extend(responses_of(lines[200:]))
            wait_for(lambda: ingester.writer.committed_ns >= _newest_ns(lines), what="the rest stored")
            wait_for(lambda: (config.state_path / "lock").exists(), what="the lock taken again")
        assert f"state dir {config.state_path} was removed while running" in caplog.text
        assert Checkpoint(config.state_path, server.address).time_ns == _newest_ns(lines)
        _follow(config, client, server, _newest_ns(lines))  # and a restart on what it made again
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)


def test_a_second_run_on_one_state_dir_stops_at_once_naming_the_first(config, client, tmp_path):
    lines = fixture_lines(HTTP_348)
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        config.source.address = server.address
        with RunningIngester(config, client):
            with pytest.raises(StateDirInUse, match=f"in use by process {os.getpid()}"):
                Ingester(config, client)
            second = subprocess.run(
                [sys.executable, "-m", "ingest", "run", "--source", server.address, "--store", "chdb://" + str(
                    tmp_path / "other-store"), "--state-dir", str(config.state_path), "--metrics-address", ""],
                cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"flowlog: error: state dir {config.state_path} is in use by process {os.getpid()} (its lock: "
        f"{config.state_path / 'lock'}); one flowlog run or replay at a time per state dir"]


def test_flowlog_demo_twice_stores_each_flow_once(config, client, capsys):
    """Both runs hold the same last two minutes of generated traffic, each on a stand-in
    server of its own."""
    for _ in range(2):
        assert run_demo(config, client, 1.0, seed=1) == 0
    capsys.readouterr()
    assert count(client, config, "l7_audit") > 1000
    assert_each_flow_stored_once(client, config.store.database)


@pytest.mark.parametrize("skews_ms", [[0, 0, 0, 0, -300, -300, -300, -300], [0, 0, 0, -300, -300, -2000, -2000, 0],
                                      [0, -700_000]],
                         ids=["4 of 8 nodes 300 ms behind", "300 ms and 2 s behind",
                              "a node 700 s behind, longer than source.node_idle_s"])
def test_relay_merging_skewed_nodes_across_stream_drops_stores_each_flow_once(config, client, skews_ms):
    """Relay merges the nodes through a bounded sort buffer, so flows of nodes whose clocks
    lag arrive after newer ones of the others; the stream breaks twice. Resuming from the
    newest flow received would skip what the lagging nodes had not delivered yet."""
    lines = fixture_lines(HTTP_348) + fixture_lines(DNS_330)
    merged = relay_merge(lines, skews_ms)
    times = [r.flow.time.ToNanoseconds() for r in merged]
    assert any(later < earlier for earlier, later in zip(times, times[1:]))  # out of time order
    with ObserverServer(ArrivalOrderBuffer(merged), drop_after=[200, 250]) as server:
        _follow(config, client, server, max(times))
        assert len(server.service.requests) >= 3
    db = config.store.database
    ids = {r.flow.node_name + r.flow.time.ToJsonString() for r in merged}
    assert len(ids) == len(merged)
    stored = client.query(f"SELECT count(), uniqExact(node, time) FROM `{db}`.l7_audit").result_rows
    assert stored == [(len(merged), len(merged))]
    assert_each_flow_stored_once(client, db)


def test_a_flow_stored_twice_shows_in_the_completeness_query_and_the_dashboard(config, client):
    """Should a defect ever store a flow twice, the places an auditor reads say so: they count
    from the table, not from the ledger, which would still say duplicates 0."""
    from ingest.store import queries

    from .dashboard_queries import CLICKHOUSE, QueryContext, load_dashboards, render_clickhouse, targets

    replay(config, client, [str(HTTP_348)])
    db = config.store.database
    client.command(f"INSERT INTO `{db}`.l7_audit SELECT * FROM `{db}`.l7_audit ORDER BY flow_id LIMIT 3 "
                   "SETTINGS insert_deduplicate = 0")
    rows = queries.load()["ingest_completeness"].rows(client, {"from": "2021-10-04", "until": "2021-10-05"}, db)
    assert sum(row["stored_twice"] for row in rows) == 3
    [health] = [d for d in load_dashboards() if d["uid"] == "flowlog-ingester-health"]
    [(panel, target)] = targets(health, CLICKHOUSE)
    client.database = db
    day = QueryContext(datetime(2021, 10, 4, tzinfo=timezone.utc), datetime(2021, 10, 5, tzinfo=timezone.utc), 3600)
    answer = client.query(render_clickhouse(target["rawSql"], {}, day)).result_rows
    assert sum(count for _, count in answer) == 3
