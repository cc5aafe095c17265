"""Source `file://`: follows the files Cilium's Hubble exporter writes, rotation and all.

The exporter (`hubble-export-file-path`, and one file per dynamic flow log) appends one
JSON `ExportEvent` per line and rotates as lumberjack does: when a line would take the
file past its size limit, the file is renamed to `<name>-<UTC time><ext>` beside it
(time as 2006-01-02T15-04-05.000), a new one is created, backups are optionally
gzipped (`.gz` written, or Cilium's fork's `.gz.tmp` renamed, then the backup removed)
and the oldest beyond the limit deleted. A line is never split across files.

Each followed file is read in order, oldest first: its backups, then the file itself,
which is followed as it grows. Across a restart a file is known by its fingerprint, a
hash of its first line (at most FINGERPRINT_BYTES), not by its name or inode: the
fingerprint survives the rename and the gzip, so the checkpoint's place (fingerprint,
offset, line) finds the backup a restart must resume in, however many rotations
happened while the ingester was stopped. When that file is gone (more rotations than
backups kept), what followed the place in it is recorded as a gap (`file_rotated_away`)
and reading starts at the oldest file left. While running, the file read to its end
last is found among the files by its inode (its handle is held open until the next file
is, so the inode cannot be another file's), or its gzipped copy by fingerprint, and the
next one after it is read; gone from the files, it is a possible loss on record, and
every flow after it is looked up. A file itself that has become shorter than what was
read of it, or whose first line is another (cut in place, copytruncate), is recorded as
a gap (`file_truncated`) and read again from its start.

The directory is read twice for each listing, until two readings agree: a backup
renamed or gzipped while it is read can be missed both ways.

A last line without its newline is left unread until the newline comes; a backup that
ends in one (a crash mid-write) has it dead-lettered. A line longer than
files.MAX_LINE_BYTES is dead-lettered (its beginning kept) without being held whole.

Exactly once as on the Hubble path: every flow stamped up to the later of now and the
checkpoint's newest flow, plus `source.resume_margin_s`, when the source starts is
looked up before it is stored (the place saves reading; the lookups make a lost or
lagging checkpoint, a backfill or a switch from the gRPC source safe). With several
files every flow is looked up: dynamic flow logs with overlapping filters write the
same flow to each.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import metrics
from ..config import SourceConfig
from ..logs import RateLimitedLog
from ..pipeline.records import EVERY_FLOW, DecodeError, FilePosition, Window, gap
from . import files

log = logging.getLogger(__name__)

# A first line is hashed up to this many bytes: the time and uuid that make it unique
# come first in Hubble's JSON.
FINGERPRINT_BYTES = 4096
READ_BYTES = 1 << 20
_BACKUP_TIME = r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}"
_LIVE = "~"  # sorts after every backup's time
_LISTING_ATTEMPTS = 10
# What a dead letter keeps of a line too long to parse.
_KEPT_OF_TOO_LONG = 4096


@dataclass(frozen=True)
class ExporterFile:
    """One file of a followed file's set: a backup or the file itself."""
    path: Path
    rotated_at: str  # the time in a backup's name; _LIVE for the file itself
    gz: bool
    ident: tuple[int, int]  # (device, inode) when the directory was read

    @property
    def live(self) -> bool:
        return self.rotated_at == _LIVE


def exporter_files(live: Path) -> list[ExporterFile] | None:
    """The followed file's backups, oldest first (a plain one before its gzipped copy), then
    the file itself if it exists; None when the directory kept changing while it was read.

    Reading a directory is no snapshot: a backup renamed, gzipped or removed meanwhile can
    be missed, both as the plain and as the gzipped file (seen here). A backup only ever
    turns into its .gz, or goes as the oldest, so two readings in a row that agree have
    missed nothing."""
    previous = None
    for _ in range(_LISTING_ATTEMPTS):
        found = _scan(live)
        if found == previous:
            return found
        previous = found
    return None


