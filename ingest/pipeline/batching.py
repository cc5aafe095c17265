"""Batching: decoded items from a source, gathered into batches and handed on sealed.

The dispatcher puts `Entry`s in an inbox bounded in items (`batch.queue_size`) and in
bytes (`batch.queue_mb`, counted as the memory decoded flows hold): a full inbox blocks the
source, backpressure, never a drop in memory. The batching loop closes a batch at
`batch.max_rows` rows or `batch.max_mb` bytes (no more than the spool holds), once its
oldest flow has waited `batch.max_delay_ms` and no more are waiting (a backlog goes out
in full batches, not in many small ones), or when the source changes; drops ids
repeated within it; and hands it, sealed, to the writer, which makes it durable and
stores it. When the writer has no room (the spool is full because the store fails, or
the disk is) the loop waits before taking more input.

The writer is any object with `drain(force=False) -> bool` (store what waits; True when
nothing is left), `pending() -> int` (batches waiting), `has_room(incoming_bytes=0) -> bool`,
`commit(sealed)` and `holding` (flows it holds in memory, not yet durable); the wiring
(`runner`) gives it one.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from .. import metrics
from ..config import BatchConfig
from ..store.schema import INGEST_GAPS, L7_AUDIT, Table
from .records import END, Entry, FilePosition, FlowRows, GapRow, SealedBatch

log = logging.getLogger(__name__)

# How long a source waits for room in a full inbox before looking again.
_POLL_S = 0.002
# How long the batching loop sleeps when the inbox is empty (never past the open
# batch's deadline). Flows wait in the inbox meanwhile, so this adds no loss and at most
# this much to the first flow after a quiet spell; waking every 2 ms instead cost an
# idle ingester 0.016-0.019 cores (bench, no flows: 0.004-0.005 cores now).
_IDLE_POLL_S = 0.05
# Rows hold no reference cycles, so reference counting frees them. Python's cycle
# collector, started by allocation counts, kept re-scanning the hundreds of thousands of
# row objects waiting in the inbox and batches; while a batcher runs it is started on
# this timer instead (a pass over 900k objects takes about 150 ms), between batches.
_GC_INTERVAL_S = 30.0


class _CollectorPause:
    """Keeps the automatic cycle collector off while any batcher in the process runs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if not self._running:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._running += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._running -= 1
            if not self._running and self._was_enabled:
                gc.enable()


_COLLECTOR_PAUSE = _CollectorPause()


@dataclass
class Batch:
    """The batch being filled: rows by table, the ids that may be stored already, and the
    ledger's counts per node."""
    source: str = ""
    rows: dict[Table, list[tuple]] = field(default_factory=dict)
    check_stored: dict[Table, set[str]] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)
    # A file source's followed file -> where it stands after the batch's lines of it.
    positions: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    size: int = 0
    flow_bytes: int = 0
    newest_ns: int = 0

    def _add_row(self, table: Table, row_id: str, row: tuple, maybe_stored: bool) -> bool:
        key = (table.name, row_id)
        if key in self.seen:
            metrics.DUPLICATES_DROPPED.labels(table.name).inc()
            return False
        self.seen.add(key)
        self.rows.setdefault(table, []).append(row)
        if maybe_stored:
            self.check_stored.setdefault(table, set()).add(row_id)
        return True

    def _tally(self, node: str, time_ns: int) -> dict[str, int]:
        tally = self.tallies.get(node)
        if tally is None:
            tally = self.tallies[node] = {}
        if time_ns:
            if time_ns < tally.get("oldest_ns", time_ns + 1):
                tally["oldest_ns"] = time_ns
            if time_ns > tally.get("newest_ns", 0):
                tally["newest_ns"] = time_ns
        return tally

    def add(self, entry: Entry) -> None:
        item = entry.item
        if type(item) is FilePosition:  # no row: rides with the batch to the checkpoint
            self.source = entry.source
            self.positions[item.path] = (item.fingerprint, item.offset, item.line)
            return
        self.source = entry.source
        self.size += 1
        self.flow_bytes += entry.size
        if isinstance(item, FlowRows):
            tally = self._tally(item.node, item.time_ns)
            tally["received"] = tally.get("received", 0) + 1
            if item.time_ns > tally.get("newest_flow_ns", 0):
                tally["newest_flow_ns"] = item.time_ns
            if item.audit_row is None:  # a row of the input table, from which the store derives the others
                added = self._add_row(item.table, item.flow_id, item.row, entry.maybe_stored)
            else:
                if item.table is not None:
                    self._add_row(item.table, item.flow_id, item.row, entry.maybe_stored)
                added = self._add_row(L7_AUDIT, item.audit_id, item.audit_row, entry.maybe_stored)
            if added:
                self.newest_ns = max(self.newest_ns, item.time_ns)
        elif isinstance(item, GapRow):
            self._tally(item.node, item.time_ns)
            self._add_row(INGEST_GAPS, item.gap_id, item.row, entry.maybe_stored)
        else:
            tally = self._tally(item.node, item.time_ns)
            tally["filtered"] = tally.get("filtered", 0) + item.filtered
            tally["quarantined"] = tally.get("quarantined", 0) + item.quarantined

    def seal(self) -> SealedBatch:
        return SealedBatch(
            batch_id=uuid.uuid4().hex, source=self.source,
            rows={table.name: rows for table, rows in self.rows.items()},
            check_stored={table.name: ids for table, ids in self.check_stored.items()},
            newest_ns=self.newest_ns,
            tallies={(self.source, node): tally for node, tally in self.tallies.items()},
            created_ns=time.time_ns(), positions=dict(self.positions) or None)


