"""When a batch closes, and what the batching loop does to memory: at batch.max_rows, or
once its oldest flow has waited batch.max_delay_ms (counting the wait behind the
previous insert) and nothing more is waiting; the cycle collector on a timer."""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref

from google.protobuf import json_format

from ingest.api.observer import observer_pb2
from ingest.config import BatchConfig
from ingest.decode.decoder import Decoder
from ingest.pipeline import batching
from ingest.pipeline.batching import Batcher
from ingest.pipeline.records import Entry, SealedBatch
from ingest.pipeline.sink import Sink
from ingest.pipeline.spool import Spool
from ingest.runner import Writer
from ingest.store.schema import L7_AUDIT

from .helpers import DNS_330, HTTP_348, fixture_lines
from .faults import FAIL_AFTER, FAIL_BEFORE, FaultyClient

WAIT_S = 60  # a stuck batcher fails the test instead of hanging the run


def _flows(count: int) -> list:
    """Decoded HTTP flows, each with its own id."""
    decoder = Decoder()
    template = json_format.ParseDict(fixture_lines(HTTP_348)[0], observer_pb2.GetFlowsResponse(),
                                     ignore_unknown_fields=True)
    flows = []
    for index in range(count):
        response = observer_pb2.GetFlowsResponse()
        response.CopyFrom(template)
        response.flow.uuid = f"00000000-0000-4000-8000-{index:012d}"
        flows.append(decoder.decode(response))
    return flows


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class SlowFirstInsert:
    """The real client, whose first insert takes `delay_s` longer: a store that is slow once."""

    def __init__(self, client, delay_s: float):
        self._client = client
        self._delay_s = delay_s
        self.inserts = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def insert(self, *args, **kwargs):
        self.inserts += 1
        if self.inserts == 1:
            time.sleep(self._delay_s)
        return self._client.insert(*args, **kwargs)


def _pipeline_behind_a_slow_insert(config, client, tmp_path, max_rows: int):
    """A pipeline (max_delay 2 s) whose first insert takes 4 s, and the stored l7_audit
    batches as (commit time, rows)."""
    commits: list[tuple[float, int]] = []
    sink = Sink(SlowFirstInsert(client, delay_s=4.0), config.store.database)
    writer = Writer(Spool(tmp_path / "spool", 1 << 30), sink,
                    on_commit=lambda table, rows: commits.append((time.monotonic(), len(rows)))
                    if table == L7_AUDIT.name else None)
    return Batcher(writer, BatchConfig(max_rows=max_rows, max_delay_ms=2000)), sink, commits


def test_flows_that_arrive_during_a_slow_insert_wait_at_most_max_delay_in_all(config, client, tmp_path):
    first, second = _flows(2)
    pipeline, sink, commits = _pipeline_behind_a_slow_insert(config, client, tmp_path, max_rows=1000)
    batcher = threading.Thread(target=pipeline.run)
    batcher.start()
    pipeline.put(Entry(first, False, "test"))
    _wait(lambda: sink.client.inserts, "the first batch to close (after 2 s) and its insert to begin")
    pipeline.put(Entry(second, False, "test"))
    _wait(lambda: len(commits) == 2, "the second batch")
    pipeline.finish()
    batcher.join(WAIT_S)
    # The second flow waited out the 4 s insert, longer than max_delay: its batch closes as
    # soon as the first is stored, not max_delay (2 s) later.
    assert commits[1][0] - commits[0][0] < 1.0, commits


def test_a_backlog_goes_out_in_full_batches(config, client, tmp_path):
    """Flows that queued behind a slow insert are past max_delay when it ends; they still
    go out max_rows at a time, not as many small batches."""
    first, *backlog = _flows(1 + 3000)
    pipeline, sink, commits = _pipeline_behind_a_slow_insert(config, client, tmp_path, max_rows=20_000)
    batcher = threading.Thread(target=pipeline.run)
    batcher.start()
    pipeline.put(Entry(first, False, "test"))
    _wait(lambda: sink.client.inserts, "the first insert to begin")
    for flow in backlog:
        pipeline.put(Entry(flow, False, "test"))
    _wait(lambda: len(commits) == 2, "the backlog's batch")
    pipeline.finish()
    batcher.join(WAIT_S)
    assert [rows for _, rows in commits] == [1, 3000]


class _Cycle:
    def __init__(self):
        self.me = self