def _scan(live: Path) -> list[ExporterFile]:
    # As lumberjack names a backup: <name without ext>-<time><ext>, where ext is Go's
    # filepath.Ext, from the name's last dot on (os.path.splitext keeps a leading dot in
    # the stem: ".events" has no extension there, and is all extension in Go).
    dot = live.name.rfind(".")
    stem, ext = (live.name[:dot], live.name[dot:]) if dot >= 0 else (live.name, "")
    backup = re.compile(re.escape(stem) + "-(" + _BACKUP_TIME + ")" + re.escape(ext) + r"(\.gz)?")
    found = []
    try:
        with os.scandir(live.parent) as entries:
            for entry in entries:
                match = backup.fullmatch(entry.name)
                if match and entry.is_file():
                    st = entry.stat()  # through a symlink, as the open will
                    found.append(ExporterFile(Path(entry.path), match.group(1), bool(match.group(2)),
                                              (st.st_dev, st.st_ino)))
    except OSError:  # the directory is not there (yet), or an entry went while it was read
        return []
    found.sort(key=lambda f: (f.rotated_at, f.gz))
    ident = _ident_or_none(live)
    if ident is not None:
        found.append(ExporterFile(live, _LIVE, False, ident))
    return found


def fingerprint(head: bytes) -> str | None:
    """The fingerprint of a file that begins with head; None until its first line is
    complete (or FINGERPRINT_BYTES long)."""
    newline = head.find(b"\n", 0, FINGERPRINT_BYTES)
    if newline >= 0:
        head = head[:newline + 1]
    elif len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.blake2b(head[:FINGERPRINT_BYTES], digest_size=16).hexdigest()


def _open(file: ExporterFile):
    """The file opened, and its (device, inode)."""
    handle = gzip.GzipFile(file.path, "rb") if file.gz else open(file.path, "rb", buffering=0)
    try:
        st = os.fstat(handle.fileno())
    except OSError:
        handle.close()
        raise
    return handle, (st.st_dev, st.st_ino)


def fingerprint_of(file: ExporterFile) -> tuple[str | None, tuple[int, int] | None]:
    """The file's fingerprint (None when it cannot be read or its first line is not
    complete) and (device, inode) (None when it cannot be opened)."""
    try:
        handle, ident = _open(file)
    except OSError:  # gone
        return None, None
    try:
        with handle:
            head = b""
            while len(head) < FINGERPRINT_BYTES and (chunk := handle.read(FINGERPRINT_BYTES - len(head))):
                head += chunk
    except (OSError, EOFError, zlib.error):  # a .gz still being written
        return None, ident
    return fingerprint(head), ident


