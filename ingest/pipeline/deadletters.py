"""The dead-letter file: input that could not be stored, kept with where it came from.

One JSON object per line: `time`, `origin` (file:line, or the stream and message
number), `error` (naming the field), and the input itself as `raw` text, or as
`raw_base64` when it is not valid UTF-8. At `max_bytes` the file is moved to
`dead-letter.jsonl.1`, replacing the one before, so the two hold the newest entries.

When the file cannot be written (a full disk, a quota, a read-only mount), `add` waits
and tries again every second: it is called by the thread that reads the input, so
reading pauses, as it does when the spool cannot be written, and no bad input is
dropped unrecorded while good input goes on. Only a stop gives up on the entry (`run`'s;
a replay waits until it is interrupted).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path

from .. import metrics
from ..logs import RateLimitedLog
from ..statedir import PRIVATE_FILE_MODE, make_private_dir, open_private

log = logging.getLogger(__name__)


# How often an entry the disk refused is tried again.
_WRITE_RETRY_S = 1.0


class DeadLetters:
    def __init__(self, state_dir: Path, max_bytes: int, stop: threading.Event | None = None):
        self.path = state_dir / "dead-letter.jsonl"
        self.older_path = self.path.with_name(self.path.name + ".1")
        self.max_bytes = max_bytes
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log)
        self.count = 0
        # This run's entries in the file and in the one before it, and those in neither
        # any more (rotated out twice, or in a file removed, emptied or replaced by hand).
        self._in_file = self._in_older = self._gone = 0
        # (inode, size) of each file as this object last left it; None: none of its making.
        self._file: tuple[int, int] | None = None
        self._older: tuple[int, int] | None = None
        self.writable = True
        metrics.STATE_DIR_WRITABLE.labels("dead_letters").set(1)
        try:
            status = self.path.stat()
            self._file = (status.st_ino, status.st_size)
            os.chmod(self.path, PRIVATE_FILE_MODE)  # written by a build before files were private
        except (FileNotFoundError, PermissionError):
            pass  # none yet, or not ours to change: the state dir around it is private

    def add(self, origin: str, error: str, raw: bytes | str) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "origin": origin, "error": error}
        if isinstance(raw, bytes):
            try:
                entry["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            entry["raw"] = raw
        line = (json.dumps(entry) + "\n").encode()
        metrics.DEAD_LETTERS.inc()
        with self._lock:
            self.count += 1
            while True:
                try:
                    self._append(line)
                    self._in_file += 1
                    break
                except OSError as err:
                    self._unwritable(err)
                    if self._stop.wait(_WRITE_RETRY_S):
                        self._warn.warning("%s: %s (not kept: stopping while %s cannot be written)", origin, error,
                                           self.path)
                        return
            self._writable_again()
        self._warn.warning("%s: %s (kept in %s)", origin, error, self.path)

    def _append(self, line: bytes) -> None:
        if not _as_left(self.path, self._file):  # removed, emptied or replaced: its entries went with it
            self._gone += self._in_file
            self._in_file = 0
            self._file = None
        size = self._file[1] if self._file else 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        make_private_dir(self.path.parent)
        with open_private(self.path, "ab") as handle:
            status = os.fstat(handle.fileno())
            try:
                handle.write(line)
                handle.flush()
            except OSError:
                # A write the disk refused may have left part of the line: the retry must
                # not append the whole line after it.
                os.ftruncate(handle.fileno(), status.st_size)
                raise
            self._file = (status.st_ino, handle.tell())

    def _unwritable(self, err: OSError) -> None:
        metrics.STATE_DIR_WRITABLE.labels("dead_letters").set(0)
        if self.writable:
            self.writable = False
            # The file the system named: a rotation fails on either path (.1 a directory, say).
            where = f"{err.filename} -> {err.filename2}" if err.filename2 else (err.filename or self.path)
            log.error("cannot write the dead-letter file %s (%s): reading pauses until it can",
                      where, err.strerror or err)

    def _writable_again(self) -> None:
        if not self.writable:
            self.writable = True
            metrics.STATE_DIR_WRITABLE.labels("dead_letters").set(1)
            log.warning("the dead-letter file %s can be written again: reading goes on", self.path)

    def _rotate(self) -> None:
        older = self.older_path
        try:
            os.replace(self.path, older)
        except FileNotFoundError:  # removed by hand since it was looked at: a new one is started
            self._gone += self._in_file
        else:
            log.warning("%s is full (dead_letters.max_mb): moved to %s, replacing the entries that were there",
                        self.path, older)
            self._gone += self._in_older
            self._in_older, self._older = self._in_file, self._file
        self._in_file = 0
        self._file = None

    def where_kept(self) -> str:
        """Where this run's entries are, for a summary: "kept in PATH", with PATH.1 when some
        are there, and how many are in neither (rotated out, or the file removed, emptied or
        replaced by hand since this run wrote it)."""
        older = self.older_path
        in_file = self._in_file if _as_left(self.path, self._file) else 0
        in_older = self._in_older if _as_left(older, self._older) else 0
        gone = self._gone + (self._in_file - in_file) + (self._in_older - in_older)
        where = f"kept in {self.path}" + (f" and {older.name}" if in_older else "")
        if gone:
            where += f", but {gone} of them in neither any more (rotated out at dead_letters.max_mb, or removed)"
        return where


def _as_left(path: Path, identity: tuple[int, int] | None) -> bool:
    """Whether the file is the one this object wrote, at least as long as it left it; with
    no identity (none made yet), whether there is none either way to lose entries from."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return identity is None
    return identity is None or (status.st_ino == identity[0] and status.st_size >= identity[1])
