"""The state directory (checkpoints, spool, dead letters; by default the embedded store),
held by one process at a time.

Two `flowlog run` (or a run and a replay) on one state dir would share its spool and
checkpoints, and against one shared ClickHouse store every flow twice: `StateLock`
takes an exclusive lock on `<state_dir>/lock` (`flock`, released by the kernel when the
process ends, however it ends) and writes the holder's pid into it, so a second one
stops at once naming it. `check` notices the directory removed while running: it is
made again and the lock taken on the new file.

What the ingester keeps here holds flows (and, in the embedded store, every stored
one): the state dir is made, or tightened to, 0700, and every file the ingester writes
in it is created 0600 (`make_private_dir`, `open_private`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_OPEN_FLAGS = {"wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
               "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND, "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND}


def make_private_dir(path: Path) -> None:
    """path made (with its missing parents) and, if it was there already, tightened to 0700."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_DIR_MODE:
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except PermissionError:  # not ours: said once, and the files in it are still 0600
            log.warning("%s is not private (mode %o) and cannot be made so: it is not ours", path,
                        stat.S_IMODE(path.stat().st_mode))


def open_private(path: Path, mode: str):
    """open(path, mode) for writing ("wb", "w", "ab" or "a+"), a new file created 0600."""
    return os.fdopen(os.open(path, _OPEN_FLAGS[mode], PRIVATE_FILE_MODE), mode)


class StateDirInUse(RuntimeError):
    """Another process holds the state dir."""


class StateLock:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.path = state_dir / "lock"
        self._handle = None
        self._inode = None

    def acquire(self) -> None:
        make_private_dir(self.state_dir)
        handle = open_private(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StateDirInUse(f"state dir {self.state_dir} is in use by process {holder} (its lock: {self.path}); "
                                "one flowlog run or replay at a time per state dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        self._inode = os.fstat(handle.fileno()).st_ino

    def check(self) -> None:
        """Take the lock again if the state dir (and the lock file with it) was removed."""
        try:
            if os.stat(self.path).st_ino == self._inode:
                return
        except FileNotFoundError:
            pass
        log.warning("state dir %s was removed while running: made again, and locked again", self.state_dir)
        self.release()
        self.acquire()

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None
