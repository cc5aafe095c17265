"""The dead-letter file: input that could not be stored, kept with where it came from.

One JSON object per line: `time`, `origin` (file:line, or the stream and message
number), `error` (naming the field), and the input itself as `raw` text, or as
`raw_base64` when it is not valid UTF-8.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path

from . import metrics
from .logs import RateLimitedLog

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, state_dir: Path):
        self.path = state_dir / "dead-letter.jsonl"
        self._lock = threading.Lock()
        self._warn = RateLimitedLog(log)
        self.count = 0

    def add(self, origin: str, error: str, raw: bytes | str) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "origin": origin, "error": error}
        if isinstance(raw, bytes):
            try:
                entry["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                entry["raw_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            entry["raw"] = raw
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
            self.count += 1
        metrics.DEAD_LETTERS.inc()
        self._warn.warning("%s: %s (kept in %s)", origin, error, self.path)
