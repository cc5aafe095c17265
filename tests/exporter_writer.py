"""A stand-in for Cilium's Hubble exporter writing its file: lines of the captured flows,
rotated as lumberjack (gopkg.in/natefinch/lumberjack.v2, which the exporter uses) does.

Taken from lumberjack's source as facts: a write that would take the file past its size
limit first renames it to `<name>-<time><ext>` (UTC, 2006-01-02T15-04-05.000) and
creates a new file; a line is never split. Compression writes `<backup>.gz` and then
removes the backup (in lumberjack, later, in a goroutine: here when `compress_now` is
called, or at once); backups beyond `max_backups` are removed oldest first.
"""

from __future__ import annotations

import copy
import datetime
import gzip
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from .helpers import DNS_330, HTTP_348, fixture_lines


def flow_lines(count: int, seed: str = "exporter") -> list[bytes]:
    """count exporter lines, each a captured HTTP or DNS flow with a uuid of its own,
    stamped a millisecond apart ending now (as an exporter stamps what it writes)."""
    captured = fixture_lines(HTTP_348) + fixture_lines(DNS_330)
    now_ns = time.time_ns()
    lines = []
    for index in range(count):
        event = copy.deepcopy(captured[index % len(captured)])
        stamp_ns = now_ns - (count - index) * 1_000_000
        stamp = (datetime.datetime.fromtimestamp(stamp_ns // 1_000_000_000, datetime.timezone.utc)
                 .strftime("%Y-%m-%dT%H:%M:%S") + f".{stamp_ns % 1_000_000_000:09d}Z")
        event["flow"]["uuid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}/{index}"))
        event["flow"]["time"] = event["time"] = stamp
        lines.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")
    return lines


def uuid_of(line: bytes) -> str:
    return json.loads(line)["flow"]["uuid"]


class RotatingWriter:
    def __init__(self, path: Path, max_bytes: int, max_backups: int = 0, compress: bool = False,
                 compress_later: bool = False):
        self.path = path
        self.max_bytes = max_bytes
        self.max_backups = max_backups
        self.compress = compress
        self.compress_later = compress_later
        # Go's filepath.Ext, which lumberjack names backups by: from the last dot on.
        self.ext = re.search(r"\.[^.]*$|$", path.name).group()
        self.stem = path.name[:len(path.name) - len(self.ext)]
        self._last_stamp = ""
        self._uncompressed: list[Path] = []
        self.rotations = 0
        self.handle = open(path, "ab")

    @property
    def size(self) -> int:
        return self.handle.tell()

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        self.handle.write(data)
        self.handle.flush()

    def write_lines(self, lines: list[bytes], per_second: float = 0.0) -> None:
        for line in lines:
            self.write(line)
            if per_second:
                time.sleep(1 / per_second)

    def rotate(self) -> Path:
        self.handle.close()
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        while stamp <= self._last_stamp:  # two rotations in one millisecond: lumberjack would clobber
            time.sleep(0.001)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        self._last_stamp = stamp
        backup = self.path.with_name(f"{self.stem}-{stamp}{self.ext}")
        os.rename(self.path, backup)
        self.handle = open(self.path, "wb")
        self.rotations += 1
        if self.compress:
            self._uncompressed.append(backup)
            if not self.compress_later:
                self.compress_now()
        self._prune()
        return backup

    def compress_now(self) -> None:
        for backup in self._uncompressed:
            if backup.exists():
                with open(backup, "rb") as plain, gzip.open(f"{backup}.gz", "wb") as packed:
                    shutil.copyfileobj(plain, packed)
                backup.unlink()
        self._uncompressed = []

    def backups(self) -> list[Path]:
        prefix = f"{self.stem}-"
        return sorted(p for p in self.path.parent.iterdir() if p.name.startswith(prefix) and p != self.path)

    def _prune(self) -> None:
        if not self.max_backups:
            return
        backups = self.backups()
        for old in backups[:-self.max_backups]:
            old.unlink()

    def close(self) -> None:
        self.handle.close()
