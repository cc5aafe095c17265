"""`flowlog run --source file://...`: following the Hubble exporter's files as Cilium writes
and rotates them, every flow stored once and every gap on record."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from ingest import metrics
from ingest.pipeline.checkpoint import Checkpoint
from ingest.sources.files import MAX_LINE_BYTES
from ingest.store.schema import INGEST_GAPS

from .exporter_writer import RotatingWriter, flow_lines, uuid_of
from .helpers import REPO, RunningIngester, assert_each_flow_stored_once, store_sql, wait_for


def _one(client, config, sql, **parameters):
    return client.query(sql.replace("DB", f"`{config.store.database}`"), parameters=parameters).result_rows[0]


def _stored(client, config) -> int:
    return _one(client, config, "SELECT count() FROM DB.l7_audit")[0]


def _ledger(client, config) -> tuple[int, int, int]:
    """(received, duplicates, quarantined) summed over the ledger."""
    return _one(client, config, "SELECT sum(received), sum(duplicates), sum(quarantined) FROM DB.ingest_ledger")


def _gaps(client, config) -> list[tuple]:
    return client.query(f"SELECT kind, source, message FROM `{config.store.database}`.ingest_gaps ORDER BY time"
                        ).result_rows


def _follow(config, path, *more) -> None:
    config.source.address = ",".join(f"file://{p}" for p in (path, *more))
    config.source.file_poll_s = 0.05


def _wait_stored(client, config, count: int, what: str = "") -> None:
    wait_for(lambda: _stored(client, config) >= count, timeout=60, what=what or f"{count} flows stored")


def test_follows_a_growing_file_through_rotations_and_gzip(config, client, tmp_path):
    events = tmp_path / "hubble" / "events.log"
    events.parent.mkdir()
    lines = flow_lines(600)
    writer = RotatingWriter(events, max_bytes=40_000, max_backups=100, compress=True, compress_later=True)
    _follow(config, events)
    with RunningIngester(config, client) as ingester:
        for start in range(0, 600, 50):
            writer.write_lines(lines[start:start + 50], per_second=2000)
            if start % 100 == 0:
                writer.compress_now()  # lumberjack gzips later, in a goroutine: at times mid-read
        _wait_stored(client, config, 600)
        wait_for(ingester.batcher.idle, what="nothing left to batch")
    assert writer.rotations >= 20
    assert any(p.suffix == ".gz" for p in writer.backups())
    stored = {row[0] for row in client.query(f"SELECT flow_id FROM `{config.store.database}`.l7_audit").result_rows}
    assert stored == {uuid_of(line) for line in lines}
    assert_each_flow_stored_once(client, config.store.database)
    assert _ledger(client, config) == (600, 0, 0)  # each line read once: nothing read twice
    assert _gaps(client, config) == []


# Backups are named by Go's filepath.Ext: "-<time>.events" for ".events".
@pytest.mark.parametrize("name", ["events.log", ".events"])
def test_resumes_inside_the_gzipped_backup_it_stopped_in(config, client, tmp_path, name):
    events = tmp_path / name
    lines = flow_lines(90)
    writer = RotatingWriter(events, max_bytes=10**9, compress=True)
    _follow(config, events)
    writer.write_lines(lines[:30])
    with RunningIngester(config, client):
        _wait_stored(client, config, 30)
    saved = Checkpoint(config.state_path, config.source.address).files[str(events)]
    assert saved[1:] == (sum(map(len, lines[:30])), 30)
    # While the ingester is stopped: more lines, a rotation (the file gzipped), more lines.
    writer.write_lines(lines[30:60])
    backup = writer.rotate()
    writer.write_lines(lines[60:])
    assert writer.backups() == [backup.with_name(backup.name + ".gz")]
    if name.startswith("."):
        assert backup.name.startswith("-") and backup.name.endswith(name)
    with RunningIngester(config, client):
        _wait_stored(client, config, 90)
    assert_each_flow_stored_once(client, config.store.database)
    assert _ledger(client, config) == (90, 0, 0)  # resumed at line 31 of the .gz: no line read twice


def test_a_partial_last_line_waits_for_its_newline(config, client, tmp_path):
    events = tmp_path / "events.log"
    lines = flow_lines(11)
    _follow(config, events)
    with open(events, "wb") as handle:
        handle.write(b"".join(lines[:10]) + lines[10][:100])
        handle.flush()
        with RunningIngester(config, client) as ingester:
            _wait_stored(client, config, 10)
            time.sleep(0.5)  # polls that find the line still incomplete
            assert _stored(client, config) == 10
            assert not ingester.dead_letters.path.exists() or ingester.dead_letters.path.stat().st_size == 0
            handle.write(lines[10][100:])
            handle.flush()
            _wait_stored(client, config, 11)
    assert _ledger(client, config) == (11, 0, 0)


def test_a_file_cut_in_place_is_a_gap_and_is_read_again_from_its_start(config, client, tmp_path):
    events = tmp_path / "events.log"
    lines = flow_lines(80)
    _follow(config, events)
    events.write_bytes(b"".join(lines[:50]))
    with RunningIngester(config, client):
        _wait_stored(client, config, 50)
        with open(events, "r+b") as handle:  # copytruncate, as logrotate does it
            handle.truncate(0)
        wait_for(lambda: _gaps(client, config), what="the truncation on record")
        with open(events, "ab") as handle:
            handle.write(b"".join(lines[50:]))
        _wait_stored(client, config, 80)
    [(kind, source, message)] = _gaps(client, config)
    assert (kind, source) == ("file_truncated", str(events))
    assert f"{events}: cut in place (now 0 bytes)" in message
    assert_each_flow_stored_once(client, config.store.database)


def test_rotated_away_while_stopped_is_a_gap_and_the_files_left_are_read(config, client, tmp_path):
    events = tmp_path / "events.log"
    lines = flow_lines(200)
    size = len(lines[0]) * 25
    writer = RotatingWriter(events, max_bytes=size, max_backups=2)
    _follow(config, events)
    writer.write_lines(lines[:10])
    with RunningIngester(config, client):
        _wait_stored(client, config, 10)
    writer.write_lines(lines[10:])  # several rotations: the file read last is deleted
    left = sum(len(p.read_bytes().splitlines()) for p in [*writer.backups(), events])
    with RunningIngester(config, client):
        _wait_stored(client, config, 10 + left)
        wait_for(lambda: _gaps(client, config), what="the loss on record")
    [(kind, source, message)] = _gaps(client, config)
    assert (kind, source) == ("file_rotated_away", str(events))
    assert "line 10, byte" in message
    assert_each_flow_stored_once(client, config.store.database)
    assert _stored(client, config) == 10 + left < 200


def test_every_event_kind_of_the_exporter(config, client, tmp_path):
    events = tmp_path / "events.log"
    flows = flow_lines(3)
    stamp = json.loads(flows[0])["time"]
    others = [
        {"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "7", "cpu": 1}, "node_name": "n1",
         "time": stamp},
        {"node_status": {"state_change": "NODE_UNAVAILABLE", "node_names": ["n2"], "message": "gone"},
         "node_name": "n1", "time": stamp},
        {"agent_event": {"type": "POLICY_UPDATED", "policy_update": {"labels": ["k8s:a=b"], "revision": "3",
                                                                     "rule_count": 1}},
         "node_name": "n1", "time": stamp},
        {"debug_event": {"type": "DBG_GENERIC", "message": "x", "cpu": 0}, "node_name": "n1", "time": stamp},
    ]
    events.write_bytes(b"".join(flows) + b"".join(json.dumps(o).encode() + b"\n" for o in others))
    agent_before = metrics.EXPORTER_EVENTS.labels("agent_event")._value.get()
    debug_before = metrics.EXPORTER_EVENTS.labels("debug_event")._value.get()
    _follow(config, events)
    with RunningIngester(config, client) as ingester:
        _wait_stored(client, config, 3)
        wait_for(lambda: len(_gaps(client, config)) == 2, what="the loss and the node status stored")
        wait_for(lambda: metrics.EXPORTER_EVENTS.labels("debug_event")._value.get() == debug_before + 1,
                 what="the debug event counted")
        assert not ingester.dead_letters.path.exists()
    assert metrics.EXPORTER_EVENTS.labels("agent_event")._value.get() == agent_before + 1
    assert sorted(kind for kind, _, _ in _gaps(client, config)) == ["lost_events", "node_status"]
    assert _one(client, config, "SELECT sum(lost) FROM DB.ingest_ledger") == (7,)


def test_overlapping_flow_logs_store_each_flow_once(config, client, tmp_path):
    everything, one_namespace = tmp_path / "all.log", tmp_path / "one.log"
    lines = flow_lines(120)
    everything.write_bytes(b"".join(lines))
    one_namespace.write_bytes(b"".join(lines[::3]))  # a dynamic flow log with a narrower filter
    _follow(config, everything, one_namespace)
    with RunningIngester(config, client):
        _wait_stored(client, config, 120)
        wait_for(lambda: _ledger(client, config)[0] == 160, what="both files read")
    assert_each_flow_stored_once(client, config.store.database)
    assert _ledger(client, config) == (160, 40, 0)


def test_bad_lines_are_dead_lettered_with_file_and_line(config, client, tmp_path):
    events = tmp_path / "events.log"
    lines = flow_lines(4)
    events.write_bytes(lines[0] + b"{not json\n" + lines[1] + b"x" * (9 << 20) + b"\n" + lines[2] + lines[3])
    _follow(config, events)
    with RunningIngester(config, client) as ingester:
        _wait_stored(client, config, 4)
        wait_for(lambda: _ledger(client, config)[2] == 2, what="two lines quarantined")
        kept = ingester.dead_letters.path.read_text().splitlines()
    places = [json.loads(line)["origin"] for line in kept]
    assert places == [f"{events}:2", f"{events}:4"]
    assert _ledger(client, config) == (4, 0, 2)


def test_a_flow_line_just_over_the_limit_is_refused_as_replay_refuses_it(config, client, tmp_path):
    """Whether a line ends in the chunk that takes it past the limit or in a later one."""
    events = tmp_path / "events.log"
    first, padded, last = flow_lines(3)
    event = json.loads(padded)
    event["padding"] = ""  # a field this build does not know: skipped, so the flow would be stored
    padding = MAX_LINE_BYTES + 1 - len(json.dumps(event))
    event["padding"] = "x" * padding
    padded = json.dumps(event).encode() + b"\n"
    assert len(padded) == MAX_LINE_BYTES + 2
    events.write_bytes(first + padded + last)
    _follow(config, events)
    with RunningIngester(config, client) as ingester:
        wait_for(lambda: _ledger(client, config)[2] == 1, what="the long line quarantined")
        _wait_stored(client, config, 2)
        [kept] = ingester.dead_letters.path.read_text().splitlines()
    letter = json.loads(kept)
    assert letter["origin"] == f"{events}:2" and f"longer than {MAX_LINE_BYTES} bytes" in letter["error"]
    assert _ledger(client, config) == (2, 0, 1) and _stored(client, config) == 2


def test_waits_for_a_file_that_does_not_exist_yet(config, client, tmp_path, caplog):
    events = tmp_path / "later" / "events.log"
    _follow(config, events)
    with RunningIngester(config, client) as ingester:
        time.sleep(0.3)
        assert not ingester.source.connected.is_set()
        events.parent.mkdir()
        events.write_bytes(b"".join(flow_lines(5)))
        _wait_stored(client, config, 5)
        wait_for(ingester.source.connected.is_set, what="the source ready")
    assert f"waiting for {events}" in caplog.text


def _start(tmp_path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "run", "--source", address, "--store", f"chdb://{tmp_path / 'store'}",
         "--state-dir", str(tmp_path / "state"), "--metrics-address", "", "--set", "batch.max_rows=40",
         "--set", "batch.max_delay_ms=50", "--set", "source.file_poll_s=0.05"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "ab"))


def test_sigkill_at_random_points_while_the_exporter_writes_and_rotates(tmp_path):
    """The exporter writes at a steady rate and rotates every 25 lines (gzipping the
    backups), while `run` is killed with SIGKILL at random points, restarted after a random
    pause (so rotations happen while it is stopped), and at the end stopped with SIGTERM."""
    rng = random.Random(19)
    events = tmp_path / "hubble" / "events.log"
    events.parent.mkdir()
    lines = flow_lines(1200, seed="sigkill")
    writer = RotatingWriter(events, max_bytes=len(lines[0]) * 25, max_backups=200, compress=True)
    writing = threading.Thread(target=writer.write_lines, args=(lines, 150), daemon=True)
    address = f"file://{events}"
    process = _start(tmp_path, address)
    try:
        writing.start()
        kills = 0
        while writing.is_alive():
            time.sleep(rng.uniform(0.8, 2.0))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            kills += 1
            time.sleep(rng.uniform(0.0, 0.6))
            process = _start(tmp_path, address)
        writing.join()

        def read_to_the_end() -> bool:
            files = Checkpoint(tmp_path / "state", address).files
            return files.get(str(events), ("", 0, 0))[2] == len(events.read_bytes().splitlines())

        wait_for(read_to_the_end, timeout=90, what="the last line durable")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "run.log").read_text()
    finally:
        process.kill()
        process.wait()
    assert kills >= 3 and writer.rotations >= 40
    assert store_sql(tmp_path, "SELECT count(), uniqExact(flow_id) FROM l7_audit") == ["1200\t1200"]
    stored = set(store_sql(tmp_path, "SELECT flow_id FROM l7_audit"))
    assert stored == {uuid_of(line) for line in lines}
    received, duplicates, stored_audit = store_sql(tmp_path, "SELECT sum(received), sum(duplicates), sum(stored_audit) "
                                                        "FROM ingest_ledger")[0].split("\t")
    assert int(received) - int(duplicates) == int(stored_audit) == 1200
    assert store_sql(tmp_path, "SELECT count() FROM ingest_gaps") == ["0"]
    assert os.stat(Checkpoint(tmp_path / "state", address).path).st_mode & 0o777 == 0o600


INGEST_GAPS_KIND = INGEST_GAPS.column_names.index("kind")
MASKED_AND_AGGREGATED = REPO / "tests" / "fixtures" / "exporter" / "masked-and-aggregated.jsonl"


def test_masked_and_aggregated_lines_are_stored_with_what_they_have_and_count_with_their_weight(
        config, client, tmp_path):
    events = tmp_path / "events.log"
    events.write_bytes(MASKED_AND_AGGREGATED.read_bytes())
    _follow(config, events)
    with RunningIngester(config, client) as ingester:
        _wait_stored(client, config, 6)
        l7_metrics = ingester.l7_metrics
    db = f"`{config.store.database}`"
    # The documentation's two masked drops are no L7 flows: counted, not stored.
    assert _one(client, config, "SELECT sum(received), sum(filtered), sum(quarantined) FROM DB.ingest_ledger") \
        == (6, 2, 0)
    audit = client.query(f"SELECT type, l7_type, aggregate_count, length(flow_id) FROM {db}.l7_audit "
                         "ORDER BY time").result_rows
    # Line 5's mask left out l7: kept in l7_audit, with no L7 record to name.
    assert audit == [("DNS", "REQUEST", 0, 32), ("HTTP", "RESPONSE", 0, 32), ("", "UNKNOWN_L7_TYPE", 0, 32),
                     ("HTTP", "RESPONSE", 7, 32), ("HTTP", "RESPONSE", 3, 32), ("DNS", "REQUEST", 4, 32)]
    # A masked line keeps what the mask let through: names, not IPs or labels; no uuid, so
    # its id is a hash of its content (32 hex digits).
    masked = client.query(f"SELECT src_namespace, src_pod, src_ip, src_labels, status_code FROM {db}.http_flows "
                          "WHERE aggregate_count = 0").result_rows
    assert masked == [("kube-system", "node-local-dns-r99x7", "", [], 503)]
    # The rollups and the L7 metrics count an aggregated line as the flows it stands for.
    assert _one(client, config, "SELECT sum(requests), sum(errors) FROM DB.http_rollup_1m "
                                "WHERE destination_namespace = 'shop' OR source_namespace = 'shop'") == (10, 3)
    assert _one(client, config, "SELECT sum(queries) FROM DB.dns_rollup_1m WHERE query = 'api.example.com.'") == (4,)
    requests: dict[str, int] = {}
    for labels, value in l7_metrics.http_requests.values.items():
        requests[labels[-2]] = requests.get(labels[-2], 0) + value[0]
    assert requests == {"200": 7, "503": 3 + 1}
    dns_queries = sum(value[0] for value in l7_metrics.dns_queries.values.values())
    assert dns_queries == 4 + 1


def test_a_file_cut_and_written_past_where_reading_stood_is_noticed_by_its_first_line(config, client, tmp_path):
    events = tmp_path / "events.log"
    lines = flow_lines(90)
    _follow(config, events)
    events.write_bytes(b"".join(lines[:20]))
    with RunningIngester(config, client) as ingester:
        _wait_stored(client, config, 20)
        ingester.source.poll_s = 1.0  # the cut and the new lines land between two looks
        time.sleep(0.2)
        with open(events, "r+b") as handle:
            handle.truncate(0)
            handle.write(b"".join(lines[20:]))  # more than was read before the cut
        _wait_stored(client, config, 90)
    [(kind, _, message)] = _gaps(client, config)
    assert kind == "file_truncated" and "cut in place" in message
    assert_each_flow_stored_once(client, config.store.database)
    assert _ledger(client, config) == (90, 0, 0)


class _Recorded:
    """The dispatcher's side of a follower, recording what it is handed."""

    def __init__(self):
        self.lines, self.bad, self.gaps = [], [], []

    def message(self, window, event, line):
        window.read += 1
        self.lines.append(line)

    def unreadable(self, window, error, raw):
        window.read += 1
        self.bad.append((window.last_place(), error))

    def position(self, window, position):
        pass

    def gap(self, window, row, looked_up=False):
        self.gaps.append(row)


