"""The resume point of a source: the time of the newest flow made durable.

Advanced once the batch holding that flow is in the spool (which keeps it until the
store has it), and written atomically (temp file, fsync, rename), so a restart resumes
with `since` = this time and loses nothing. The ids of the flows at exactly that time
are kept too, so that the flows Hubble sends again at that instant are recognised.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .. import metrics


class Checkpoint:
    def __init__(self, state_dir: Path, source: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("_")[:80]
        digest = hashlib.sha256(source.encode()).hexdigest()[:8]
        self.path = state_dir / "checkpoints" / f"{safe}-{digest}.json"
        self.source = source
        self.time_ns = 0
        self.ids_at_time: set[str] = set()
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self.time_ns = int(data["time_ns"])
            self.ids_at_time = set(data["ids_at_time"])

    def advance(self, time_ns: int, ids_at_time: set[str]) -> None:
        """Record that every flow up to time_ns (and these ids at time_ns) is durable."""
        if time_ns < self.time_ns:
            return
        if time_ns == self.time_ns:
            ids_at_time = self.ids_at_time | ids_at_time
        self.time_ns, self.ids_at_time = time_ns, set(ids_at_time)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {"source": self.source, "time_ns": self.time_ns, "ids_at_time": sorted(self.ids_at_time)}
        with open(tmp, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        metrics.record_checkpoint()
