"""The spool: a bounded on-disk queue of batches between the batcher and the store.

Every batch is written here first (temp file, fsync, rename), and only then is the
source's checkpoint advanced and the batch inserted; it is removed once every insert
of it is acknowledged. So the spool is both the write-ahead log that makes a crash
harmless (a restart re-inserts the same blocks with the same deduplication tokens)
and the buffer that rides out a store outage. When it is full the batcher stops
taking input: backpressure reaches Hubble instead of memory growing.

Files are `<sequence>.batch`, replayed in sequence order, oldest first. The content
is a header naming the format, then a `SpooledBatch`'s fields by name in `marshal`
format: rows are tuples of str, int, bytes, lists and dicts, which marshal writes 2.5
times as fast as pickle (3.1 against 7.7 µs a flow); marshal reads what older Pythons
wrote. Earlier builds pickled the batch: those files are still read, so an upgrade
inserts the batches that a shutdown left behind.

A batch holds rows in the layout of the schema version that wrote it, which the file
records; one written by an older build (before schema version 6 the file did not say,
so it is told by the rows' lengths) is brought to this version's layout when read:
columns matched by name, a column it lacks given its type's zero, a removed or computed
one dropped, and a flow_id that is no UUID replaced as `decode.uuid_text` says.

A file that cannot be read back (damaged on disk, put there by hand, or named otherwise
than `<sequence>.batch`) is moved to `unreadable/` in the spool (which keeps the newest
files within the spool's own size), logged with its path and the reason, and counted;
in its place the spool queues a batch holding one `ingest_gaps` row (kind
`spool_unreadable`), so the loss is on record in the store. A batch that the store's
client refuses (see Sink) is set aside the same way.
"""

from __future__ import annotations

import logging
import marshal
import os
import pickle
import stat
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import metrics
from .decode import unreadable_spool_gap, uuid_text
from .schema import DATA_TABLES, INGEST_GAPS, SCHEMA_VERSION, Table

log = logging.getLogger(__name__)


@dataclass
class SpooledBatch:
    batch_id: str
    source: str
    # Table name -> rows, in the table's column order.
    rows: dict[str, list[tuple]]
    # Table name -> ids of rows that may be stored already; looked up once, at resolve.
    check_stored: dict[str, set[str]]
    newest_ns: int
    ids_at_newest: set[str]
    # (source, node) -> counters kept for the ledger: received, filtered, quarantined,
    # and the oldest and newest flow time seen.
    tallies: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    created_ns: int = 0
    # Set once the lookups are done and `rows` hold exactly what must be inserted.
    resolved: bool = False


_FIELDS = tuple(f.name for f in fields(SpooledBatch))
# The source of the batches that record unreadable files: not input of this run.
RECORD_SOURCE = "spool"
# Beside `<sequence>.batch`: its lookups found nothing stored (see Sink.drain).
_NOTHING_STORED = ".nothing-stored"
_HEADER = b"flowlog-spool 2 marshal\n"
_PICKLE_PROTOCOL_2_OR_LATER = b"\x80"
_NOT_STORED = "the flows of this spooled batch are not stored"


class SpoolError(RuntimeError):
    pass


_TABLES = {t.name: t for t in DATA_TABLES}
# Spool files say the schema version of their rows' layout from this version on.
_FIRST_RECORDED = 6


def _zero(column_type: str):
    for prefix, value in (("Array", []), ("Map", {}), ("Nullable", None), ("UInt", 0), ("Int", 0),
                          ("DateTime", 0)):
        if column_type.startswith(prefix):
            return value
    return ""


def _layout(table: Table, version: int | None, row_length: int, path: Path) -> tuple[int, list[str]]:
    """The schema version whose layout table's rows have, and its stored column names.
    A file that does not say is from a build before _FIRST_RECORDED: the newest version
    before that whose rows are that long, else (a build between) that version's."""
    versions = [version] if version is not None else [*range(_FIRST_RECORDED - 1, table.since - 1, -1),
                                                        _FIRST_RECORDED]
    for v in versions:
        names = [c.name for c in table.columns_as_of(v) if not c.alias]
        if len(names) == row_length:
            return v, names
    raise SpoolError(f"{path}: {table.name} rows of {row_length} values fit no schema version up to {SCHEMA_VERSION}")


