"""The spool: a bounded, durable queue of sealed batches between the batcher and the store.

Every batch is appended here first (temp file, fsync, rename); `next` gives the oldest
one still waiting, `done` removes it once the store has every row of it, `set_aside`
moves one the store can never take out of the way. So the spool is both the
write-ahead log that makes a crash harmless (a restart re-inserts the same blocks with
the same deduplication tokens) and the buffer that rides out a store outage; when it is
full (`has_room`) the batcher stops taking input: backpressure reaches Hubble instead of
memory growing. A batch's lookups (which of its rows were stored already) are answered
once and kept with it (`keep_answer`), so what gets inserted never changes afterwards.

Files are `<sequence>.batch`, read in sequence order; `spoolfile` is their format. A
file that cannot be read back (damaged on disk, put there by hand, or named otherwise
than `<sequence>.batch`) is moved to `unreadable/` in the spool (which keeps the newest
files within the spool's own size), logged with its path and the reason, and counted;
in its place the spool queues a batch holding one `ingest_gaps` row (kind
`spool_unreadable`), so the loss is on record in the store. A batch set aside is kept
and recorded the same way.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

from .. import metrics
from ..statedir import make_private_dir, open_private
from ..store.schema import INGEST_GAPS
from .records import RECORD_SOURCE, GapRow, SealedBatch, unreadable_spool_gap
from .spoolfile import SpoolFileError, load, write

log = logging.getLogger(__name__)

# Beside `<sequence>.batch`: its lookups found nothing stored.
_NOTHING_STORED = ".nothing-stored"
_NOT_STORED = "the flows of this spooled batch are not stored"


def _fsync_directory(directory: Path) -> None:
    """Makes a rename, link or unlink in directory durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _record(gap: GapRow) -> SealedBatch:
    """A batch that puts one lost spool batch on record: its ingest_gaps row."""
    return SealedBatch(batch_id=gap.gap_id, source=RECORD_SOURCE, rows={INGEST_GAPS.name: [gap.row]},
                       check_stored={INGEST_GAPS.name: {gap.gap_id}}, newest_ns=0,
                       tallies={(RECORD_SOURCE, ""): {"oldest_ns": gap.time_ns, "newest_ns": gap.time_ns}},
                       created_ns=gap.time_ns)