class _Follower:
    """Reads one followed file's set in order into `out`, a poll at a time."""

    def __init__(self, live: str, source: str, out, saved: tuple[str, int, int] | None, window_args: dict):
        self.live = Path(live)
        self.source = source
        self.out = out
        self.saved = saved
        self.window_args = window_args
        self.handle = None
        self.file: ExporterFile | None = None
        self.ident: tuple[int, int] | None = None
        self.fingerprint: str | None = None
        self.head = b""  # the file's first bytes, until its fingerprint is known
        self.offset = 0  # bytes of complete lines read
        self.line = 0  # complete lines read
        self.pending = b""  # the last line read so far, without its newline
        self.skipped = 0  # bytes of a too-long line skipped so far; 0 when not skipping
        self.window: Window | None = None
        # The file read to its end last: (fingerprint, (device, inode), rotation time); its
        # handle is kept open until the next file is, so that its inode cannot be another
        # file's meanwhile.
        self.finished: tuple[str | None, tuple[int, int] | None, str] | None = None
        self._finished_handle = None
        # The newest backup's rotation time when the file being read was opened: a backup
        # rotated later holds lines written after those read (_LIVE: none listed).
        self.read_up_to = ""
        self._waiting_said = False
        self._unreadable_log = RateLimitedLog(log, interval_s=60.0)

    @property
    def reading(self) -> bool:
        return self.handle is not None

    def close(self) -> None:
        for handle in (self.handle, self._finished_handle):
            if handle is not None:
                handle.close()

    # --- where to read -------------------------------------------------------------------

    def _start(self) -> bool:
        """At start: the file the checkpoint's place is in, else the oldest file there is."""
        found, fingerprints = self._listing()
        if found is None:
            return False
        if not found:
            if not self._waiting_said:
                log.warning("waiting for %s: no such file or backup yet (is Cilium's Hubble exporter on?)", self.live)
                self._waiting_said = True
            return False
        if self.saved is None:
            return self._open(found[0], found, 0, 0)
        saved_fingerprint, offset, line = self.saved
        for file, known in zip(found, fingerprints):
            if known == saved_fingerprint:
                return self._open(file, found, offset, line)
        self._gap("file_rotated_away", f"{self.live}: the file the checkpoint was in (line {line}, byte {offset}) "
                                       "was rotated away before it was read to its end; what followed that place "
                                       "in it is not stored", saved_fingerprint, offset)
        return self._open(found[0], found, 0, 0)

    def _open_next(self) -> bool:
        """The file after the one read to its end last. Not found among the files: it was
        deleted, so it was older than every file left (the oldest go first)."""
        found, fingerprints = self._listing()
        if found is None:
            return False
        done_fingerprint, done_ident, done_at = self.finished
        # The file itself by its inode (renamed, it keeps it; its handle, still open, keeps
        # the inode from being another file's), else its gzipped copy by its first line.
        at = next((i for i, file in enumerate(found) if file.ident == done_ident), None)
        if at is None and done_fingerprint is not None:
            # A backup's copy has its time; the file itself's was given when it was renamed.
            at = next((i for i, (file, known) in enumerate(zip(found, fingerprints))
                       if file.gz and known == done_fingerprint
                       and (file.rotated_at > self.read_up_to if done_at == _LIVE else file.rotated_at == done_at)),
                      None)
        if at is not None:
            after = at + 1
            while after < len(found) and found[after].rotated_at == found[at].rotated_at:
                after += 1  # the same backup, gzipped (or being gzipped)
            return self._open(found[after], found, 0, 0) if after < len(found) else False  # else: not created yet
        newer = [file for file in found if file.rotated_at > self.read_up_to]
        if not newer:
            return False
        # Gone: deleted rather than renamed, or rotated and removed as the oldest backup, in
        # which case backups rotated after it may have gone unread too (reading fell more
        # than the exporter's max-backups behind). On record as a possible loss; reading
        # goes on with the oldest file rotated after those read, and looks up every flow.
        self._gap("file_rotated_away", f"{self.live}: the file read last is gone; backups rotated after it may have "
                                       f"been removed unread (reading goes on with {newer[0].path.name}, and looks "
                                       "up every flow from now on)", done_fingerprint, self.offset)
        self.window_args["maybe_stored_until_ns"] = EVERY_FLOW
        return self._open(newer[0], found, 0, 0)

    def _listing(self) -> tuple[list[ExporterFile] | None, list[str | None]]:
        """The files and their fingerprints; None for the files when a name was another
        file's, or none, by the time it was read (rotated, gzipped or removed meanwhile):
        then the next poll looks again."""
        found = exporter_files(self.live)
        if found is None:
            return None, []
        fingerprints = []
        for file in found:
            known, ident = fingerprint_of(file)
            if ident != file.ident:  # another file by that name now, or none: rotated meanwhile
                if ident is None and file.path.exists():
                    self._unreadable_log.warning("%s cannot be opened: reading waits until it can", file.path)
                return None, []
            fingerprints.append(known)
        return found, fingerprints

    def _open(self, file: ExporterFile, listed: list[ExporterFile], offset: int, line: int) -> bool:
        """Reads file, one of those listed, from offset on. A name that is another file's by
        now than when the files were listed (rotated meanwhile) is looked up again at the
        next poll."""
        try:
            handle, ident = _open(file)
        except OSError as err:
            if file.live and file.path.exists():  # else renamed, gzipped or deleted meanwhile: found again
                self._unreadable_log.warning("%s cannot be read: %s", file.path, err.strerror or err)
            return False
        if ident != file.ident:
            handle.close()
            return False
        if self._finished_handle is not None:
            self._finished_handle.close()
            self._finished_handle = None
        self.read_up_to = file.rotated_at if not file.live else max(
            (f.rotated_at for f in listed if not f.live), default="")
        self.ident = ident
        self.handle, self.file = handle, file
        self.fingerprint, self.head, self.pending, self.skipped = None, b"", b"", 0
        self.offset = self.line = 0
        name = str(file.path).replace("{", "{{").replace("}", "}}")
        self.window = Window(self.source, f"{name}:{{n}}", **self.window_args)
        if offset and not self._skip_to(offset, line):
            self._gap("file_truncated", f"{file.path}: shorter than the checkpoint's place in it (line {line}, byte "
                                        f"{offset}): read again from its start; what it held after that place is not "
                                        "stored", self.fingerprint, offset)
            self._rewind()
        metrics.CONNECTED.set(1)
        log.info("reading %s from line %d", file.path, self.line + 1)
        return True

    def _skip_to(self, offset: int, line: int) -> bool:
        """Reads the file's first line (for its fingerprint) and moves to offset; False when
        the file is shorter than that."""
        head = self.handle.read(min(offset, FINGERPRINT_BYTES))
        self.head = head
        self.fingerprint = fingerprint(head)
        if self.file.gz:
            left = offset - len(head)
            while left > 0 and (chunk := self.handle.read(min(left, READ_BYTES))):
                left -= len(chunk)
            if left > 0:
                return False
        else:
            if os.fstat(self.handle.fileno()).st_size < offset:
                return False
            self.handle.seek(offset)
        self.offset, self.line = offset, line
        self.window.read = line
        return True

    def _rewind(self) -> None:
        self.handle.seek(0)
        self.fingerprint, self.head, self.pending, self.skipped = None, b"", b"", 0
        self.offset = self.line = self.window.read = 0

    # --- reading -------------------------------------------------------------------------

    def poll(self) -> bool:
        """Reads what there is to read (at most READ_BYTES); True when it read anything."""
        if self.handle is None:
            if not (self._open_next() if self.finished else self._start()):
                return False
        if self.file.live and self._cut():
            return True
        try:
            data = self.handle.read(READ_BYTES)
        except (OSError, EOFError, zlib.error) as err:  # a damaged .gz: what it held up to there is read
            self._gap("file_truncated", f"{self.file.path} cannot be read past line {self.line}: "
                                        f"{type(err).__name__}: {err}; what it held after that is not stored",
                      self.fingerprint, self.offset)
            self.pending, self.skipped = b"", 0
            self._close()
            return True
        if data:
            self._take(data)
            return True
        if not self.file.live or _ident_or_none(self.live) != self.ident:
            # A backup read to its end, or the file renamed away (rotated): what was written
            # before the rename is still to be read.
            while data := self.handle.read(READ_BYTES):
                self._take(data)
            self._close()
            return True
        return False

    def _cut(self) -> bool:
        """The file itself cut in place (copytruncate): shorter than what was read of it, or
        written again past that (its first line is another). On record as a gap, and read
        again from its start."""
        size = os.fstat(self.handle.fileno()).st_size
        rewritten = self.fingerprint is not None and \
            fingerprint(os.pread(self.handle.fileno(), FINGERPRINT_BYTES, 0)) != self.fingerprint
        if not rewritten and size >= self.offset + len(self.pending) + self.skipped:
            return False
        self._gap("file_truncated", f"{self.file.path}: cut in place (now {size} bytes) after "
                                    f"{self.offset + len(self.pending)} were read (line {self.line}): read again from "
                                    "its start; what it held after its first bytes and was not read is not stored",
                  self.fingerprint, self.offset)
        self._rewind()
        return True

    def _close(self) -> None:
        """Done with the file: it is a backup now, read to its end."""
        if self.pending:
            self._too_short()
        self.offset += self.skipped  # a too-long line, dead-lettered already
        self.skipped = 0
        self.finished = (self.fingerprint, self.ident, self.file.rotated_at)
        self._finished_handle, self.handle = self.handle, None
        self._position()

    def _take(self, data: bytes) -> None:
        """Hands on every complete line of what was read; the rest waits for its newline."""
        if self.fingerprint is None:
            self.head += data[:FINGERPRINT_BYTES]
            self.fingerprint = fingerprint(self.head)
            if self.fingerprint is not None:
                self.head = b""
        start = 0
        if self.skipped:
            newline = data.find(b"\n")
            if newline < 0:
                self.skipped += len(data)
                return
            self.offset += self.skipped + newline + 1
            self.skipped = 0
            start = newline + 1
        buffer = self.pending + data[start:] if self.pending else data[start:] if start else data
        start = 0
        message, unreadable, window = self.out.message, self.out.unreadable, self.window
        while (newline := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:newline]
            self.offset += newline + 1 - start
            self.line += 1
            start = newline + 1
            # A line may end in the chunk that takes it past the limit: refused all the
            # same, as `flowlog replay` refuses it, whatever the chunks.
            if len(line) > files.MAX_LINE_BYTES:
                self._too_long(line, unreadable, window)
            else:
                self._line(line.rstrip(b"\r"), message, unreadable, window)
        rest = buffer[start:]
        if len(rest) > files.MAX_LINE_BYTES:
            self.line += 1
            self._too_long(rest, unreadable, window)
            self.skipped, rest = len(rest), b""
        self.pending = rest
        self._position()

    @staticmethod
    def _too_long(line: bytes, unreadable, window: Window) -> None:
        unreadable(window, f"a line longer than {files.MAX_LINE_BYTES} bytes (the dead letter keeps its first "
                           f"{_KEPT_OF_TOO_LONG})", line[:_KEPT_OF_TOO_LONG])

    def _line(self, line: bytes, message, unreadable, window: Window) -> None:
        unknown: list[str] = []
        try:
            event = files.parse_line(line, unknown)
        except DecodeError as err:
            unreadable(window, str(err), line)
            return
        for path in unknown:
            files.count_unknown_field(path)
        message(window, event, line)

    def _too_short(self) -> None:
        """A file that ended without its last newline (the writer stopped mid-line)."""
        self.line += 1
        self.out.unreadable(self.window, f"the file ends in the middle of this line ({len(self.pending)} bytes, no "
                                         "newline): the writer stopped while writing it",
                            self.pending[:_KEPT_OF_TOO_LONG])
        self.offset += len(self.pending)
        self.pending = b""

    def _position(self) -> None:
        if self.fingerprint is not None:
            # While a too-long line is skipped, the place is before it: counted, not passed.
            line = self.line - 1 if self.skipped else self.line
            self.out.position(self.window, FilePosition(str(self.live), self.fingerprint, self.offset, line))

    def _gap(self, kind: str, message: str, file_fingerprint: str | None, offset: int) -> None:
        log.error("%s", message)
        metrics.FILE_GAPS.labels(kind).inc()
        newest = self.window_args["newest_by_node"]
        node = max(newest, key=newest.get) if newest else ""
        now_ns = time.time_ns()
        # The row's time is the newest flow read before it (the clock's only when none was):
        # noticed again after a restart, the same gap has the same id and time, and the
        # lookup, which searches by time, finds it stored.
        at_ns = min(newest.get(node, now_ns), now_ns)
        gap_id = hashlib.blake2b(f"{kind}|{self.live}|{file_fingerprint}|{offset}".encode(), digest_size=16).hexdigest()
        window = self.window or Window(self.source, f"{self.live}", **self.window_args)
        self.out.gap(window, gap(gap_id, at_ns, node=node, kind=kind, source=str(self.live), count=0,
                                 first=at_ns, last=now_ns, message=message), looked_up=True)


