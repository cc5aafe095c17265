"""The one place the stages meet: `flowlog run` and `flowlog replay` wired from them.

    source (thread) --messages--> dispatcher (decode) --entries--> batcher (inbox)
        --sealed batch--> Writer: spool, then checkpoint, then sink --rows--> store

Stages import `pipeline.records` and `store`, never each other; everything that passes
between two of them is connected here. The `Writer` is the commit path: a sealed batch
is appended to the spool (durable from then on), the checkpoint advanced to it, and the
spool drained into the store oldest first, each batch looked up once (the answer kept
in the spool), given its ledger rows, inserted and removed. Shutdown (a set `stop`
event): the source stops reading, the batch in hand is flushed, and run returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import REGISTRY

from . import __version__, metrics
from .config import Config
from .decode.decoder import Decoder
from .decode.dispatch import Dispatcher
from .metrics.endpoint import Endpoint
from .metrics.history import HISTORY
from .metrics.l7 import L7Metrics
from .pipeline.batching import Batcher
from .pipeline.checkpoint import Checkpoint
from .pipeline.deadletters import DeadLetters
from .pipeline.ledger import ledger_rows
from .pipeline.records import RECORD_SOURCE, SealedBatch
from .pipeline.sink import BatchRefused, Sink, StoreUnavailable
from .pipeline.spool import Spool
from .sources.files import FileSource, ReplayCounts
from .sources.exporter import ExporterSource
from .sources.hubble import HubbleSource
from .statedir import StateDirInUse, StateLock, open_private
from .store.connection import check_derive_in_store
from .store.flow_input import FLOW_INPUT, derived_counts, protobuf_schema
from .store.migrations import SCHEMA_VERSION, applied_version
from .store.schema import INGEST_LEDGER

log = logging.getLogger(__name__)

# How often a batch held in memory on a full disk is tried again.
_WRITE_RETRY_S = 1.0


class Writer:
    """Takes sealed batches to the store through the spool (what `Batcher` calls its writer).
    `on_commit(table name, rows)` sees every table's rows once they are stored; `stored`
    counts them, and `committed_ns` is the newest flow stored (`committed` is notified).
    `stored` and `committed_flows` count the batches sealed in this process: not those a
    run before it left in the spool, which it stores first."""

    def __init__(self, spool: Spool, sink: Sink, checkpoint: Checkpoint | None = None, on_commit=None):
        self.spool = spool
        self.sink = sink
        self.checkpoint = checkpoint
        self.on_commit = on_commit
        self.stored: dict[str, int] = {}
        # Flows of the batches committed: stored, or found stored already.
        self.committed_flows = 0
        self._sealed_here: set[str] = set()
        # Batches whose insert failed in this process: some of their rows may be stored.
        self._attempted: set[str] = set()
        self.committed = threading.Condition()
        self.committed_ns = checkpoint.time_ns if checkpoint else 0
        self.abandoned = False
        # A sealed batch the spool could not take (a full disk): reading waits until it can.
        self._held: SealedBatch | None = None
        self._next_write = 0.0
        self.writable = True
        metrics.STATE_DIR_WRITABLE.labels("spool").set(1)

    def abandon(self) -> None:
        """The state dir is another process's now: nothing more is written to its spool or
        checkpoint. What was not made durable yet is read from Hubble again by the other."""
        self.abandoned = True

    def pending(self) -> int:
        """Batches not stored yet: in the spool, and the one held in memory."""
        return 0 if self.abandoned else len(self.spool) + (self._held is not None)

    def has_room(self, incoming_bytes: int = 0) -> bool:
        """Room for a sealed batch of about incoming_bytes; a batch held on a full disk first."""
        if self.abandoned:
            return True
        if self._held is not None:
            self.drain()  # storing what the spool holds may be what frees the disk
            if not self._make_durable(self._held):
                return False
        return self.spool.has_room(incoming_bytes) or self.drain()

    @property
    def holding(self) -> int:
        """Flows of the batch held in memory because the spool could not take it."""
        return sum(t.get("received", 0) for t in self._held.tallies.values()) if self._held is not None else 0

    def commit(self, sealed: SealedBatch) -> None:
        self._sealed_here.add(sealed.batch_id)
        if not self.abandoned and self._make_durable(sealed) and not self.drain():
            self.spool.release_memory()  # not stored now: it waits on disk, not in memory as well

    def _make_durable(self, sealed: SealedBatch) -> bool:
        """Appends the batch to the spool and advances the checkpoint to it. When the disk
        is full (or the state dir cannot be written), the batch is held in memory and
        tried again at most once a second: until then has_room is False and reading
        pauses, as with a full spool."""
        if sealed is self._held and time.monotonic() < self._next_write:
            return False
        try:
            self.spool.append(sealed)
        except OSError as err:
            self._held = sealed
            self._unwritable(err)
            return False
        self._held = None
        self._writable_again()
        if self.checkpoint is not None:
            self.checkpoint.advance(sealed.newest_flow_by_node(), sealed.created_ns, sealed.positions)
        return True

    def _unwritable(self, err: OSError) -> None:
        self._next_write = time.monotonic() + _WRITE_RETRY_S
        metrics.STATE_DIR_WRITABLE.labels("spool").set(0)
        if self.writable:
            self.writable = False
            log.error("cannot write to the spool in %s (%s): reading pauses until it can; Hubble's buffer holds "
                      "what comes meanwhile, and reports what it loses", self.spool.directory,
                      err.strerror or err)

    def _writable_again(self) -> None:
        if not self.writable:
            self.writable = True
            metrics.STATE_DIR_WRITABLE.labels("spool").set(1)
            log.warning("the spool in %s can be written again: reading goes on", self.spool.directory)

    def drain(self, force: bool = False) -> bool:
        """Store spooled batches, oldest first, until the spool is empty (True) or the
        store fails (False; the next call before the backoff has passed does nothing)."""
        if self.abandoned:
            return True
        if not force and (not self.sink.ready() or not self.writable and time.monotonic() < self._next_write):
            return False
        if self.spool and not self.sink.healthy:
            # Reading a batch back costs its size in memory twice over (the file, the rows):
            # not while the store still fails.
            try:
                self.sink.probe()
            except StoreUnavailable as err:
                self.sink.failed(err)
                return False
        while True:
            try:
                oldest = self.spool.next()
            except OSError as err:  # the spool's directory could not be made again
                self._unwritable(err)
                return False
            if oldest is None:
                return True
            path, batch = oldest
            try:
                if not batch.resolved:
                    # Lookups may give another answer later (more rows stored by then, some
                    # by this very batch): the first answer is kept, so a re-insert after a
                    # crash sends exactly the same blocks.
                    asked, dropped = self.sink.look_up(batch)
                    batch.rows[INGEST_LEDGER.name] = ledger_rows(batch)
                    batch.resolved = True
                    if asked or dropped:
                        self.spool.keep_answer(path, batch, rows_dropped=dropped)
                # A batch tried before, in this process or (as far as it knows) in the one
                # that spooled it, may be partly stored.
                retry = batch.batch_id in self._attempted or batch.batch_id not in self._sealed_here
                try:
                    inserted = self.sink.insert(batch, retry)
                except StoreUnavailable:
                    self._attempted.add(batch.batch_id)
                    raise
            except StoreUnavailable as err:
                self.sink.failed(err)
                self.spool.release_memory()
                return False
            except OSError as err:  # the answer could not be kept on disk: not inserted without it
                self._unwritable(err)
                return False
            except BatchRefused as err:
                self.spool.set_aside(path, str(err), err.stored_tables)
                self._sealed_here.discard(batch.batch_id)  # done with: never committed
                self._attempted.discard(batch.batch_id)
                continue
            self.sink.recovered()
            self.spool.done(path)
            self._writable_again()  # a lookup's answer that could not be kept on disk, kept now
            self._committed(batch, inserted)

    def _committed(self, batch: SealedBatch, inserted: dict[str, list[tuple]]) -> None:
        this_run = batch.batch_id in self._sealed_here
        self._sealed_here.discard(batch.batch_id)
        self._attempted.discard(batch.batch_id)
        if this_run and batch.source != RECORD_SOURCE:
            self.committed_flows += sum(tally.get("received", 0) for tally in batch.tallies.values())
        for table, rows in inserted.items():
            if table == INGEST_LEDGER.name or batch.source == RECORD_SOURCE:
                continue  # bookkeeping about the rows, or about a spool file: not input of this run
            if this_run:
                for name, count in (derived_counts(rows) if table == FLOW_INPUT.name else {table: len(rows)}).items():
                    self.stored[name] = self.stored.get(name, 0) + count
            if self.on_commit is not None:
                self.on_commit(table, rows)
        if batch.newest_ns:
            metrics.record_commit(batch.newest_ns / 1e9)
            with self.committed:
                self.committed_ns = max(self.committed_ns, batch.newest_ns)
                self.committed.notify_all()


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


def _spool_batch_bytes(config: Config) -> int:
    """The most flow bytes a batch may hold to fit the spool: its file holds each flow about
    twice (the audit row's protobuf and the typed row)."""
    return (config.spool.max_mb << 20) // 2


def _locked(config: Config) -> StateLock:
    lock = StateLock(config.state_path)
    lock.acquire()
    return lock


def _reading(source, batcher: Batcher):
    """The source's run, telling the batcher when it has no more."""
    def read():
        try:
            source.run()
        finally:
            batcher.finish()
    return read


class Ingester:
    """`flowlog run`: follows one Hubble server, or the exporter files of one, into the
    store until stopped."""

    def __init__(self, config: Config, client, stop: threading.Event | None = None, lock: StateLock | None = None,
                 serving_history: bool = False):
        """lock: the state dir's, taken already (by the command line, before the store is
        opened); else it is taken here, before anything reads or changes the state dir.
        serving_history: the history server runs in this process (`run --serve`), and its
        metrics are on this endpoint."""
        self.config = config
        self.stop = stop or threading.Event()
        self.lock = lock or _locked(config)
        try:
            self._build(config, client, serving_history)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, config: Config, client, serving_history: bool) -> None:
        state = config.state_path
        self.checkpoint = Checkpoint(state, config.source.address, config.source.node_idle_s)
        self.spool = Spool(state / "spool", config.spool.max_mb * 1024 * 1024)
        newest_spooled = self.spool.newest(config.source.address)
        if newest_spooled is not None:
            # Spooled before a crash but not yet in the checkpoint: durable all the same. Only
            # this source's: a batch of a replay or of another address says nothing of where
            # this one stands, and resuming after it would skip flows never received.
            self.checkpoint.advance(newest_spooled.newest_flow_by_node(), newest_spooled.created_ns,
                                    newest_spooled.positions)
        self.dead_letters = DeadLetters(state, config.dead_letters.max_mb * 1024 * 1024, self.stop)
        self.l7_metrics = L7Metrics(config.metrics.max_series, config.metrics.series_ttl_s) \
            if config.metrics.l7 else None
        schema_current = applied_version(client, config.store.database) == SCHEMA_VERSION
        self.sink = _sink(config, client)
        self.writer = Writer(self.spool, self.sink, self.checkpoint,
                             self.l7_metrics.observe if self.l7_metrics else None)
        self.batcher = Batcher(self.writer, config.batch, self.stop, config.shutdown_timeout_s,
                               max_batch_bytes=_spool_batch_bytes(config))
        files = config.source.files
        dispatcher = Dispatcher(_decoder(config), self.dead_letters, self.batcher.put,
                                kind="hubble" if files is None else "file", live=True)
        if files is None:
            self.source = HubbleSource(config.source, dispatcher, self.stop, self.checkpoint.nodes, self.checkpoint.seen)
        else:
            self.source = ExporterSource(config.source, dispatcher, self.stop, self.checkpoint.files,
                                         self.checkpoint.nodes, self.checkpoint.seen)
        self.endpoint = None
        if config.metrics.address:
            self.endpoint = Endpoint(config.metrics.address, {
                "hubble" if files is None else "exporter files": self.source.connected.is_set,
                "store": lambda: self.sink.healthy,
                "state dir writable": lambda: self.writer.writable and self.dead_letters.writable,
                "schema": lambda: schema_current,
            }, pages=(self.l7_metrics.page,) if self.l7_metrics else (),
                registries=(REGISTRY, HISTORY) if serving_history else (REGISTRY,))

    def run(self) -> None:
        metrics.BUILD_INFO.info({"version": __version__})
        try:
            if self.endpoint is not None:
                self.endpoint.start()
                log.info("metrics, /healthz and /readyz on http://%s", self.endpoint.address)
            self._run()
        finally:
            if self.endpoint is not None:
                self.endpoint.stop()
            self.lock.release()

    def _run(self) -> None:
        reader = _Thread(_reading(self.source, self.batcher), "source")
        batcher = _Thread(self.batcher.run, "batcher")
        reader.start()
        batcher.start()
        lost_lock = None
        while not self.stop.wait(0.2):
            if not batcher.is_alive() or not reader.is_alive():
                self.stop.set()
            try:
                self.lock.check()
            except StateDirInUse as err:  # the state dir was removed, and another process took it
                lost_lock = err
                self.writer.abandon()
                self.stop.set()
        self.source.cancel()
        reader.join()
        batcher.join()
        for thread in (batcher, reader):
            if thread.error is not None:
                raise thread.error
        if lost_lock is not None:
            raise lost_lock
        log.info("stopped; stored %s; checkpoint at %d", self.writer.stored, self.checkpoint.time_ns)

    def request_stop(self) -> None:
        self.stop.set()
        self.source.cancel()


