"""The store down under steady input: the spool grows and drains and nothing is lost;
with the spool full, reading pauses, Hubble's buffer overwrites, the loss is recorded,
and ingestion recovers on its own."""

from __future__ import annotations

import resource
import threading
import time

import pytest

from ingest.decode.decoder import Decoder
from ingest.demo.traffic import DemoTraffic
from ingest.demo.observer import FlowBuffer, ObserverServer
from ingest.store.schema import HTTP_FLOWS, L7_AUDIT

from .helpers import RunningIngester, take_store_down, wait_for

START_NS = 1_790_000_000 * 1_000_000_000


def traffic(seconds: int) -> list:
    generator = DemoTraffic(seed=7)
    return [r for s in range(seconds) for r in generator.second(START_NS + s * 1_000_000_000)]


def feed(buffer: FlowBuffer, responses: list, chunk: int, pause_s: float) -> threading.Thread:
    def run():
        for start in range(0, len(responses), chunk):
            buffer.extend(responses[start:start + chunk])
            time.sleep(pause_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def flow_ids(responses) -> set[str]:
    decoder = Decoder()
    return {decoder.decode(r).audit_id for r in responses}


def stored_ids(client, database: str) -> list[str]:
    return [r[0] for r in client.query(f"SELECT flow_id FROM `{database}`.l7_audit").result_rows]


def all_committed(server, ingester) -> bool:
    """Everything the server sent is stored (messages can wait in gRPC's buffers, so the
    server having sent them is not enough)."""
    service = server.service
    return service.caught_up() and ingester.writer.committed_ns >= service.newest_sent_ns


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_outage_spools_then_drains_with_nothing_lost_and_memory_bounded(config, client):
    config.batch.max_rows, config.batch.queue_size = 500, 2000
    config.store.retry_initial_s, config.store.retry_max_s = 0.05, 0.2
    responses = traffic(600)  # about 12,000 flows
    buffer = FlowBuffer()
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            faulty = take_store_down(ingester, client)
            rss_before = max_rss_mb()
            feed(buffer, responses, chunk=1000, pause_s=0.05).join()
            wait_for(lambda: server.service.caught_up() and ingester.source.newest_ns and
                     ingester.batcher.idle() and ingester.checkpoint.time_ns == ingester.source.newest_ns,
                     what="everything received and spooled")
            spooled = len(ingester.spool)
            assert spooled >= 10 and ingester.spool.bytes > 1_000_000
            assert stored_ids(client, config.store.database) == []
            assert not ingester.sink.healthy
            # Memory bound: the flows wait on disk, not in memory.
            assert max_rss_mb() - rss_before < 100
            faulty.down.clear()
            wait_for(lambda: all_committed(server, ingester) and len(ingester.spool) == 0, timeout=60,
                     what="the spool to drain")
    ids = stored_ids(client, config.store.database)
    assert len(ids) == len(set(ids)) and set(ids) == flow_ids(responses)


def test_full_spool_pauses_reading_then_the_loss_is_recorded_and_ingestion_recovers(config, client):
    config.batch.max_rows, config.batch.queue_size, config.spool.max_mb = 400, 200, 1
    config.store.retry_initial_s, config.store.retry_max_s = 0.05, 0.2
    responses = traffic(400)
    buffer = FlowBuffer(capacity=500)
    with ObserverServer(buffer) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            faulty = take_store_down(ingester, client)
            feed(buffer, responses, chunk=200, pause_s=0.02).join()
            assert buffer.overwritten > 0
            # Full: the next batch would not fit (a batch closes at half the spool), so the
            # batcher stopped taking input; the spool never holds more than its size.
            assert 512 * 1024 <= ingester.spool.bytes <= 1024 * 1024
            faulty.down.clear()
            wait_for(lambda: all_committed(server, ingester), timeout=60, what="recovery")
    db = config.store.database
    ids = stored_ids(client, db)
    lost = server.service.lost_reported
    assert lost > 0 and len(ids) == len(set(ids))
    assert set(ids) <= flow_ids(responses)
    assert len(ids) + lost == len(responses)
    recorded = client.query(f"SELECT sum(count) FROM `{db}`.ingest_gaps WHERE kind = 'lost_events'").result_rows
    assert recorded == [(lost,)]


def test_stop_with_the_store_down_returns_within_the_bound_and_the_next_start_drains_the_spool(config, client):
    config.shutdown_timeout_s = 1.0
    config.store.retry_initial_s, config.store.retry_max_s = 0.05, 0.2
    responses = traffic(50)
    with ObserverServer(FlowBuffer(responses)) as server:
        config.source.address = server.address
        with RunningIngester(config, client) as ingester:
            take_store_down(ingester, client)
            wait_for(lambda: server.service.caught_up() and len(ingester.spool) > 0 and
                     ingester.checkpoint.time_ns == ingester.source.newest_ns, what="flows spooled")
            stopping = time.monotonic()
        assert time.monotonic() - stopping < config.shutdown_timeout_s + 3
        assert len(ingester.spool) > 0 and stored_ids(client, config.store.database) == []
        with RunningIngester(config, client) as second:
            wait_for(lambda: len(second.spool) == 0, what="the spool drained at start")
    ids = stored_ids(client, config.store.database)
    assert len(ids) == len(set(ids)) and set(ids) == flow_ids(responses)


def test_the_store_is_up_from_the_start_not_from_the_first_insert(config, client):
    """A node whose Hubble is quiet or down inserts nothing for a while: its store is no less up."""
    from prometheus_client import REGISTRY

    from ingest import metrics

    metrics.STORE_UP.set(0)  # as an earlier outage in this process left it
    config.source.address = "127.0.0.1:1"  # nothing listens: no flow, no insert
    with RunningIngester(config, client):
        assert REGISTRY.get_sample_value("flowlog_store_up") == 1


@pytest.mark.parametrize("derive", ["ingester", "store"])
def test_a_retry_past_the_deduplication_window_stores_nothing_twice(config, client, tmp_path, derive):
    """The http_flows insert lands, the l7_audit one lands but its answer is lost; before the
    retry, other writers (the DaemonSet's other nodes) insert more blocks into http_flows
    than its deduplication window holds. The token alone no longer protects the retry: the
    rows are looked up first."""
    from ingest.pipeline.batching import Batch
    from ingest.pipeline.records import Entry
    from ingest.pipeline.sink import Sink
    from ingest.pipeline.spool import Spool
    from ingest.runner import Writer

    from .faults import FAIL_AFTER, FaultyClient
    from .helpers import HTTP_348, fixture_lines, responses_of

    from ingest.store.flow_input import protobuf_schema

    db = config.store.database
    for table in ("http_flows", "l7_audit"):
        client.command(f"ALTER TABLE `{db}`.{table} MODIFY SETTING non_replicated_deduplication_window = 2")
    batch, decoder = Batch(), Decoder(derive_in_store=derive == "store")
    lines = fixture_lines(HTTP_348)
    for response in responses_of(lines[:10]):
        batch.add(Entry(decoder.decode(response), False, "hubble:4245"))
    # Ingester: 0 http_flows, 1 l7_audit (landed, its answer lost). Store: 0 flow_input, 1 the ledger.
    faulty = FaultyClient(client, {1: FAIL_AFTER} if derive == "ingester" else {0: FAIL_AFTER})
    schema = tmp_path / "flow_input.proto"
    schema.write_text(protobuf_schema())
    writer = Writer(Spool(config.state_path / "spool", 1 << 30), Sink(faulty, db, 0.0, 0.0, schema_file=str(schema)))
    writer.commit(batch.seal())
    assert len(writer.spool) == 1  # to be retried
    others = Batch()
    for response in responses_of(lines[10:13]):  # three blocks of one flow each, from elsewhere
        others.add(Entry(Decoder().decode(response), False, "other"))
    sealed = others.seal()
    for table in (HTTP_FLOWS, L7_AUDIT):
        for row in sealed.rows[table.name]:
            client.insert(f"`{db}`.{table.name}", [row], column_names=table.column_names)
    writer.sink._next_try = 0.0
    assert writer.drain(force=True)
    assert client.query(f"SELECT count(), uniqExact(flow_id) FROM `{db}`.http_flows").result_rows == [(13, 13)]
    assert client.query(f"SELECT count(), uniqExact(flow_id) FROM `{db}`.l7_audit").result_rows == [(13, 13)]
    assert client.query(f"SELECT sum(stored_http), sum(stored_audit), sum(duplicates) FROM `{db}`.ingest_ledger"
                        ).result_rows == [(10, 10, 0)]