def _read_all(path) -> _Recorded:
    from ingest.sources.exporter import _Follower

    out = _Recorded()
    follower = _Follower(str(path), f"file://{path}", out, None,
                         dict(maybe_stored_until_ns=0, newest_by_node={}, seen_by_node={}))
    idle = 0
    for _ in range(1000):  # bounded: a follower that reads the same lines again must fail, not hang
        idle = 0 if follower.poll() else idle + 1
        if idle > 20:
            break
    follower.close()
    return out


def test_backups_with_the_same_first_line_are_each_read_once(tmp_path):
    """Found by adversarial testing: the second was taken for the first, and read forever."""
    events = tmp_path / "events.log"
    lines = flow_lines(30)
    writer = RotatingWriter(events, max_bytes=10**9)
    for part in (lines[1:10], lines[10:20]):
        writer.write(lines[0])
        writer.write_lines(part)
        writer.rotate()
    writer.write_lines(lines[20:])
    assert _read_all(events).lines == [line.rstrip(b"\n") for line in
                                      [lines[0], *lines[1:10], lines[0], *lines[10:20], *lines[20:]]]


def test_an_empty_or_damaged_gz_backup_is_passed_over(tmp_path):
    """Found by adversarial testing: reading stalled on it for good."""
    events = tmp_path / "events.log"
    lines = flow_lines(10)
    (tmp_path / "events-2026-01-01T00-00-00.000.log.gz").write_bytes(b"")
    (tmp_path / "events-2026-01-01T00-00-01.000.log.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 64)
    events.write_bytes(b"".join(lines))
    out = _read_all(events)
    assert len(out.lines) == 10
    [damaged] = out.gaps
    assert damaged.row[INGEST_GAPS_KIND] == "file_truncated"


def test_a_symlinked_backup_is_read(tmp_path):
    """Found by adversarial testing: its inode as readdir gives it is the link's."""
    events = tmp_path / "events.log"
    lines = flow_lines(20)
    (tmp_path / "elsewhere.log").write_bytes(b"".join(lines[:10]))
    (tmp_path / "events-2026-01-01T00-00-00.000.log").symlink_to(tmp_path / "elsewhere.log")
    events.write_bytes(b"".join(lines[10:]))
    assert len(_read_all(events).lines) == 20


@pytest.mark.parametrize("address, why", [
    ("file://events.log", "'file://events.log' is no file:///absolute/path"),
    ("file:///a.log,/b.log", "'/b.log' is no file:///absolute/path"),
    ("file:///a.log,file:///a.log", "a file is named twice"),
])
def test_a_file_address_that_names_no_absolute_path_is_refused(address, why):
    from ingest.config import ConfigError, load

    with pytest.raises(ConfigError, match="source.address") as refused:
        load(env={}, overrides={"source.address": address})
    assert why in str(refused.value)