def _check_widths(batch: SpooledBatch, version: int | None, path: Path) -> None:
    """Each table's rows are all as long as each other, and as this build's if it wrote them."""
    for name, rows in batch.rows.items():
        table = _TABLES.get(name)
        if table is None:
            raise SpoolError(f"{path}: rows of an unknown table {name}")
        widths = set(map(len, rows))
        if len(widths) > 1:
            raise SpoolError(f"{path}: {name} rows of uneven length ({min(widths)} to {max(widths)} values)")
        if version == SCHEMA_VERSION and widths and widths != {len(table.column_names)}:
            raise SpoolError(f"{path}: {name} rows of {widths.pop()} values, where schema version "
                             f"{SCHEMA_VERSION} has {len(table.column_names)}")


def _to_current_layout(batch: SpooledBatch, version: int | None, path: Path) -> None:
    for name, rows in batch.rows.items():
        table = _TABLES[name]
        if not rows:
            continue
        written, names = _layout(table, version, len(rows[0]), path)
        types = {c.name: c.type for c in table.columns_as_of(written)}
        stored = [c for c in table.columns if not c.alias]
        sources = [names.index(c.name) if c.name in names else None for c in stored]  # None: a column it lacks
        to_uuid = {i for i, c in enumerate(stored) if c.type == "UUID" and types.get(c.name) != "UUID"}
        zeros = [_zero(c.type) for c in stored]
        batch.rows[name] = [tuple(zeros[i] if at is None else uuid_text(row[at]) if i in to_uuid else row[at]
                                  for i, at in enumerate(sources)) for row in rows]
        if to_uuid and name in batch.check_stored:
            batch.check_stored[name] = {uuid_text(i) for i in batch.check_stored[name]}