class Spool:
    """The queue in `directory`, full at `max_bytes` (an empty one takes one batch of any size)."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        make_private_dir(directory)
        for stale in directory.glob("*.tmp"):
            stale.unlink()  # a write that a crash interrupted; its batch was never acknowledged
        self._sizes = {p: p.stat().st_size for p in self._files()}
        for marker in directory.glob(f"*{_NOTHING_STORED}"):
            if marker.with_suffix(".batch") not in self._sizes:
                marker.unlink()  # its batch was removed, and a crash came before the marker
        # The batch last written, kept in memory: normally it is inserted right away, and
        # reading it back from disk would cost as much as writing it did. Not while the
        # store fails (release_memory): then batches wait on disk only.
        self._last: tuple[Path, SealedBatch] | None = None
        misnamed = [p for p in self._sizes if not (p.stem.isascii() and p.stem.isdigit())]
        for path in misnamed:
            del self._sizes[path]
        for path in misnamed:
            self._move_aside(path, SpoolFileError(f"{path}: not a spool file name (<sequence>.batch)"),
                             self.directory / f"{self._next_free():012d}.batch")
        self._next = self._next_free()
        self._publish()

    def _next_free(self) -> int:
        return max((int(p.stem) for p in self._sizes), default=0) + 1

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.batch"))

    def _publish(self) -> None:
        metrics.SPOOL_BYTES.set(self.bytes)
        metrics.SPOOL_BATCHES.set(len(self._sizes))

    @property
    def bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def has_room(self, incoming_bytes: int = 0) -> bool:
        """Room for a batch of about incoming_bytes (its file's size) within max_bytes; an
        empty spool always takes one, however large."""
        return not self._sizes or self.bytes + incoming_bytes <= self.max_bytes

    def append(self, batch: SealedBatch) -> Path:
        self._ensure_directory()
        return self._append(batch)

    def _append(self, batch: SealedBatch) -> Path:
        path = self.directory / f"{self._next:012d}.batch"
        self._next += 1
        self._write(path, batch)
        return path

    def _ensure_directory(self) -> None:
        """Makes the directory again if it was removed while running (the state dir deleted
        by hand). The batch held in memory is written again; the others it held are gone
        before the store had them, which a record in ingest_gaps says."""
        if self.directory.is_dir():
            return
        make_private_dir(self.directory)
        kept = self._last if self._last is not None and self._last[0] in self._sizes else None
        lost = [path for path in self._sizes if kept is None or path != kept[0]]
        lost_bytes = sum(self._sizes[path] for path in lost)
        self._sizes.clear()
        log.error("spool directory %s was removed while running: made again; %d batches (%d bytes) not yet stored "
                  "in it are lost%s", self.directory, len(lost), lost_bytes,
                  " (recorded in ingest_gaps as spool_unreadable)" if lost else "")
        if kept is not None:
            self._write(*kept)
        if lost:
            now_ns = time.time_ns()
            self._append(_record(unreadable_spool_gap(
                str(self.directory), f"removed|{self.directory}|{now_ns}", now_ns,
                f"{self.directory} was removed while running: {len(lost)} spooled batches ({lost_bytes} bytes), "
                f"not yet stored, are lost; {_NOT_STORED}")))
        self._publish()

    def keep_answer(self, path: Path, batch: SealedBatch, rows_dropped: bool) -> None:
        """The batch in path, resolved: its lookups are answered and its rows are what must
        be inserted. When they dropped rows the batch is written again; when they found
        nothing stored, an empty file beside it says so, which costs nothing next to
        rewriting the batch (in a replay every batch is looked up)."""
        self._ensure_directory()
        if path not in self._sizes:
            return  # its file went with the directory; it is still stored, from memory
        try:
            if rows_dropped:
                self._write(path, batch)
                return
            marker = path.with_suffix(_NOTHING_STORED)
            with open_private(marker, "wb") as handle:
                os.fsync(handle.fileno())
            _fsync_directory(self.directory)
        except OSError:
            # Not kept (a full disk): the batch is read from its file again, unanswered, and
            # looked up again, rather than inserted with an answer a crash would lose.
            if self._last is not None and self._last[0] == path:
                self._last = None
            raise

    def release_memory(self) -> None:
        """The store fails: the batch last written waits on disk like the others, instead of
        in memory as well, so that memory while the store is down stays within the byte
        budgets of what is being read."""
        self._last = None

    def _write(self, path: Path, batch: SealedBatch) -> None:
        self._put_in_place(self._write_aside(path, batch), path, batch)

    def _write_aside(self, path: Path, batch: SealedBatch) -> Path:
        """The batch, durable in a temp file beside path (which a restart deletes)."""
        tmp = path.with_suffix(".tmp")
        try:
            with open_private(tmp, "wb") as handle:
                write(batch, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)  # a part written on a full disk would keep the space it took
            raise
        return tmp

    def _put_in_place(self, tmp: Path, path: Path, batch: SealedBatch) -> None:
        size = tmp.stat().st_size
        os.replace(tmp, path)
        _fsync_directory(self.directory)
        self._sizes[path] = size
        self._last = (path, batch)
        self._publish()

    def _read(self, path: Path) -> SealedBatch:
        if self._last is not None and self._last[0] == path:
            return self._last[1]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SpoolFileError(f"{path}: cannot be read: {err.strerror}") from None
        batch = load(data, path)
        if not batch.resolved and path.with_suffix(_NOTHING_STORED).exists():
            batch.check_stored = {}  # the answer kept: none of its rows were stored
        return batch

    def _readable(self, pick) -> tuple[Path, SealedBatch] | None:
        """The batch of the file `pick` chooses among the spooled ones; an unreadable file
        is moved aside and replaced, in its place, by the batch that records it."""
        while self._sizes:
            path = pick(self._sizes)
            try:
                return path, self._read(path)
            except SpoolFileError as err:
                del self._sizes[path]
                self._move_aside(path, err, path)
        return None

    def _move_aside(self, path: Path, err: SpoolFileError, record_as: Path, outcome: str = _NOT_STORED) -> None:
        """Keeps the file in unreadable/ (never over another one) and spools, as record_as,
        a batch with the ingest_gaps row that puts the loss on record. The record is on
        disk before the file leaves its place, so a crash in between at worst keeps the
        file twice; the row is the same either time, and the sink stores it once."""
        metrics.SPOOL_UNREADABLE.inc()
        kept = self.directory / "unreadable"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            make_private_dir(kept)
            aside, copy = kept / f"{stamp}-{path.name}", 1
            while aside.exists():
                aside, copy = kept / f"{stamp}-{copy}-{path.name}", copy + 1
            status = path.stat()
            record = _record(unreadable_spool_gap(str(aside), f"{path.name}|{status.st_size}|{status.st_mtime_ns}",
                                                  status.st_mtime_ns, f"{err}; {outcome}"))
            path.with_suffix(_NOTHING_STORED).unlink(missing_ok=True)  # it was about the lost batch
            try:
                tmp = self._write_aside(record_as, record)
            except OSError as write_err:  # a full disk, most likely: keep the file all the same
                os.replace(path, aside)
                log.error("%s; moved to %s: %s, and no ingest_gaps row records it "
                          "(writing the record failed: %s)", err, aside, outcome, write_err)
                self._prune_kept(kept, aside)
                return
            os.link(path, aside)
            _fsync_directory(kept)
            self._put_in_place(tmp, record_as, record)
            if record_as != path:
                path.unlink()
                _fsync_directory(self.directory)
        except OSError as move_err:
            log.error("%s; it could not be moved aside (%s): it stays, and is skipped until the next start",
                      err, move_err)
            return
        log.error("%s; moved to %s: %s (recorded in ingest_gaps as spool_unreadable)", err, aside, outcome)
        self._prune_kept(kept, aside)

    def _prune_kept(self, kept: Path, newest: Path) -> None:
        """unreadable/ holds at most max_bytes: the files written last (and newest, whatever
        its size). Files that keep going bad cannot fill the disk."""
        files = []
        try:
            entries = list(os.scandir(kept))
        except OSError as err:
            log.error("could not keep %s within spool.max_mb: %s", kept, err)
            return
        total = 0
        for entry in entries:
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:  # gone since it was listed
                continue
            if entry.path == str(newest):
                total += status.st_size
            elif stat.S_ISREG(status.st_mode):
                files.append((status.st_mtime_ns, status.st_size, Path(entry.path)))
        for _, size, path in sorted(files, reverse=True):
            total += size
            if total <= self.max_bytes:
                continue
            try:
                path.unlink()
            except OSError as err:
                log.error("could not delete %s to keep %s within spool.max_mb: %s", path, kept, err)
                continue
            log.warning("deleted %s to keep %s within spool.max_mb", path, kept)

    def set_aside(self, path: Path, reason: str, stored_tables: tuple[str, ...]) -> None:
        """The store cannot take the batch in path (the rows of stored_tables it took already):
        kept and recorded as an unreadable file is."""
        del self._sizes[path]
        if self._last is not None and self._last[0] == path:
            self._last = None
        outcome = f"only its {', '.join(stored_tables)} rows are stored" if stored_tables else _NOT_STORED
        self._move_aside(path, SpoolFileError(f"{path}: {reason}"), path, outcome)
        self._publish()

    def next(self) -> tuple[Path, SealedBatch] | None:
        """The oldest batch waiting, and where it is kept."""
        self._ensure_directory()
        return self._readable(min)

    def newest(self, source: str | None = None) -> SealedBatch | None:
        """The batch appended last (a restart resumes after it); the last of source if given
        (the state dir may hold batches of a replay killed in it, or of another address)."""
        paths = sorted(self._sizes, reverse=True)
        while paths:
            path = paths[0]
            try:
                batch = self._read(path)
            except SpoolFileError as err:
                del self._sizes[path]
                self._move_aside(path, err, path)  # the record of the loss takes its place: read next
                if path not in self._sizes:
                    paths.pop(0)
                continue
            if source is None or batch.source == source:
                return batch
            paths.pop(0)
        return None

    def done(self, path: Path) -> None:
        """The store has every row of the batch in path."""
        path.unlink(missing_ok=True)  # gone with the directory, the batch was stored from memory
        path.with_suffix(_NOTHING_STORED).unlink(missing_ok=True)  # after: a marker alone is cleared at start
        self._sizes.pop(path, None)
        if self._last is not None and self._last[0] == path:
            self._last = None
        self._publish()