class Batcher:
    """Runs the batching loop in the calling thread until a source puts END (or `stop`)."""

    def __init__(self, writer, batch: BatchConfig, stop: threading.Event | None = None,
                 shutdown_timeout_s: float | None = None, max_batch_bytes: int | None = None):
        """max_batch_bytes: at most batch.max_mb (the spool's size, say)."""
        self.writer = writer
        self.max_rows = batch.max_rows
        self.max_bytes = min(batch.max_mb << 20, max_batch_bytes or batch.max_mb << 20)
        self.max_delay_s = batch.max_delay_ms / 1000
        # A deque, not a queue.Queue: appends and pops need no lock of their own, which
        # matters at one handoff per flow. Both sides poll briefly when they must wait.
        self.inbox: collections.deque = collections.deque()
        self.inbox_size = batch.queue_size
        self.inbox_max_bytes = batch.queue_mb << 20
        # Bytes put in and taken out of the inbox: each counter is written by one thread only.
        self._put_bytes = 0
        self._taken_bytes = 0
        self.stop = stop or threading.Event()
        # None: wait for the store as long as it takes (a replay); else the SIGTERM bound.
        self.shutdown_timeout_s = shutdown_timeout_s
        self._next_collection = 0.0
        # Items given up at a stop with no room to make them durable.
        self._not_durable = 0

    def put(self, entry: Entry) -> None:
        while len(self.inbox) >= self.inbox_size or self._put_bytes - self._taken_bytes >= self.inbox_max_bytes:
            time.sleep(_POLL_S)
        self._put_bytes += entry.size
        self.inbox.append(entry)

    @property
    def inbox_bytes(self) -> int:
        return self._put_bytes - self._taken_bytes

    def finish(self) -> None:
        self.inbox.append(END)

    def idle(self) -> bool:
        """Nothing waits in the inbox."""
        return not self.inbox

    def run(self) -> None:
        with _COLLECTOR_PAUSE:
            self._next_collection = time.monotonic() + _GC_INTERVAL_S
            self._run()

    def _collect_when_due(self) -> None:
        if time.monotonic() >= self._next_collection:
            gc.collect()
            self._next_collection = time.monotonic() + _GC_INTERVAL_S

    def _pause(self) -> None:
        """Waiting for the store: the timed collection goes on meanwhile."""
        time.sleep(0.05)
        self._collect_when_due()

    def _run(self) -> None:
        self.writer.drain(force=True)  # what a previous run left
        batch = Batch()
        deadline = None
        while True:
            try:
                entry = self.inbox.popleft()
            except IndexError:
                entry = None
                metrics.QUEUE_DEPTH.set(0)
                metrics.QUEUE_BYTES.set(0)
                if self.writer.pending():
                    self.writer.drain()
                wait = _IDLE_POLL_S if deadline is None else min(_IDLE_POLL_S, deadline - time.monotonic())
                time.sleep(max(0.0, wait))
                self._collect_when_due()  # no flows for a while, but reconnects and scrapes go on
            if entry is END:
                self._flush(batch)
                self._not_durable += self.writer.holding if self.stop.is_set() else 0
                if self._not_durable:
                    log.warning("stopping with no room to make input durable (a full spool or disk): %d items not "
                                "made durable; they are read from Hubble again after the restart", self._not_durable)
                self._finish()
                return
            if entry is not None and entry is not END:
                self._taken_bytes += entry.size
            if entry is not None:
                if batch.size and entry.source != batch.source:
                    flushed_at = self._flush(batch)
                    batch, deadline = Batch(), flushed_at + self.max_delay_s
                if deadline is None:
                    deadline = time.monotonic() + self.max_delay_s
                batch.add(entry)
                if batch.size < self.max_rows and batch.flow_bytes < self.max_bytes:
                    continue  # more may be waiting: a batch past its deadline still takes them
            # Reached when the batch is full or the inbox was found empty (before the poll's sleep).
            full = batch.size >= self.max_rows or batch.flow_bytes >= self.max_bytes
            if full or (deadline is not None and time.monotonic() >= deadline):
                metrics.QUEUE_DEPTH.set(len(self.inbox))
                metrics.QUEUE_BYTES.set(self.inbox_bytes)
                flushed_at = self._flush(batch)
                # What arrived during the flush has waited since it began: its batch closes
                # max_delay after that, not max_delay after the flush ends.
                batch, deadline = Batch(), (flushed_at + self.max_delay_s if self.inbox else None)
                self._collect_when_due()

    def _flush(self, batch: Batch) -> float:
        """Hands the batch to the writer; returns when it began (time.monotonic()). A batch
        of file positions alone (the lines they follow went in the batch before, or were
        agent events) is handed on too: else a source gone quiet would never have its
        place made durable."""
        began = time.monotonic()
        if not batch.size and not batch.positions:
            return began
        # The bytes the budgets count are about what the batch's spool file takes.
        while not self.writer.has_room(batch.flow_bytes):
            # Backpressure: no more input until the store takes some of what waits.
            if self.stop.is_set():
                self._not_durable += batch.size
                return began
            self._pause()
        self.writer.commit(batch.seal())
        return began

    def _finish(self) -> None:
        started = time.monotonic()
        while not self.writer.has_room() or not self.writer.drain():  # a batch held on a full disk first
            if self.shutdown_timeout_s is not None and time.monotonic() - started > self.shutdown_timeout_s:
                log.warning("store still failing at shutdown: %d batches stay in the spool for the next start",
                            self.writer.pending())
                return
            self._pause()
