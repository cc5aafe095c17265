"""Hostile input never stops ingestion: a value this build does not know, a line nested
100,000 deep or longer than any flow, a truncated .gz, an input that is a directory, a
missing file or a closed stdin. Each costs only itself: one error line or dead letter,
the rest is stored, and replay's exit status says what happened."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from google.protobuf import json_format
from prometheus_client import REGISTRY

from ingest.api.flow import flow_pb2
from ingest.api.observer import observer_pb2
from ingest.decode.decoder import held_bytes
from ingest.demo.observer import FlowBuffer, ObserverServer
from ingest.pipeline.deadletters import DeadLetters
from ingest.pipeline.spool import Spool
from ingest.runner import replay
from ingest.sources.files import MAX_LINE_BYTES

from .expected import rfc3339_ns
from .helpers import (DNS_330, HTTP_348, REPO, RunningIngester, assert_each_flow_stored_once,
                      assert_stored_equals_fixture, fixture_lines, ingest_lines, responses_of, take_store_down,
                      wait_for)


def _dead_letters(config) -> list[dict]:
    path = config.state_path / "dead-letter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_enum_numbers_this_build_does_not_know_are_stored_as_numbers_and_shown_as_unknown(config, client):
    """A newer Cilium's LostEventSource or NodeState used to crash `run` at every start."""
    lines = fixture_lines(DNS_330)
    at = lines[50]["flow"]["time"]
    lost = {"lost_events": {"source": 99, "num_events_lost": "5", "first": at, "last": at}, "node_name": "n1",
            "time": at}
    status = {"node_status": {"state_change": 42, "node_names": ["n2"], "message": "new state"}, "node_name": "n2",
              "time": at}
    lines[3]["flow"]["verdict"] = 77
    before = REGISTRY.get_sample_value("flowlog_lost_events_total", {"source": "UNKNOWN"}) or 0
    ingest_lines(config, client, lines[:50] + [lost, status] + lines[50:])
    db = config.store.database
    gaps = client.query(f"SELECT kind, source, count FROM `{db}`.ingest_gaps ORDER BY kind").result_rows
    assert gaps == [("lost_events", "99", 5), ("node_status", "42", 0)]
    verdicts = client.query(f"SELECT verdict, count() FROM `{db}`.dns_flows GROUP BY verdict ORDER BY verdict")
    assert verdicts.result_rows == [("77", 1), ("FORWARDED", len(lines) - 1)]
    # One UNKNOWN series for every number: a peer cannot make series without end.
    assert REGISTRY.get_sample_value("flowlog_lost_events_total", {"source": "UNKNOWN"}) - before == 5
    assert REGISTRY.get_sample_value("flowlog_node_status_events_total", {"state": "UNKNOWN"}) >= 1


def test_json_fields_this_build_does_not_know_are_skipped_counted_and_the_flow_stored(config, client, tmp_path):
    lines = fixture_lines(HTTP_348)
    lines[0]["flow"]["new_in_cilium_2"] = {"x": 1}
    lines[1]["flow"]["l7"]["http"]["new_http_field"] = "v"
    lines[2]["flow"]["source"]["new_endpoint_field"] = [1, 2]
    lines[3]["new_top_level"] = True
    lines[4]["flow"]["verdict"] = "NEW_VERDICT"  # JSON names enum values: one this build does not know
    path = tmp_path / "newer.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def counted(field):
        return REGISTRY.get_sample_value("flowlog_json_unknown_fields_total", {"field": field}) or 0

    before = {f: counted(f) for f in ("flow.new_in_cilium_2", "flow.l7.http.new_http_field",
                                       "flow.source.new_endpoint_field", "new_top_level", "flow.verdict=NEW_VERDICT")}
    summary = replay(config, client, [str(path)])
    assert summary.counts.bad_lines == 0 and summary.complete
    expected = fixture_lines(HTTP_348)
    expected[4]["flow"]["verdict"] = "VERDICT_UNKNOWN"  # left out, so read as the enum's zero
    assert_stored_equals_fixture(client, config, expected)
    assert {f: counted(f) - n for f, n in before.items()} == dict.fromkeys(before, 1)


