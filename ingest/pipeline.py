"""The pipeline: decoded rows from a source, gathered into batches, handed to the sink.

A source thread puts `Entry`s on a bounded queue (a full queue blocks the source:
backpressure, never a drop). The batching loop flushes at `batch.max_rows` rows or
`batch.max_delay_ms` after the first row, drops ids repeated within a batch, and
after each acknowledged flush advances the source's checkpoint.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from . import metrics
from .checkpoint import Checkpoint
from .config import BatchConfig
from .decode import FlowRows, GapRow
from .schema import INGEST_GAPS, L7_AUDIT, Table
from .sink import Sink

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Entry:
    """One decoded item; maybe_stored marks rows that an earlier run or connection may have stored."""
    item: FlowRows | GapRow
    maybe_stored: bool


END = object()  # put on the queue by a source that has no more input


@dataclass
class Batch:
    rows: dict[Table, list[tuple]] = field(default_factory=dict)
    check_stored: dict[Table, set[str]] = field(default_factory=dict)
    seen: set[tuple[str, str]] = field(default_factory=set)
    size: int = 0
    newest_ns: int = 0
    ids_at_newest: set[str] = field(default_factory=set)

    def _add_row(self, table: Table, row_id: str, row: tuple, maybe_stored: bool) -> bool:
        key = (table.name, row_id)
        if key in self.seen:
            metrics.DUPLICATES_DROPPED.labels(table.name).inc()
            return False
        self.seen.add(key)
        self.rows.setdefault(table, []).append(row)
        if maybe_stored:
            self.check_stored.setdefault(table, set()).add(row_id)
        self.size += 1
        return True

    def add(self, entry: Entry) -> None:
        item = entry.item
        if isinstance(item, GapRow):
            self._add_row(INGEST_GAPS, item.gap_id, item.row, entry.maybe_stored)
            return
        if item.table is not None:
            self._add_row(item.table, item.flow_id, item.row, entry.maybe_stored)
        if self._add_row(L7_AUDIT, item.flow_id, item.audit_row, entry.maybe_stored):
            if item.time_ns > self.newest_ns:
                self.newest_ns, self.ids_at_newest = item.time_ns, {item.flow_id}
            elif item.time_ns == self.newest_ns:
                self.ids_at_newest.add(item.flow_id)


class Pipeline:
    """Runs the batching loop in the calling thread until a source puts END."""

    def __init__(self, sink: Sink, batch: BatchConfig, checkpoint: Checkpoint | None = None,
                 on_commit=None):
        self.sink = sink
        # Called with (table name, rows) for every table's rows once they are stored.
        self.on_commit = on_commit
        self.max_rows = batch.max_rows
        self.max_delay_s = batch.max_delay_ms / 1000
        self.queue: queue.Queue = queue.Queue(maxsize=batch.queue_size)
        self.checkpoint = checkpoint
        self.stored: dict[str, int] = {}
        self.committed = threading.Condition()
        self.committed_ns = checkpoint.time_ns if checkpoint else 0

    def put(self, entry: Entry) -> None:
        self.queue.put(entry)

    def finish(self) -> None:
        self.queue.put(END)

    def run(self) -> None:
        batch = Batch()
        deadline = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                entry = self.queue.get(timeout=timeout)
            except queue.Empty:
                entry = None
            metrics.QUEUE_DEPTH.set(self.queue.qsize())
            if entry is END:
                self._flush(batch)
                return
            if entry is not None:
                if deadline is None:
                    deadline = time.monotonic() + self.max_delay_s
                batch.add(entry)
            if batch.size >= self.max_rows or (deadline is not None and time.monotonic() >= deadline):
                self._flush(batch)
                batch, deadline = Batch(), None

    def _flush(self, batch: Batch) -> None:
        if not batch.size:
            return
        inserted = self.sink.write(batch.rows, batch.check_stored)
        for table, rows in inserted.items():
            self.stored[table] = self.stored.get(table, 0) + len(rows)
            if self.on_commit is not None:
                self.on_commit(table, rows)
        if batch.newest_ns:
            if self.checkpoint is not None:
                self.checkpoint.advance(batch.newest_ns, batch.ids_at_newest)
            metrics.record_commit(batch.newest_ns / 1e9)
            with self.committed:
                self.committed_ns = max(self.committed_ns, batch.newest_ns)
                self.committed.notify_all()
        log.debug("flushed %d rows: %s", batch.size, {t: len(r) for t, r in inserted.items()})