def _fsync_directory(directory: Path) -> None:
    """Makes a rename, link or unlink in directory durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class Spool:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.tmp"):
            stale.unlink()  # a write that a crash interrupted; its batch was never acknowledged
        self._sizes = {p: p.stat().st_size for p in self._files()}
        for marker in directory.glob(f"*{_NOTHING_STORED}"):
            if marker.with_suffix(".batch") not in self._sizes:
                marker.unlink()  # its batch was removed, and a crash came before the marker
        # The batch last written, kept in memory: normally it is inserted right away, and
        # reading it back from disk would cost as much as writing it did.
        self._last: tuple[Path, SpooledBatch] | None = None
        misnamed = [p for p in self._sizes if not (p.stem.isascii() and p.stem.isdigit())]
        for path in misnamed:
            del self._sizes[path]
        for path in misnamed:
            self._move_aside(path, SpoolError(f"{path}: not a spool file name (<sequence>.batch)"),
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

    def has_room(self) -> bool:
        """Room for one more batch; an empty spool always takes one, however large."""
        return not self._sizes or self.bytes < self.max_bytes

    def append(self, batch: SpooledBatch) -> Path:
        path = self.directory / f"{self._next:012d}.batch"
        self._next += 1
        self._write(path, batch)
        return path

    def replace(self, path: Path, batch: SpooledBatch) -> None:
        self._write(path, batch)

    def note_nothing_stored(self, path: Path) -> None:
        """The lookups of the batch in path found none of its rows stored. Kept as an
        empty file beside it, which costs nothing next to rewriting the batch: in a
        replay every batch is looked up."""
        marker = path.with_suffix(_NOTHING_STORED)
        with open(marker, "wb") as handle:
            os.fsync(handle.fileno())
        _fsync_directory(self.directory)

    def nothing_stored(self, path: Path) -> bool:
        return path.with_suffix(_NOTHING_STORED).exists()

    def _write(self, path: Path, batch: SpooledBatch) -> None:
        self._put_in_place(self._write_aside(path, batch), path, batch)

    def _write_aside(self, path: Path, batch: SpooledBatch) -> Path:
        """The batch, durable in a temp file beside path (which a restart deletes)."""
        data = marshal.dumps({name: getattr(batch, name) for name in _FIELDS} | {"schema_version": SCHEMA_VERSION})
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(_HEADER)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def _put_in_place(self, tmp: Path, path: Path, batch: SpooledBatch) -> None:
        size = tmp.stat().st_size
        os.replace(tmp, path)
        _fsync_directory(self.directory)
        self._sizes[path] = size
        self._last = (path, batch)
        self._publish()

    def _read(self, path: Path) -> SpooledBatch:
        if self._last is not None and self._last[0] == path:
            return self._last[1]
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SpoolError(f"{path}: cannot be read: {err.strerror}") from None
        try:
            version = None
            if data.startswith(_HEADER):
                values = marshal.loads(memoryview(data)[len(_HEADER):])
                version = values.pop("schema_version", None)
                batch = SpooledBatch(**values)
            elif data.startswith(_PICKLE_PROTOCOL_2_OR_LATER):
                batch = pickle.loads(data)
            else:
                raise SpoolError(f"{path}: not a flowlog spool file (it begins {data[:24]!r})")
        except SpoolError:
            raise
        except Exception as err:  # a damaged or foreign file can fail in any way
            raise SpoolError(f"{path}: unreadable spool file: {type(err).__name__}: {err}") from None
        if not isinstance(batch, SpooledBatch):
            raise SpoolError(f"{path}: holds a {type(batch).__name__}, not a spooled batch")
        try:
            _check_widths(batch, version, path)
            if version != SCHEMA_VERSION:
                _to_current_layout(batch, version, path)
        except SpoolError:
            raise
        except Exception as err:  # rows that are no tuples, values of another type, ...
            raise SpoolError(f"{path}: rows unlike any this build knows: {type(err).__name__}: {err}") from None
        return batch

    def _readable(self, pick) -> tuple[Path, SpooledBatch] | None:
        """The batch of the file `pick` chooses among the spooled ones; an unreadable file
        is moved aside and replaced, in its place, by the batch that records it."""
        while self._sizes:
            path = pick(self._sizes)
            try:
                return path, self._read(path)
            except SpoolError as err:
                del self._sizes[path]
                self._move_aside(path, err, path)
        return None

    def _move_aside(self, path: Path, err: SpoolError, record_as: Path, outcome: str = _NOT_STORED) -> None:
        """Keeps the file in unreadable/ (never over another one) and spools, as record_as,
        a batch with the ingest_gaps row that puts the loss on record. The record is on
        disk before the file leaves its place, so a crash in between at worst keeps the
        file twice; the row is the same either time, and the sink stores it once."""
        metrics.SPOOL_UNREADABLE.inc()
        kept = self.directory / "unreadable"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        try:
            kept.mkdir(exist_ok=True)
            aside, copy = kept / f"{stamp}-{path.name}", 1
            while aside.exists():
                aside, copy = kept / f"{stamp}-{copy}-{path.name}", copy + 1
            status = path.stat()
            gap = unreadable_spool_gap(str(aside), f"{path.name}|{status.st_size}|{status.st_mtime_ns}",
                                       status.st_mtime_ns, f"{err}; {outcome}")
            record = SpooledBatch(
                batch_id=gap.gap_id, source=RECORD_SOURCE, rows={INGEST_GAPS.name: [gap.row]},
                check_stored={INGEST_GAPS.name: {gap.gap_id}}, newest_ns=0, ids_at_newest=set(),
                tallies={(RECORD_SOURCE, ""): {"oldest_ns": gap.time_ns, "newest_ns": gap.time_ns}},
                created_ns=gap.time_ns)
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
        self._move_aside(path, SpoolError(f"{path}: {reason}"), path, outcome)
        self._publish()

    def oldest(self) -> tuple[Path, SpooledBatch] | None:
        return self._readable(min)

    def newest(self) -> SpooledBatch | None:
        found = self._readable(max)
        return found[1] if found else None

    def remove(self, path: Path) -> None:
        path.unlink()
        path.with_suffix(_NOTHING_STORED).unlink(missing_ok=True)  # after: a marker alone is cleared at start
        del self._sizes[path]
        if self._last is not None and self._last[0] == path:
            self._last = None
        self._publish()