@dataclass
class ReplaySummary:
    counts: ReplayCounts
    stored: dict[str, int]
    duplicates: int
    seconds: float
    dead_letters_kept: str  # DeadLetters.where_kept()
    # L7 flows read but in no batch committed (a batch the store refused and set aside).
    not_committed: int = 0

    @property
    def complete(self) -> bool:
        """Every line of every input was a flow or a gap record, each L7 flow in a batch
        committed (stored, or stored already), and there was at least one."""
        c = self.counts
        return (not c.bad_lines and not c.unreadable and not self.not_committed
                and c.l7_flows + c.filtered + c.gaps + c.events > 0)

    def line(self) -> str:
        c = self.counts
        stored = ", ".join(f"{n} {t}" for t, n in sorted(self.stored.items())) or "nothing new"
        rate = c.lines / self.seconds if self.seconds else 0.0
        text = (f"replayed {c.lines} lines in {self.seconds:.1f} s ({rate:,.0f} lines/s): {c.l7_flows} L7 flows, "
                f"{c.filtered} non-L7 filtered, {c.gaps} gap records"
                f"{f', {c.events} agent or debug events (not stored)' if c.events else ''}; stored {stored}; "
                f"{self.duplicates} already stored")
        if c.bad_lines:
            text += f"; {c.bad_lines} bad lines {self.dead_letters_kept}"
        if c.unreadable:
            text += f"; {len(c.unreadable)} inputs not read to their end: {'; '.join(c.unreadable)}"
        if self.not_committed:
            text += f"; {self.not_committed} L7 flows not stored (their batch was set aside: see ingest_gaps)"
        if c.l7_flows + c.filtered + c.gaps + c.events == 0:
            text += "; no line was a Hubble flow"
        return text


