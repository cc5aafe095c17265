"""`flowlog replay`: files of `hubble observe -o jsonpb` output through the same decoder."""

from __future__ import annotations

import base64
import datetime
import gzip
import json
import subprocess
import sys

import pytest
from google.protobuf import json_format

from ingest import metrics
from ingest.api.observer import observer_pb2
from ingest.runner import replay

from .helpers import ALL_FIXTURES, DNS_330, HTTP_348, REPO, assert_stored_equals_fixture, count, fixture_lines


def filtered_total() -> float:
    return sum(s.value for m in metrics.FLOWS_FILTERED.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_replayed_is_stored_value_for_value(config, client, path):
    lines = fixture_lines(path)
    before = filtered_total()
    summary = replay(config, client, [str(path)])
    assert_stored_equals_fixture(client, config, lines)
    non_l7 = sum(1 for line in lines if "l7" not in line["flow"])
    assert summary.counts.filtered == non_l7
    assert filtered_total() - before == non_l7
    assert summary.counts.bad_lines == 0


def duplicates_dropped() -> dict[str, float]:
    return {s.labels["table"]: s.value for m in metrics.DUPLICATES_DROPPED.collect() for s in m.samples
            if s.name.endswith("_total")}


def test_replaying_twice_stores_nothing_new(config, client):
    first = replay(config, client, [str(HTTP_348), str(DNS_330)])
    assert first.stored == {"http_flows": 348, "dns_flows": 330, "l7_audit": 678}
    before = duplicates_dropped()
    second = replay(config, client, [str(HTTP_348), str(DNS_330)])
    assert second.stored == {}
    assert second.duplicates == 678
    dropped = {table: n - before.get(table, 0) for table, n in duplicates_dropped().items() if n > before.get(table, 0)}
    assert dropped == {"http_flows": 348, "dns_flows": 330, "l7_audit": 678}
    assert_stored_equals_fixture(client, config, fixture_lines(HTTP_348) + fixture_lines(DNS_330))


class CountingQueries:
    """The real client; counts the queries that look up ids."""

    def __init__(self, client):
        self._client = client
        self.id_lookups = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def query(self, sql, *args, **kwargs):
        self.id_lookups += "IN {ids:Array(String)}" in sql
        return self._client.query(sql, *args, **kwargs)


def test_ids_are_looked_up_only_where_rows_are_stored_already(config, client):
    """Every replayed flow may be stored already; a range that holds nothing yet is seen as
    such without sending its ids, and a second replay still finds every one."""
    counting = CountingQueries(client)
    replay(config, counting, [str(HTTP_348)])
    assert counting.id_lookups == 0
    second = replay(config, counting, [str(HTTP_348)])
    assert counting.id_lookups > 0 and second.stored == {} and second.duplicates == 348


def test_gzip_and_bare_flow_objects(config, client, tmp_path):
    lines = fixture_lines(DNS_330)
    bare = tmp_path / "exporter.json.gz"
    with gzip.open(bare, "wt") as handle:
        for line in lines:
            handle.write(json.dumps(line["flow"]) + "\n")
    summary = replay(config, client, [str(bare)])
    assert summary.counts.l7_flows == 330
    assert_stored_equals_fixture(client, config, lines)


@pytest.mark.parametrize("usable_cpus", [1, 2], ids=["parsed inline", "parsed by a worker process"])
def test_lines_over_many_chunks_keep_their_order_and_numbers(config, client, tmp_path, monkeypatch, usable_cpus):
    """Bad lines around chunk boundaries are dead-lettered with their own line numbers,
    and the flows are decoded in file order (the DNS answers come before the HTTP flows
    whose server names they give), whether lines are parsed in this process or not."""
    from ingest.sources import files

    monkeypatch.setattr(files, "_CHUNK_LINES", 100)
    monkeypatch.setattr(files.os, "sched_getaffinity", lambda pid: set(range(usable_cpus)))
    monkeypatch.setattr(files, "cgroup_cpu_limit", lambda: None)
    good = [json.dumps(line).encode() for line in fixture_lines(DNS_330) + fixture_lines(HTTP_348)]
    bad_at = {100, 101, 200, 555}
    lines, good_lines = [], iter(good)
    for number in range(1, len(good) + len(bad_at) + 1):
        lines.append(b"{not json" if number in bad_at else next(good_lines))
    path = tmp_path / "flows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = replay(config, client, [str(path)])
    assert summary.counts.lines == len(lines) and summary.counts.bad_lines == len(bad_at)
    dead = [json.loads(line) for line in (config.state_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [int(d["origin"].rsplit(":", 1)[1]) for d in dead] == sorted(bad_at)
    assert_stored_equals_fixture(client, config, fixture_lines(DNS_330) + fixture_lines(HTTP_348))


@pytest.mark.parametrize("affinity, cgroup_limit, workers", [
    (1, None, 0), (2, None, 1), (64, None, 2),  # at most two: this process keeps up with about one
    (64, 1.0, 0), (64, 1.5, 0), (64, 2.0, 1),  # a container's CPU limit, which the affinity does not show
])
def test_parse_workers_follow_the_cpus_this_process_may_use(monkeypatch, affinity, cgroup_limit, workers):
    from ingest.sources import files

    monkeypatch.setattr(files.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(files, "cgroup_cpu_limit", lambda: cgroup_limit)
    assert files.parse_workers() == workers


@pytest.mark.parametrize("v2, v1, limit", [
    ("150000 100000\n", None, 1.5), ("max 100000\n", ("200000", "100000"), None),
    (None, ("200000\n", "100000\n"), 2.0), (None, ("-1\n", "100000\n"), None), (None, None, None),
])
def test_the_cgroup_cpu_limit_is_read_from_cgroup_v2_else_v1(tmp_path, monkeypatch, v2, v1, limit):
    from ingest.sources import files

    monkeypatch.setattr(files, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(files, "CGROUP_V1_CPU", tmp_path / "cpu")
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    assert files.cgroup_cpu_limit() == limit


MALFORMED = [
    (b'{"flow": {"time": "2021-10-04T11:22:26.59', "not JSON"),
    (b'{"flow": {"time": "2021-10-04T11:22:26Z", "source": {"identity": "abc"}, "l7": {"dns": {}}}}', "identity"),
    (b'\xff\xfe{"flow": {}}', "not UTF-8"),
    (b"   ", "empty line"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"flow": {"l7": {"http": {"url": "http://[::1"}}, "Type": "L7", "time": "2021-10-04T11:22:26Z"}}',
     "l7.http.url"),
    # Values Hubble's types allow and the tables do not hold: most used to stall the store forever.
    (b'{"flow": {"time": "2021-10-04T11:22:26Z", "l7": {"type": "RESPONSE", "http": {"code": 70000}}}}',
     "flow.l7.http.code: 70000"),
    (b'{"flow": {"time": "2021-10-04T11:22:26Z", "l4": {"UDP": {"source_port": 65536}}, "l7": {"dns": {}}}}',
     "flow.l4.UDP.source_port: 65536"),
    (b'{"flow": {"time": "2021-10-04T11:22:26Z", "l7": {"type": "RESPONSE", "dns": {"rcode": 4294967295}}}}',
     "flow.l7.dns.rcode: 4294967295"),
    (b'{"flow": {"time": "2262-04-12T00:00:00Z", "l7": {"dns": {}}}}', "flow.time: 2262-04-12T00:00:00Z is outside"),
    (b'{"flow": {"time": "1969-12-31T23:59:59Z", "Type": "L3_L4"}}', "flow.time: 1969-12-31T23:59:59Z"),
    (b'{"lost_events": {"num_events_lost": 3, "first": "9999-12-31T00:00:00Z"}, "time": "2021-10-04T11:22:26Z"}',
     "lost_events.first"),
]


def test_an_l7_flow_without_its_l7_record_is_kept_in_the_audit_table_only(config, client, tmp_path):
    """As an exporter's field mask writes it (tests/fixtures/exporter/): once a dead letter."""
    path = tmp_path / "masked.json"
    path.write_bytes(b'{"flow": {"time": "2021-10-04T11:22:26Z", "Type": "L7", "l7": {"type": "REQUEST"}}}\n'
                     b'{"flow": {"time": "2021-10-04T11:22:27Z", "Type": "L7", "node_name": "n"}}\n'
                     b'{"flow": {"time": "2021-10-04T11:22:28Z", "event_type": {"type": 129}}}\n')
    summary = replay(config, client, [str(path)])
    assert (summary.counts.l7_flows, summary.counts.bad_lines) == (3, 0)
    rows = client.query(f"SELECT type, l7_type, node FROM `{config.store.database}`.l7_audit ORDER BY time").result_rows
    assert rows == [("", "REQUEST", ""), ("", "UNKNOWN_L7_TYPE", "n"), ("", "UNKNOWN_L7_TYPE", "")]
    assert count(client, config, "http_flows") == count(client, config, "dns_flows") == 0


def test_malformed_lines_are_dead_lettered_with_line_numbers_and_the_rest_stored(config, client, tmp_path):
    good = HTTP_348.read_bytes().splitlines()
    mixed, bad_at = [], {}
    for index, line in enumerate(good):
        mixed.append(line)
        if index % 20 == 0 and index // 20 < len(MALFORMED):
            bad, reason = MALFORMED[index // 20]
            mixed.append(bad)
            bad_at[len(mixed)] = (bad, reason)
    path = tmp_path / "mixed.json"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    summary = replay(config, client, [str(path)])
    assert summary.counts.bad_lines == len(MALFORMED)
    assert_stored_equals_fixture(client, config, fixture_lines(HTTP_348))
    entries = [json.loads(l) for l in (config.state_path / "dead-letter.jsonl").read_text().splitlines()]
    assert [e["origin"] for e in entries] == [f"{path}:{n}" for n in sorted(bad_at)]
    for entry, number in zip(entries, sorted(bad_at)):
        bad, reason = bad_at[number]
        assert reason in entry["error"], entry
        if "raw_base64" in entry:
            assert base64.b64decode(entry["raw_base64"]) == bad
        else:
            # A line that is no message is kept as it was (it holds nothing to scrub); one that
            # parsed, as the redacted message in proto3 JSON: the same message.
            assert entry["raw"].encode() == bad or _same_message(entry["raw"].encode(), bad), (entry, bad)


def _same_message(kept: bytes, bad: bytes) -> bool:
    try:
        return json_format.Parse(kept, observer_pb2.GetFlowsResponse()) == json_format.Parse(
            bad, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True)
    except json_format.ParseError:
        return kept == bad


def test_replay_cli_reads_stdin_and_prints_one_summary_line(config, tmp_path):
    # A subprocess: chdb serves one data directory per process.
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, "-m", "ingest", "replay", "--store", f"chdb://{store}", "--state-dir", str(tmp_path), "-"],
        input=DNS_330.read_bytes(), capture_output=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode().strip().splitlines()
    assert len(out) == 1 and "330 L7 flows" in out[0] and "330 dns_flows" in out[0], out
    query = subprocess.run(
        [sys.executable, "-m", "ingest", "sql", "--store", f"chdb://{store}", "--format", "tsv",
         "SELECT count() FROM dns_flows WHERE rcode_name = 'NXDOMAIN'"],
        capture_output=True, cwd=REPO, timeout=120)
    assert query.stdout.decode().splitlines() == ["count()", "102"], query.stderr.decode()


def test_a_spool_file_recorded_as_unreadable_is_not_counted_as_replayed(config, client):
    spool = config.state_path / "spool"
    spool.mkdir(parents=True)
    (spool / "000000000001.batch").write_bytes(b"left by something else")
    summary = replay(config, client, [str(HTTP_348)])
    assert (summary.stored.get("ingest_gaps", 0), summary.duplicates) == (0, 0)
    gaps = client.query(f"SELECT kind FROM `{config.store.database}`.ingest_gaps").result_rows
    assert gaps == [("spool_unreadable",)]


def test_a_loss_report_received_again_is_counted_once_in_the_ledger(config, client, tmp_path):
    """Hubble sends a lost_events report again when a stream resumes before it; as a replay
    of the same file does. The gap is stored once, and the ledger counts it once."""
    lines = fixture_lines(DNS_330)
    lost_at = lines[100]["flow"]["time"]
    lost = {"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "1234", "first": lost_at,
                            "last": lost_at}, "node_name": lines[100]["flow"]["node_name"], "time": lost_at}
    path = tmp_path / "with-loss.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines[:100] + [lost, lost] + lines[100:]))
    replay(config, client, [str(path)])
    replay(config, client, [str(path)])
    db = config.store.database
    assert client.query(f"SELECT sum(count) FROM `{db}`.ingest_gaps").result_rows == [(1234,)]
    assert client.query(f"SELECT sum(lost), sum(stored_gaps) FROM `{db}`.ingest_ledger").result_rows == [(1234, 1)]


def test_the_dead_letter_file_is_rotated_at_its_size_limit_keeping_the_newest_entries(tmp_path, caplog):
    from ingest.pipeline.deadletters import DeadLetters

    letters = DeadLetters(tmp_path, max_bytes=2000)
    for number in range(40):
        letters.add(f"f.json:{number}", "not JSON", b"x" * 100)
    current, older = tmp_path / "dead-letter.jsonl", tmp_path / "dead-letter.jsonl.1"
    kept = [json.loads(line)["origin"] for path in (older, current) for line in path.read_text().splitlines()]
    assert current.stat().st_size <= 2000 and older.stat().st_size <= 2000
    assert kept == [f"f.json:{n}" for n in range(40 - len(kept), 40)] and len(kept) >= 20
    assert letters.count == 40 and "dead_letters.max_mb" in caplog.text
    # A restart goes on with the file as it is, not from an empty one.
    size = current.stat().st_size
    DeadLetters(tmp_path, max_bytes=size + 10).add("f.json:40", "not JSON", b"x" * 100)
    assert json.loads(older.read_text().splitlines()[-1])["origin"] == "f.json:39"


def test_the_first_and_last_instants_the_tables_hold_are_stored_in_their_day_and_minute(config, client, tmp_path,
                                                                                        newest_committed_restored):
    line = fixture_lines(HTTP_348)[3]  # a response: the rollups count those
    assert line["flow"]["l7"]["type"] == "RESPONSE"
    first, last = json.loads(json.dumps(line)), json.loads(json.dumps(line))
    first["flow"]["time"], last["flow"]["time"] = "1970-01-01T00:00:00Z", "2106-02-07T06:28:15.999999999Z"
    first["flow"]["uuid"], last["flow"]["uuid"] = "00000000-0000-4000-8000-000000000001", \
        "00000000-0000-4000-8000-000000000002"
    path = tmp_path / "edges.json"
    path.write_text(json.dumps(first) + "\n" + json.dumps(last) + "\n")
    assert replay(config, client, [str(path)]).counts.bad_lines == 0
    db = config.store.database
    stored = client.query(f"SELECT toString(time), _partition_id FROM `{db}`.http_flows ORDER BY time").result_rows
    assert stored == [("1970-01-01 00:00:00.000000000", "19700101"), ("2106-02-07 06:28:15.999999999", "21060207")]
    minutes = client.query(f"SELECT toString(time) FROM `{db}`.http_rollup_1m ORDER BY time").result_rows
    assert minutes == [("1970-01-01 00:00:00",), ("2106-02-07 06:28:00",)]


def test_a_batch_spanning_more_than_a_hundred_days_is_stored(config, client, tmp_path):
    """A backfill of a quiet cluster: before, the server refused the insert (more than 100
    partitions in one block) on every retry, and the replay never ended."""
    line = fixture_lines(HTTP_348)[3]
    days = []
    for day in range(150):
        flow = json.loads(json.dumps(line))
        flow["flow"]["time"] = f"{datetime.date(2021, 1, 1) + datetime.timedelta(days=day)}T12:00:00Z"
        flow["flow"]["uuid"] = f"00000000-0000-4000-8000-{day:012d}"
        days.append(json.dumps(flow))
    path = tmp_path / "sparse.json"
    path.write_text("\n".join(days) + "\n")
    assert replay(config, client, [str(path)]).stored == {"http_flows": 150, "l7_audit": 150}
    db = config.store.database
    assert client.query(f"SELECT uniqExact(_partition_id) FROM `{db}`.http_flows").result_rows == [(150,)]


def test_a_dead_letter_file_removed_by_hand_is_started_again(tmp_path):
    from ingest.pipeline.deadletters import DeadLetters

    letters = DeadLetters(tmp_path, max_bytes=1000)
    for number in range(2):
        letters.add(f"f.json:{number}", "not JSON", b"x" * 300)
    (tmp_path / "dead-letter.jsonl").unlink()
    for number in range(2, 6):  # before: the third needed a rotation of the file that was gone, and raised
        letters.add(f"f.json:{number}", "not JSON", b"x" * 300)
    kept = [json.loads(line)["origin"] for name in ("dead-letter.jsonl.1", "dead-letter.jsonl")
            for line in (tmp_path / name).read_text().splitlines()]
    assert kept == ["f.json:2", "f.json:3", "f.json:4", "f.json:5"] and letters.count == 6


def test_a_batch_an_earlier_replay_left_in_the_spool_is_stored_but_not_counted_as_this_ones(config, client):
    """A replay killed after spooling a batch leaves it for the next run, which stores it
    first. The next replay's summary is about its own input: its flows stored, none of
    them missing (a leftover batch counted as this replay's made that figure negative)."""
    from ingest.decode.decoder import Decoder
    from ingest.pipeline.batching import Batch
    from ingest.pipeline.records import Entry
    from ingest.pipeline.spool import Spool

    from .helpers import responses_of

    left = Batch()
    decoder = Decoder()
    for response in responses_of(fixture_lines(DNS_330)):
        left.add(Entry(decoder.decode(response), True, str(DNS_330)))
    Spool(config.state_path / "spool", 1 << 30).append(left.seal())
    summary = replay(config, client, [str(HTTP_348)])
    assert summary.stored == {"http_flows": 348, "l7_audit": 348}
    assert (summary.duplicates, summary.not_committed, summary.complete) == (0, 0, True)
    assert count(client, config, "dns_flows") == 330  # the leftover stored all the same