def test_a_line_nested_100000_deep_or_longer_than_any_flow_costs_only_itself(config, client, tmp_path):
    good = HTTP_348.read_bytes().splitlines()
    deep = b'{"flow": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    long = b'{"flow": {"uuid": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}}'
    path = tmp_path / "hostile.json"
    path.write_bytes(b"\n".join(good[:100] + [deep] + good[100:200] + [long] + good[200:]) + b"\n")
    summary = replay(config, client, [str(path)])
    assert (summary.counts.lines, summary.counts.bad_lines, summary.complete) == (len(good) + 2, 2, False)
    assert_stored_equals_fixture(client, config, fixture_lines(HTTP_348))
    deep_letter, long_letter = _dead_letters(config)
    assert deep_letter["origin"] == f"{path}:101" and "nested more than 64 deep" in deep_letter["error"]
    assert long_letter["origin"] == f"{path}:202" and f"longer than {MAX_LINE_BYTES} bytes" in long_letter["error"]
    assert len(long_letter["raw"]) == 4096


def test_the_replay_summary_says_which_bad_lines_the_dead_letter_file_rotated_out(config, client, tmp_path):
    config.dead_letters.max_mb = 1
    bad = b"x" * 100_000  # not JSON: kept whole, about ten to a megabyte
    path = tmp_path / "bad.json"
    path.write_bytes(b"\n".join(HTTP_348.read_bytes().splitlines()[:5] + [bad] * 30) + b"\n")
    summary = replay(config, client, [str(path)])
    kept = _dead_letters(config)
    older = config.state_path / "dead-letter.jsonl.1"
    kept += [json.loads(line) for line in older.read_text().splitlines()]
    origins = sorted(int(letter["origin"].rsplit(":", 1)[1]) for letter in kept)
    rotated_out = 30 - len(kept)
    assert rotated_out > 0 and origins == list(range(6 + rotated_out, 36))
    assert summary.counts.bad_lines == 30
    assert (f"30 bad lines kept in {config.state_path / 'dead-letter.jsonl'} and dead-letter.jsonl.1, but "
            f"{rotated_out} of them in neither any more (rotated out at dead_letters.max_mb, or removed)"
            ) in summary.line()


def test_dead_letters_count_what_a_removal_by_hand_took(tmp_path):
    """The summary's counts follow the files, whoever removed them."""
    letters = DeadLetters(tmp_path, 1 << 20)
    for number in range(3):
        letters.add(f"in:{number}", "bad", b"x")
    letters.path.unlink()  # by hand, between two entries
    for number in range(3, 5):
        letters.add(f"in:{number}", "bad", b"x")
    assert letters.where_kept() == (f"kept in {letters.path}, but 3 of them in neither any more (rotated out at "
                                    "dead_letters.max_mb, or removed)")
    letters.path.write_bytes(b"")  # emptied
    letters.add("in:5", "bad", b"x")
    assert letters.where_kept().endswith("but 5 of them in neither any more (rotated out at dead_letters.max_mb, "
                                         "or removed)")
    small = DeadLetters(tmp_path / "small", 300)
    for number in range(6):  # about two entries a file
        small.add(f"in:{number}", "bad", b"y" * 60)
    older = small.path.with_name("dead-letter.jsonl.1")
    kept = len(small.path.read_text().splitlines()) + len(older.read_text().splitlines())
    assert small.where_kept() == (f"kept in {small.path} and dead-letter.jsonl.1, but {6 - kept} of them in neither "
                                  "any more (rotated out at dead_letters.max_mb, or removed)")
    older.unlink()
    assert small.where_kept().endswith(f"but {6 - len(small.path.read_text().splitlines())} of them in neither any "
                                       "more (rotated out at dead_letters.max_mb, or removed)")
    assert "dead-letter.jsonl.1" not in small.where_kept()


def test_a_rotation_the_system_refuses_names_both_files(tmp_path, caplog):
    letters = DeadLetters(tmp_path, 300, stop=threading.Event())
    older = letters.path.with_name("dead-letter.jsonl.1")
    older.mkdir()  # the rotation cannot replace it
    letters.add("in:0", "bad", b"y" * 200)
    letters._stop.set()  # give up on the entry after the first try
    with caplog.at_level(logging.ERROR):
        letters.add("in:1", "bad", b"y" * 200)
    [error] = [r.getMessage() for r in caplog.records if "cannot write the dead-letter file" in r.getMessage()]
    assert f"{letters.path} -> {older}" in error and not letters.writable


def _in_neither(letters: DeadLetters) -> int:
    text = letters.where_kept()
    return int(text.split("but ")[1].split(" of them")[0]) if "in neither" in text else 0


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("meddle", ["empty, then rotate", "empty at the end", "replace with a bigger file",
                                    "empty the older file"])