def replay(config: Config, client, paths: list[str], progress=None, lock: StateLock | None = None) -> ReplaySummary:
    """`flowlog replay`: every line of every file through the same decoder into the store;
    lock as for the Ingester."""
    lock = lock or _locked(config)
    try:
        return _replay(config, client, paths, progress)
    finally:
        lock.release()


def _decoder(config: Config) -> Decoder:
    return Decoder(config.http, config.kafka, derive_in_store=config.store.derive == "store")


def _sink(config: Config, client) -> Sink:
    """The sink for the configured store. The embedded engine reads the input table's
    protobuf schema from a file in the state dir; a server gets it with each insert."""
    schema_file = ""
    embedded = urlsplit(config.store_dsn).scheme == "chdb"
    if config.store.derive == "store":
        check_derive_in_store(client, config.store.database, server=not embedded)
    if embedded:
        path = config.state_path / "flow_input.proto"
        with open_private(path, "w") as handle:
            handle.write(protobuf_schema())
        schema_file = str(path)
    return Sink(client, config.store.database, config.store.retry_initial_s, config.store.retry_max_s,
                applied_version(client, config.store.database) == SCHEMA_VERSION, schema_file)


def _replay(config: Config, client, paths: list[str], progress) -> ReplaySummary:
    state = config.state_path
    dead_letters = DeadLetters(state, config.dead_letters.max_mb * 1024 * 1024)
    sink = _sink(config, client)
    writer = Writer(Spool(state / "spool", config.spool.max_mb * 1024 * 1024), sink)
    batcher = Batcher(writer, config.batch, max_batch_bytes=_spool_batch_bytes(config))
    dispatcher = Dispatcher(_decoder(config), dead_letters, batcher.put, kind="file", live=False)
    source = FileSource(paths, dispatcher, progress)
    started = time.monotonic()
    reader = _Thread(_reading(source, batcher), "file-source")
    reader.start()
    batcher.run()
    reader.join()
    if reader.error is not None:
        raise reader.error
    counts = source.counts
    not_committed = counts.l7_flows - writer.committed_flows
    duplicates = (counts.l7_flows - not_committed + counts.gaps
                  - writer.stored.get("l7_audit", 0) - writer.stored.get("ingest_gaps", 0))
    return ReplaySummary(source.counts, writer.stored, duplicates, time.monotonic() - started,
                         dead_letters.where_kept(), not_committed)
