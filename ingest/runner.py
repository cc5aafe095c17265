"""Wires the stages together for the long-running `run` and the one-shot `replay`.

Source thread -> bounded queue -> batching loop -> sink, with the checkpoint advanced
after every acknowledged batch. Shutdown (a set `stop` event): the source stops
reading, the batch in hand is flushed, the checkpoint written, and run returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from prometheus_client import REGISTRY

from . import __version__, metrics
from .checkpoint import Checkpoint
from .config import Config
from .deadletter import DeadLetters
from .decode import Decoder
from .endpoint import Endpoint
from .l7metrics import L7Metrics
from .migrate import applied_version, migrate
from .pipeline import Pipeline
from .schema import SCHEMA_VERSION
from .sink import Sink
from .spool import Spool
from .sources.files import FileSource, ReplayCounts
from .sources.hubble import HubbleSource
from .store import connect

log = logging.getLogger(__name__)


def open_store(config: Config):
    client = connect(config)
    if config.store.migrate:
        migrate(client, config.store, config.cluster)
    return client


class _Thread(threading.Thread):
    """A thread that keeps the exception that ended it, to re-raise in the caller."""

    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as err:  # re-raised by the caller after join
            self.error = err


class Ingester:
    """`flowlog run`: follows one Hubble source into the store until stopped."""

    def __init__(self, config: Config, client, stop: threading.Event | None = None):
        self.config = config
        self.stop = stop or threading.Event()
        state = config.state_path
        state.mkdir(parents=True, exist_ok=True)
        self.checkpoint = Checkpoint(state, config.source.address)
        self.spool = Spool(state / "spool", config.spool.max_mb * 1024 * 1024)
        newest_spooled = self.spool.newest()
        if newest_spooled is not None and newest_spooled.newest_ns:
            # Spooled before a crash but not yet in the checkpoint: durable all the same.
            self.checkpoint.advance(newest_spooled.newest_ns, newest_spooled.ids_at_newest)
        self.dead_letters = DeadLetters(state, config.dead_letters.max_mb * 1024 * 1024)
        self.l7_metrics = L7Metrics(config.metrics.max_series, config.metrics.series_ttl_s)
        self.sink = Sink(client, config.store.database, config.store.retry_initial_s, config.store.retry_max_s)
        self.pipeline = Pipeline(self.sink, self.spool, config.batch, self.checkpoint, self.l7_metrics.observe,
                                 self.stop, config.shutdown_timeout_s)
        self.source = HubbleSource(config.source, Decoder(config.http), self.dead_letters, self.pipeline.put,
                                   self.stop, self.checkpoint.time_ns, self.checkpoint.ids_at_time)
        schema_current = applied_version(client, config.store.database) == SCHEMA_VERSION
        self.endpoint = None
        if config.metrics.address:
            self.endpoint = Endpoint(config.metrics.address, {
                "hubble": self.source.connected.is_set,
                "store": lambda: self.sink.healthy,
                "schema": lambda: schema_current,
            })

    def run(self) -> None:
        REGISTRY.register(self.l7_metrics)
        metrics.BUILD_INFO.info({"version": __version__})
        if self.endpoint is not None:
            self.endpoint.start()
            log.info("metrics, /healthz and /readyz on http://%s", self.endpoint.address)
        try:
            self._run()
        finally:
            if self.endpoint is not None:
                self.endpoint.stop()
            REGISTRY.unregister(self.l7_metrics)

    def _run(self) -> None:
        def follow():
            try:
                self.source.run()
            finally:
                self.pipeline.finish()

        reader = _Thread(follow, "hubble-source")
        writer = _Thread(self.pipeline.run, "batcher")
        reader.start()
        writer.start()
        while not self.stop.wait(0.2):
            if not writer.is_alive() or not reader.is_alive():
                self.stop.set()
        self.source.cancel()
        reader.join()
        writer.join()
        for thread in (writer, reader):
            if thread.error is not None:
                raise thread.error
        log.info("stopped; stored %s; checkpoint at %d", self.pipeline.stored, self.checkpoint.time_ns)

    def request_stop(self) -> None:
        self.stop.set()
        self.source.cancel()


@dataclass
class ReplaySummary:
    counts: ReplayCounts
    stored: dict[str, int]
    duplicates: int
    seconds: float
    dead_letter_path: str

    def line(self) -> str:
        c = self.counts
        stored = ", ".join(f"{n} {t}" for t, n in sorted(self.stored.items())) or "nothing new"
        rate = c.lines / self.seconds if self.seconds else 0.0
        text = (f"replayed {c.lines} lines in {self.seconds:.1f} s ({rate:,.0f} lines/s): {c.l7_flows} L7 flows, "
                f"{c.filtered} non-L7 filtered, {c.gaps} gap records; stored {stored}; "
                f"{self.duplicates} already stored")
        if c.bad_lines:
            text += f"; {c.bad_lines} bad lines kept in {self.dead_letter_path}"
        return text


def replay(config: Config, client, paths: list[str], progress=None) -> ReplaySummary:
    """`flowlog replay`: every line of every file through the same decoder into the store."""
    state = config.state_path
    state.mkdir(parents=True, exist_ok=True)
    dead_letters = DeadLetters(state, config.dead_letters.max_mb * 1024 * 1024)
    sink = Sink(client, config.store.database, config.store.retry_initial_s, config.store.retry_max_s)
    pipeline = Pipeline(sink, Spool(state / "spool", config.spool.max_mb * 1024 * 1024), config.batch)
    source = FileSource(paths, Decoder(config.http), dead_letters, pipeline.put, progress)
    started = time.monotonic()

    def read():
        try:
            source.run()
        finally:
            pipeline.finish()

    reader = _Thread(read, "file-source")
    reader.start()
    pipeline.run()
    reader.join()
    if reader.error is not None:
        raise reader.error
    counts = source.counts
    duplicates = (counts.l7_flows + counts.gaps
                  - pipeline.stored.get("l7_audit", 0) - pipeline.stored.get("ingest_gaps", 0))
    return ReplaySummary(source.counts, pipeline.stored, duplicates, time.monotonic() - started,
                         str(dead_letters.path))