def test_dead_letters_count_the_files_as_they_are(tmp_path, meddle):
    """Whatever was done to the files, the summary's kept count is what they hold."""
    letters = DeadLetters(tmp_path, 300)  # about two entries a file
    older = letters.path.with_name("dead-letter.jsonl.1")
    for number in range(4):
        letters.add(f"in:{number}", "bad", b"y" * 60)
    if meddle == "empty, then rotate":
        letters.path.write_bytes(b"")
        letters.add("in:4", "bad", b"y" * 60)
    elif meddle == "empty at the end":
        letters.path.write_bytes(b"")
    elif meddle == "replace with a bigger file":
        replacement = tmp_path / "other"
        replacement.write_bytes(b"{}\n" * 500)
        os.replace(replacement, letters.path)
    else:
        older.write_bytes(b"")
    assert letters.count - _in_neither(letters) == _lines(letters.path) + _lines(older) - (
        500 if meddle == "replace with a bigger file" else 0)


def _replay_cli(tmp_path, *inputs: str, stdin=None):
    return subprocess.run([sys.executable, "-m", "ingest", "replay", "--store", f"chdb://{tmp_path / 'store'}",
                           "--state-dir", str(tmp_path / "state"), "--no-progress", *inputs],
                          cwd=REPO, capture_output=True, text=True, timeout=180, stdin=stdin)


def _stored(tmp_path) -> int:
    done = subprocess.run([sys.executable, "-m", "ingest", "sql", "--store", f"chdb://{tmp_path / 'store'}",
                           "--state-dir", str(tmp_path / "state"), "--format", "tsv",
                           "SELECT count() FROM l7_audit"], cwd=REPO, capture_output=True, text=True, timeout=120)
    return int(done.stdout.splitlines()[1])


def test_a_truncated_gz_keeps_what_was_read_and_the_next_file_goes_on(tmp_path):
    lines = HTTP_348.read_bytes()
    whole = gzip.compress(lines)
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    result = _replay_cli(tmp_path, str(cut), str(DNS_330))
    assert result.returncode == 3, result.stderr
    [error] = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert f"{cut} cannot be read past line " in error and "EOFError" in error and "Traceback" not in result.stderr
    read = int(error.split("past line ")[1].split(":")[0])
    assert 0 < read < 348
    assert _stored(tmp_path) == read + 330  # every line read before the cut, and the next file whole
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 inputs not read to their end" in summary and str(cut) in summary


def test_a_directory_a_missing_file_and_a_closed_stdin_cost_one_line_each(tmp_path):
    directory, missing = tmp_path / "a-directory", tmp_path / "missing.json"
    directory.mkdir()
    result = _replay_cli(tmp_path, str(directory), str(missing), "-", str(DNS_330), stdin=subprocess.DEVNULL)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 2, errors  # an empty stdin is read, and holds no line
    assert f"{directory} cannot be read: Is a directory" in errors[0]
    assert f"{missing} cannot be read: No such file or directory" in errors[1]
    assert _stored(tmp_path) == 330


def test_replay_of_a_file_in_which_no_line_is_a_flow_is_not_a_success(tmp_path):
    path = tmp_path / "not-flows.json"
    path.write_text('{"a": 1}\n{"event": "something else"}\n{}\n')
    result = _replay_cli(tmp_path, str(path))
    assert result.returncode == 3, result.stderr
    assert "no line was a Hubble flow" in result.stdout and "3 bad lines" in result.stdout


def test_a_closed_stdin_is_named(config, client, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    summary = replay(config, client, ["-"])
    assert summary.counts.unreadable == ["<stdin> cannot be read: standard input is closed"]


def test_a_message_of_a_newer_build_over_grpc_with_unknown_fields_is_stored(config, client):
    """Unknown protobuf fields on the wire are kept by the parser and the audit row keeps
    them; the typed row has what this build knows."""
    lines = fixture_lines(HTTP_348)[:5]
    responses = [json_format.ParseDict(line, observer_pb2.GetFlowsResponse()) for line in lines]
    extra = flow_pb2.Flow()
    extra.ParseFromString(responses[0].flow.SerializeToString() + b"\xa8\x9f\x01\x07")  # field 20005, varint 7
    responses[0].flow.CopyFrom(extra)
    with ObserverServer(FlowBuffer(responses)) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: ingester.writer.committed_ns >= max(r.flow.time.ToNanoseconds() for r in responses))
    stored = client.query(f"SELECT countIf(position(flow, unhex('A89F0107')) > 0), count() "
                          f"FROM `{config.store.database}`.l7_audit").result_rows
    assert stored == [(1, 5)]


