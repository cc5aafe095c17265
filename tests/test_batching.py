"""When a batch closes: at batch.max_rows, or batch.max_delay_ms after its oldest flow
arrived, counting the time that flow waited while the previous batch was being stored."""

from __future__ import annotations

import threading
import time

from google.protobuf import json_format

from ingest.api.observer import observer_pb2
from ingest.config import BatchConfig
from ingest.decode import Decoder
from ingest.pipeline import END, Entry, Pipeline
from ingest.sink import Sink
from ingest.spool import Spool

from .conftest import HTTP_348, fixture_lines


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


def test_flows_that_arrive_during_a_slow_insert_wait_at_most_max_delay_in_all(config, client, tmp_path):
    decoder = Decoder()
    flows = [decoder.decode(json_format.ParseDict(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True))
             for line in fixture_lines(HTTP_348)[:2]]
    commits: list[float] = []
    sink = Sink(SlowFirstInsert(client, delay_s=1.5), config.store.database)
    pipeline = Pipeline(sink, Spool(tmp_path / "spool", 1 << 30), BatchConfig(max_rows=1000, max_delay_ms=1000),
                        on_commit=lambda table, rows: commits.append(time.monotonic()) if table == "l7_audit" else None)
    batcher = threading.Thread(target=pipeline.run)
    batcher.start()
    pipeline.put(Entry(flows[0], False, "test"))
    while sink.client.inserts == 0:  # the first batch closed after 1 s and is being inserted
        time.sleep(0.01)
    pipeline.put(Entry(flows[1], False, "test"))
    while len(commits) < 2:
        time.sleep(0.01)
    pipeline.finish()
    batcher.join()
    # The second flow waited out the 1.5 s insert, longer than max_delay: its batch closes
    # as soon as the first is stored, not max_delay (1 s) later.
    assert commits[1] - commits[0] < 0.6, commits


class _Cycle:
    def __init__(self):
        self.me = self


def test_the_cycle_collector_runs_between_batches_instead_of_on_allocation_counts(config, client, tmp_path,
                                                                                   monkeypatch):
    import gc
    import weakref

    from ingest import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "_GC_INTERVAL_S", 0.0)  # due after every batch

    decoder = Decoder()
    flows = [decoder.decode(json_format.ParseDict(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=True))
             for line in fixture_lines(HTTP_348)[:2]]
    garbage_of_batch: list[weakref.ref] = []
    collector_enabled: list[bool] = []

    def committed(table, rows):
        if table != "l7_audit":
            return
        collector_enabled.append(gc.isenabled())
        garbage = _Cycle()  # unreachable once this returns; only the cycle collector frees it
        garbage_of_batch.append(weakref.ref(garbage))

    pipeline = Pipeline(Sink(client, config.store.database), Spool(tmp_path / "spool", 1 << 30),
                        BatchConfig(max_rows=1, max_delay_ms=1000), on_commit=committed)
    batcher = threading.Thread(target=pipeline.run)
    batcher.start()
    for flow in flows:  # batches of one row each
        pipeline.put(Entry(flow, False, "test"))
    pipeline.finish()
    batcher.join()
    assert collector_enabled == [False, False]  # not started by allocation counts while running
    assert garbage_of_batch[0]() is None  # but run once the first batch was stored
    assert gc.isenabled()  # and handed back as it was found


def test_the_cycle_collector_also_runs_on_its_timer_when_no_flows_come(config, client, tmp_path, monkeypatch):
    import weakref

    from ingest import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "_GC_INTERVAL_S", 0.2)
    pipeline = Pipeline(Sink(client, config.store.database), Spool(tmp_path / "spool", 1 << 30), BatchConfig())
    batcher = threading.Thread(target=pipeline.run)
    batcher.start()
    time.sleep(0.05)  # running, collector off, no flows
    garbage = _Cycle()  # as a failed reconnect leaves behind: an exception and its traceback
    collected = weakref.ref(garbage)
    del garbage
    deadline = time.monotonic() + 5
    while collected() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.finish()
    batcher.join()
    assert collected() is None


def test_inserted_rows_are_not_kept_alive_by_the_client(config, client, tmp_path):
    """The rows of a stored batch are freed by reference counting, with no cycle collection:
    clickhouse-connect's insert context, itself in a cycle, does not hold them."""
    import gc
    import sys

    from ingest.schema import L7_AUDIT
    from ingest.spool import SpooledBatch

    decoder = Decoder()
    flow = decoder.decode(json_format.ParseDict(fixture_lines(HTTP_348)[0], observer_pb2.GetFlowsResponse(),
                                                ignore_unknown_fields=True))
    rows = [flow.audit_row]
    spool = Spool(tmp_path / "spool", 1 << 30)
    spool.append(SpooledBatch("b1", "test", {L7_AUDIT.name: rows}, {}, flow.time_ns, {flow.flow_id},
                              {("test", flow.node): {"received": 1}}, resolved=False))
    held_before = sys.getrefcount(rows)
    gc.disable()
    try:
        assert Sink(client, config.store.database).drain(spool, lambda batch, inserted: None)
        del spool  # the spool keeps the batch it wrote last
        assert sys.getrefcount(rows) == held_before - 1
    finally:
        gc.enable()