def test_the_cycle_collector_runs_between_batches_instead_of_on_allocation_counts(config, client, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(batching, "_GC_INTERVAL_S", 0.0)  # due after every batch
    garbage_of_batch: list[weakref.ref] = []
    collector_enabled: list[bool] = []

    def committed(table, rows):
        if table != L7_AUDIT.name:
            return
        collector_enabled.append(gc.isenabled())
        garbage = _Cycle()  # unreachable once this returns; only the cycle collector frees it
        garbage_of_batch.append(weakref.ref(garbage))

    pipeline = Batcher(Writer(Spool(tmp_path / "spool", 1 << 30), Sink(client, config.store.database),
                              on_commit=committed), BatchConfig(max_rows=1, max_delay_ms=1000))
    # All input waits before the loop starts, so it never idles between the two batches
    # (the idle wait has its own turn of the timer).
    for flow in _flows(2):
        pipeline.put(Entry(flow, False, "test"))
    pipeline.finish()
    pipeline.run()
    assert collector_enabled == [False, False]  # not started by allocation counts while running
    assert garbage_of_batch[0]() is None  # but run once the first batch was stored
    assert gc.isenabled()  # and handed back as it was found


def test_the_cycle_collector_also_runs_on_its_timer_when_no_flows_come(config, client, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "_GC_INTERVAL_S", 0.2)
    pipeline = Batcher(Writer(Spool(tmp_path / "spool", 1 << 30), Sink(client, config.store.database)), BatchConfig())
    batcher = threading.Thread(target=pipeline.run)
    batcher.start()
    _wait(lambda: not gc.isenabled(), "the pipeline to start")
    garbage = _Cycle()  # as a failed reconnect leaves behind: an exception and its traceback
    collected = weakref.ref(garbage)
    del garbage
    _wait(lambda: collected() is None, "the timed collection")
    pipeline.finish()
    batcher.join(WAIT_S)
    assert gc.isenabled()


def test_two_pipelines_in_one_process_leave_the_collector_off_until_both_end(config, client, tmp_path):
    pipelines = [Batcher(Writer(Spool(tmp_path / name, 1 << 30), Sink(client, config.store.database)), BatchConfig())
                 for name in ("a", "b")]
    batchers = [threading.Thread(target=p.run) for p in pipelines]
    for batcher in batchers:
        batcher.start()
    _wait(lambda: not gc.isenabled(), "the pipelines to start")
    pipelines[0].finish()
    batchers[0].join(WAIT_S)
    assert not gc.isenabled()
    pipelines[1].finish()
    batchers[1].join(WAIT_S)
    assert gc.isenabled()


def test_inserted_rows_are_not_kept_alive_by_the_client(config, client, tmp_path):
    """The rows of a stored batch are freed by reference counting, with no cycle collection:
    clickhouse-connect's insert context, itself in a cycle, does not hold them."""
    flow = _flows(1)[0]
    rows = [flow.audit_row]
    spool = Spool(tmp_path / "spool", 1 << 30)
    spool.append(SealedBatch("b1", "test", {L7_AUDIT.name: rows}, {}, flow.time_ns,
                              {("test", flow.node): {"received": 1}}))
    held_before = sys.getrefcount(rows)
    gc.disable()
    try:
        assert Writer(spool, Sink(client, config.store.database)).drain()
        assert sys.getrefcount(rows) == held_before - 1  # the removed spool batch's reference is gone
    finally:
        gc.enable()


def test_a_batch_resumed_after_a_crash_is_inserted_and_counted_as_first_resolved(config, client, tmp_path):
    """Rows that may be stored are looked up once. If the process dies after some of the
    batch's inserts landed, the next start must not take those rows for duplicates: it
    uses the answer kept in the spool, re-inserts the same blocks (deduplicated by their
    tokens) and the ledger counts them as stored by this batch."""
    flows = _flows(2)
    db = config.store.database
    spool = Spool(tmp_path / "spool", 1 << 30)
    batch = batching.Batch()
    for flow in flows:
        batch.add(Entry(flow, True, "file.jsonl"))  # maybe stored: as in a replay
    spool.append(batch.seal())
    # Calls 0 and 1 ask whether the http_flows and l7_audit ranges hold rows; call 2, the
    # http_flows insert, lands and then "fails".
    assert not Writer(spool, Sink(FaultyClient(client, {2: FAIL_AFTER}), db)).drain()
    # The answer (none of them stored) is an empty marker beside the batch, not a rewrite.
    [batch_file] = (tmp_path / "spool").glob("*.batch")
    assert batch_file.with_suffix(".nothing-stored").exists()
    assert not Spool(tmp_path / "spool", 1 << 30)._read(batch_file).resolved
    restarted = Spool(tmp_path / "spool", 1 << 30)  # the process died: read back from disk
    assert Writer(restarted, Sink(client, db)).drain()
    assert list((tmp_path / "spool").iterdir()) == []
    ledger = client.query(f"SELECT stored_http, stored_audit, duplicates FROM `{db}`.ingest_ledger").result_rows
    assert ledger == [(2, 2, 0)]
    assert client.query(f"SELECT count() FROM `{db}`.http_flows").result_rows == [(2,)]


class _FirstInsertLandsThenFails(FaultyClient):
    """Its first insert lands and then reports failure; whatever it asked before did not count."""

    def __init__(self, client):
        super().__init__(client)
        self._inserts = 0

    def insert(self, *args, **kwargs):
        self._faults = {self.calls: FAIL_AFTER} if self._inserts == 0 else {}
        self._inserts += 1
        return super().insert(*args, **kwargs)


def _flow_of(path, flow_id: str, seconds: int):
    response = json_format.ParseDict(fixture_lines(path)[0], observer_pb2.GetFlowsResponse())
    response.flow.uuid = flow_id
    response.flow.time.FromSeconds(seconds)
    return Decoder().decode(response)


def test_a_lookup_that_fails_partway_leaves_the_batch_as_it_was(config, client, tmp_path):
    """One DNS flow of a replayed batch is stored already. The first attempt's lookups find
    it in dns_flows and l7_audit, then the http_flows lookup fails; the retry in the same
    process must ask again and keep that answer (not 'nothing stored'), so that after a
    crash the same blocks go in and the flow is stored once."""
    db = config.store.database
    known = _flow_of(DNS_330, "00000000-0000-4000-8000-000000000000", 1_700_000_000)
    new = [_flow_of(HTTP_348, f"00000000-0000-4000-8000-00000000000{i}", 1_700_000_000 + 100 * i) for i in (1, 2)]
    spool = Spool(tmp_path / "spool", 1 << 30)
    stored_before = batching.Batch()
    stored_before.add(Entry(known, False, "file.jsonl"))
    spool.append(stored_before.seal())
    assert Writer(spool, Sink(client, db)).drain()
    batch = batching.Batch()
    for flow in (known, *new):
        batch.add(Entry(flow, True, "file.jsonl"))
    spool.append(batch.seal())
    # Calls: 0-1 dns_flows lookup (range, ids), 2-3 l7_audit, 4 the http_flows range: fails.
    assert not Writer(spool, Sink(FaultyClient(client, {4: FAIL_BEFORE}), db)).drain()
    # The retry, in this process: its first insert lands and then "fails".
    assert not Writer(spool, Sink(_FirstInsertLandsThenFails(client), db)).drain()
    assert Writer(Spool(tmp_path / "spool", 1 << 30), Sink(client, db)).drain()  # after a crash
    counts = {table: client.query(f"SELECT count(), uniqExact(flow_id) FROM `{db}`.{table}").result_rows[0]
              for table in ("dns_flows", "http_flows", "l7_audit")}
    assert counts == {"dns_flows": (1, 1), "http_flows": (2, 2), "l7_audit": (3, 3)}
    ledger = client.query(f"SELECT stored_http, stored_dns, stored_audit, duplicates FROM `{db}`.ingest_ledger "
                          "ORDER BY committed_at, stored_audit").result_rows
    assert ledger == [(0, 1, 1, 0), (2, 0, 2, 1)]


class FailsFirstInsert:
    """The real client, whose first insert fails (a store migrated under us refuses the
    block, say); it records the column types each insert declared."""

    def __init__(self, client):
        self._client = client
        self.declared: list = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def insert(self, *args, column_type_names=None, **kwargs):
        self.declared.append(column_type_names)
        if len(self.declared) == 1:
            raise ConnectionError("refused")
        return self._client.insert(*args, column_type_names=column_type_names, **kwargs)


def test_after_a_failed_insert_the_sink_asks_the_server_for_the_types(config, client, tmp_path):
    """On a schema of this build's version inserts declare the columns' types; once one
    fails (the schema may have been migrated by a newer pod since the start), the retry
    and every insert after it go by the server's types."""
    recording = FailsFirstInsert(client)
    writer = Writer(Spool(tmp_path / "spool", 1 << 30), Sink(recording, config.store.database, schema_current=True))
    pipeline = Batcher(writer, BatchConfig(max_delay_ms=0))
    for flow in _flows(2):
        pipeline.put(Entry(flow, False, "test"))
    pipeline.finish()
    pipeline.run()
    assert recording.declared[0] is not None and list(recording.declared[0])  # the first, declared, failed
    assert recording.declared[1:] and all(types is None for types in recording.declared[1:])
    stored = client.query(f"SELECT count() FROM `{config.store.database}`.l7_audit").result_rows[0][0]
    assert stored == 2