def _flowlog(tmp_path, *argv: str, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "ingest", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)


def _error_line(result) -> str:
    """The one line a refused command prints last; no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, status, message", [
    (["run", "--metrics-address", "127.0.0.1:99999"], 2,
     "flowlog: error: metrics.address: '127.0.0.1:99999' is no HOST:PORT with a port from 0 to 65535"),
    (["run", "--set", "batch.max_rows=-5"], 2, "flowlog: error: batch.max_rows: expected at least 1, got -5"),
    (["run", "--set", "store.retry_initial_s=0"], 2, "flowlog: error: store.retry_initial_s: expected more than 0, got 0.0"),
    (["run", "--set", "store.retry_initial_s=nan"], 2, "flowlog: error: store.retry_initial_s: expected a number, got 'nan'"),
    (["sql", "--store", "chdb:relative/dir", "SELECT 1"], 2,
     "flowlog: error: store.dsn: chdb:relative/dir: the embedded store's directory must be an absolute path, "
     "chdb:///abs/dir"),
], ids=["a port above 65535", "a negative batch size", "a zero retry delay", "a retry delay of nan",
        "a relative store path"])
def test_bad_values_are_refused_in_one_line_naming_the_key(tmp_path, argv, status, message):
    result = _flowlog(tmp_path, *argv)
    assert (result.returncode, _error_line(result)) == (status, message)
    assert list(tmp_path.iterdir()) == []  # nothing was made


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "flowlog.yaml").write_bytes(b"\xff\xfe store: x\n")
    result = _flowlog(tmp_path, "config", "show", "--config", "flowlog.yaml")
    assert (result.returncode, _error_line(result)) == (2, "flowlog: error: flowlog.yaml: not UTF-8 text (byte 0)")


def test_a_query_of_a_store_that_does_not_exist_says_so_and_makes_none(tmp_path):
    result = _flowlog(tmp_path, "sql", "--store", f"chdb://{tmp_path / 'no' / 'store'}", "SELECT 1")
    assert result.returncode == 1
    assert _error_line(result) == (f"flowlog: error: store chdb://{tmp_path / 'no' / 'store'}: there is no embedded "
                                   f"store in {tmp_path / 'no' / 'store'} (`flowlog run`, `replay`, `demo` and "
                                   "`migrate` make one)")
    assert not (tmp_path / "no").exists()


def test_a_metrics_port_already_taken_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _flowlog(tmp_path, "run", "--source", "127.0.0.1:1", "--metrics-address", address,
                          "--state-dir", str(tmp_path / "state"))
    assert (result.returncode, _error_line(result)) == (1, f"flowlog: error: metrics.address {address}: Address "
                                                           "already in use")


def test_the_end_of_flowlog_demo_prints_no_grpc_line(tmp_path):
    result = _flowlog(tmp_path, "demo", "--duration", "1", "--state-dir", str(tmp_path / "state"), timeout=240)
    assert result.returncode == 0, result.stderr
    assert "chttp2" not in result.stderr and "goaway" not in result.stderr.lower(), result.stderr


def test_a_full_disk_under_the_spool_with_the_store_down_pauses_reading_and_loses_nothing(config, client,
                                                                                          monkeypatch, caplog):
    """Before, ENOSPC while the store was down stopped `run`, and again after every restart."""
    config.batch.max_rows = 50
    config.store.retry_initial_s, config.store.retry_max_s = 0.05, 0.2
    config.metrics.address = "127.0.0.1:0"
    lines = fixture_lines(HTTP_348)
    full = threading.Event()
    full.set()
    write_aside = Spool._write_aside

    def on_a_full_disk(self, path, batch):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_aside(self, path, batch)

    monkeypatch.setattr(Spool, "_write_aside", on_a_full_disk)
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        config.source.address = server.address
        with caplog.at_level(logging.WARNING), RunningIngester(config, client) as ingester:
            store = take_store_down(ingester, client)
            wait_for(lambda: not ingester.writer.writable, what="the full disk noticed")
            time.sleep(1.0)
            assert ingester.batcher.inbox and len(ingester.spool) == 0  # reading paused, nothing written
            assert REGISTRY.get_sample_value("flowlog_state_dir_writable", {"file": "spool"}) == 0
            assert _readyz(ingester) == (503, "not ready: state dir writable\n")
            full.clear()  # space returns, the store is still down: batches wait in the spool
            wait_for(lambda: ingester.writer.writable and len(ingester.spool) > 0, what="spooled again")
            store.down.clear()
            wait_for(lambda: server.service.caught_up() and ingester.writer.committed_ns >= _newest(lines),
                     what="every flow stored")
    errors = [r.getMessage() for r in caplog.records if "cannot write to the spool" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert REGISTRY.get_sample_value("flowlog_state_dir_writable", {"file": "spool"}) == 1
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)



def test_a_full_disk_under_the_dead_letters_pauses_reading_and_keeps_every_bad_flow(config, client, monkeypatch,
                                                                                     caplog):
    """Before, a dead letter the disk refused was logged as "not kept" and reading went on:
    bad input lost its only record while good input was stored."""
    from ingest.pipeline.deadletters import DeadLetters

    config.batch.max_rows, config.batch.max_delay_ms = 20, 50
    config.metrics.address = "127.0.0.1:0"
    lines = fixture_lines(HTTP_348)
    bad = [index for index, line in enumerate(lines) if line["flow"]["l7"]["type"] == "RESPONSE"][10:12]
    for index in bad:
        lines[index]["flow"]["l7"]["http"]["code"] = 70000  # no HTTP status: dead-lettered
    full = threading.Event()
    full.set()
    append = DeadLetters._append

    def on_a_full_disk(self, line):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(self, line)

    monkeypatch.setattr(DeadLetters, "_append", on_a_full_disk)
    good = [line for index, line in enumerate(lines) if index not in bad]
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        config.source.address = server.address
        with caplog.at_level(logging.WARNING), RunningIngester(config, client) as ingester:
            wait_for(lambda: not ingester.dead_letters.writable, what="the full disk noticed")
            time.sleep(1.5)
            stored_while_full = ingester.writer.committed_flows
            assert stored_while_full <= bad[0], "reading went on past the bad flow"
            assert REGISTRY.get_sample_value("flowlog_state_dir_writable", {"file": "dead_letters"}) == 0
            assert REGISTRY.get_sample_value("flowlog_state_dir_writable", {"file": "spool"}) == 1
            assert _readyz(ingester) == (503, "not ready: state dir writable\n")
            full.clear()
            wait_for(lambda: server.service.caught_up() and ingester.writer.committed_ns >= _newest(good),
                     what="every good flow stored")
            assert _readyz(ingester)[0] == 200
    errors = [r.getMessage() for r in caplog.records if "cannot write the dead-letter file" in r.getMessage()]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert REGISTRY.get_sample_value("flowlog_state_dir_writable", {"file": "dead_letters"}) == 1
    kept = _dead_letters(config)
    assert len(kept) == 2 and all("70000 is no HTTP status" in entry["error"] for entry in kept)
    assert_stored_equals_fixture(client, config, good)
    assert_each_flow_stored_once(client, config.store.database)

def _readyz(ingester) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{ingester.endpoint.address}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _newest(lines) -> int:
    return max(rfc3339_ns(line["flow"]["time"]) for line in lines)


def test_flows_with_100_kb_headers_wait_within_the_byte_budgets_while_the_store_is_down(config, client):
    """Before, 50,000 items could wait whatever their size (RSS 498 -> 838 MB), and with
    spool.max_mb=1 a 40 MB batch sat in the spool. The budgets count what a decoded flow
    holds (its protobuf twice, in the audit row and as typed values), which is also about
    what its spool file takes."""
    config.batch.queue_mb, config.spool.max_mb, config.batch.max_delay_ms = 2, 1, 200
    config.store.retry_initial_s, config.store.retry_max_s = 0.05, 0.2
    lines = fixture_lines(HTTP_348)[:80]
    for index, line in enumerate(lines):
        line["flow"]["uuid"] = f"00000000-0000-4000-8000-{index:012d}"
        line["flow"]["l7"]["http"].setdefault("headers", []).append({"key": "X-Big", "value": "v" * 100_000})
    responses = responses_of(lines)
    held = max(held_bytes(r.flow.SerializeToString(), typed=True) for r in responses)
    assert held > 2 * 100_000
    with ObserverServer(FlowBuffer(responses)) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            store = take_store_down(ingester, client)
            read_back = []
            read = ingester.spool._read
            ingester.spool._read = lambda path: read_back.append(path) or read(path)
            inbox = batch_file = spool = 0
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                inbox = max(inbox, ingester.batcher.inbox_bytes)
                sizes = [p.stat().st_size for p in (config.state_path / "spool").glob("*.batch")]
                batch_file, spool = max([batch_file] + sizes), max(spool, sum(sizes))
                time.sleep(0.01)
            assert 0 < ingester.batcher.inbox_bytes and len(ingester.spool) >= 1  # reading paused, spool full
            assert ingester.spool._last is None  # the store fails: spooled batches wait on disk only
            # Read back (to memory) once at most: by the try that finds the store down; from then
            # on the store is asked first. Before, every retry read the oldest batch again.
            assert len(read_back) <= 1, read_back
            store.down.clear()
            wait_for(lambda: server.service.caught_up() and ingester.writer.committed_ns >= _newest(lines),
                     timeout=60, what="every flow stored")
    assert inbox <= (2 << 20) + held, inbox
    # A batch closes at half the spool, and the spool takes one only while it fits.
    assert batch_file <= (1 << 19) + held + 64 * 1024, batch_file
    assert spool <= (1 << 20) + 64 * 1024, spool
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)



def _spool_that_fails(monkeypatch, fails) -> None:
    """Spool writes raise ENOSPC while fails(spool directory) says so."""
    write_aside = Spool._write_aside

    def on_a_full_disk(self, path, batch):
        if fails(self.directory):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_aside(self, path, batch)

    monkeypatch.setattr(Spool, "_write_aside", on_a_full_disk)


def test_a_replay_whose_last_batch_meets_a_full_disk_waits_and_stores_it(config, client, monkeypatch):
    """It used to drop the batch held in memory at the end and say '348 already stored'."""
    refused = []
    _spool_that_fails(monkeypatch, lambda directory: len(refused) < 3 and not refused.append(1))
    summary = replay(config, client, [str(HTTP_348)])
    assert len(refused) == 3 and summary.complete and summary.stored["l7_audit"] == 348
    assert_stored_equals_fixture(client, config, fixture_lines(HTTP_348))


def test_a_disk_the_spool_itself_filled_frees_when_the_store_returns(config, client, monkeypatch):
    """Room for two batch files, the store down: once the spool fills the disk, only
    storing its batches frees it. It used to wait for a restart."""
    config.batch.max_rows, config.batch.max_delay_ms = 40, 50
    config.store.retry_initial_s, config.store.retry_max_s = 0.05, 0.2
    _spool_that_fails(monkeypatch, lambda directory: len(list(directory.glob("*.batch"))) >= 2)
    lines = fixture_lines(HTTP_348)
    with ObserverServer(FlowBuffer(responses_of(lines))) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            store = take_store_down(ingester, client)
            wait_for(lambda: not ingester.writer.writable, what="the disk full")
            store.down.clear()
            wait_for(lambda: server.service.caught_up() and ingester.writer.committed_ns >= _newest(lines),
                     timeout=60, what="every flow stored")
    assert_stored_equals_fixture(client, config, lines)
    assert_each_flow_stored_once(client, config.store.database)


def test_a_dead_letter_the_disk_cut_short_is_written_again_whole(tmp_path, monkeypatch):
    """A write the disk refused can leave part of the line; the retry used to append the
    whole line after it, gluing the two into one line that is no JSON."""
    from ingest.pipeline import deadletters

    letters = deadletters.DeadLetters(tmp_path, max_bytes=1 << 20)
    letters.add("f.json:1", "not JSON", b"a" * 100)
    refusals = []

    class HalfWritten:
        def __init__(self, handle):
            self._handle = handle

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def write(self, data):
            if len(refusals) < 2:
                refusals.append(1)
                self._handle.write(data[:len(data) // 2])
                self._handle.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._handle.write(data)

    opened = deadletters.open_private
    monkeypatch.setattr(deadletters, "open_private", lambda path, mode: HalfWritten(opened(path, mode)))
    monkeypatch.setattr(deadletters, "_WRITE_RETRY_S", 0.01)
    letters.add("f.json:2", "not JSON", b"b" * 100)
    lines = (tmp_path / "dead-letter.jsonl").read_text().splitlines()
    assert len(refusals) == 2 and [json.loads(line)["origin"] for line in lines] == ["f.json:1", "f.json:2"]