def _ident(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _ident_or_none(path: Path) -> tuple[int, int] | None:
    try:
        return _ident(path)
    except OSError:
        return None




class ExporterSource:
    """Follows the exporter files of a `file://` address into `out` (the dispatcher) until
    `stop` is set; `saved` is the checkpoint's place in each, `resume` its newest flow
    time of each node."""

    def __init__(self, config: SourceConfig, out, stop: threading.Event, saved: dict[str, tuple[str, int, int]],
                 resume: dict[str, int] | None = None, seen: dict[str, int] | None = None):
        paths = config.files or []
        self.stop = stop
        self.poll_s = config.file_poll_s
        self.connected = threading.Event()
        newest_by_node = dict(resume or {})
        # Several flow logs may hold the same flow: then each is looked up.
        looked_up_until = EVERY_FLOW if len(paths) > 1 else \
            max(time.time_ns(), max(newest_by_node.values(), default=0)) + int(config.resume_margin_s * 1e9)
        window_args = dict(maybe_stored_until_ns=looked_up_until, newest_by_node=newest_by_node,
                           seen_by_node=dict(seen or {}))
        self._followers = [_Follower(path, config.address, out, saved.get(path), window_args) for path in paths]

    def cancel(self) -> None:
        """Nothing blocks for long: the loop sees `stop` within a poll."""

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                busy = False
                for follower in self._followers:
                    busy |= follower.poll()
                # Ready while a file is read: a dynamic flow log's file is made at its first
                # line, which may be long in coming.
                if any(f.reading for f in self._followers):
                    self.connected.set()
                else:
                    self.connected.clear()
                if not busy:
                    self.stop.wait(self.poll_s)
        finally:
            metrics.CONNECTED.set(0)
            for follower in self._followers:
                follower.close()
