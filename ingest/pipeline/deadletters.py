"""The dead-letter file: input that could not be stored, kept with where it came from.

One JSON object per line: `time`, `origin` (file:line, or the stream and message
number), `error` (naming the field), and the input itself as `raw` text, or as
`raw_base64` when it is not valid UTF-8. At `max_bytes` the file is moved to
`dead-letter.jsonl.1`, replacing the one before, so the two hold the newest entries.
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

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, state_dir: Path, max_bytes: int):
        self.path = state_dir / "dead-letter.jsonl"
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log)
        self.count = 0
        try:
            self._size = self.path.stat().st_size
        except FileNotFoundError:
            self._size = 0

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
            try:
                if self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as handle:
                    handle.write(line)
                    self._size = handle.tell()  # the file's size, even if someone truncated or removed it
            except OSError as err:  # a full disk, say: the input is counted and logged, and the rest goes on
                self._warn.warning("%s: %s (not kept: writing %s failed: %s)", origin, error, self.path, err)
                return
        self._warn.warning("%s: %s (kept in %s)", origin, error, self.path)

    def _rotate(self) -> None:
        older = self.path.with_name(self.path.name + ".1")
        try:
            os.replace(self.path, older)
        except FileNotFoundError:  # removed by hand: a new one is started
            pass
        else:
            log.warning("%s is full (dead_letters.max_mb): moved to %s, replacing the entries that were there",
                        self.path, older)
        self._size = 0
