"""Where a source resumes: the time of the newest durable flow of each node it delivers,
and for a file source, the place of the newest durable line in each followed file.

Advanced once the batch holding those flows is in the spool (which keeps it until the
store has it), and written atomically (temp file, fsync, rename). Relay merges nodes
whose clocks and delays differ, so their times do not rise together: the Hubble source
resumes from the oldest node's time less a reorder margin, and every flow of the window
it re-reads is looked up before it is stored, so the checkpoint saves reading, and
exactly-once never rests on it. Beside each node's time it keeps when (by this host's
clock) that node last had a flow made durable: a node not heard from for `idle_s` (it
left the cluster, or has no L7 traffic) is forgotten, so it cannot hold the resume
point back for long or grow the file. This host's clock, not the flows', decides that:
a node whose clock lags the others by more than `idle_s` is still heard from.

A file that cannot be read is reported once, naming it, and counted; the source then
starts as if there were none (the whole of Hubble's buffer, each flow looked up), and
the next write replaces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from .. import metrics
from ..logs import RateLimitedLog
from ..statedir import make_private_dir, open_private

log = logging.getLogger(__name__)


class Checkpoint:
    def __init__(self, state_dir: Path, source: str, idle_s: float = 600.0):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("_")[:80]
        digest = hashlib.sha256(source.encode()).hexdigest()[:8]
        self.path = state_dir / "checkpoints" / f"{safe}-{digest}.json"
        self.source = source
        self.idle_ns = int(idle_s * 1e9)
        self._warn = RateLimitedLog(log, interval_s=60.0)
        # Node name -> time of its newest durable flow, and this host's time when it was made durable.
        # A file source's followed file -> (fingerprint, offset, line) of its newest durable line.
        self.nodes, self.seen, self.files = self._read()

    def _read(self) -> tuple[dict[str, int], dict[str, int], dict[str, tuple[str, int, int]]]:
        now_ns = time.time_ns()
        try:
            data = json.loads(self.path.read_text())
            if "nodes" in data:
                nodes = {str(node): int(time_ns) for node, time_ns in data["nodes"].items()}
                seen = {str(node): int(seen_ns) for node, seen_ns in data.get("seen", {}).items()}
            else:  # written by a build that kept one time for all nodes
                nodes, seen = {"": int(data["time_ns"])}, {}
            files = {str(path): (str(fingerprint), int(offset), int(line))
                     for path, (fingerprint, offset, line) in data.get("files", {}).items()}
        except FileNotFoundError:
            return {}, {}, {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
            metrics.CHECKPOINT_UNREADABLE.inc()
            reason = err.strerror if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
            log.error("checkpoint %s cannot be read (%s): reading every flow the source holds again, each looked up "
                      "in the store; the next checkpoint replaces it", self.path, reason)
            return {}, {}, {}
        return nodes, {node: seen.get(node, now_ns) for node in nodes}, files

    @property
    def time_ns(self) -> int:
        """The newest durable flow of any node (0 when there is none)."""
        return max(self.nodes.values(), default=0)

    def advance(self, newest_by_node: dict[str, int], seen_ns: int,
                positions: dict[str, tuple[str, int, int]] | None = None) -> None:
        """Record that every flow of each node up to its time there is durable, as of seen_ns
        (this host's clock), and every line of each followed file up to its position."""
        changed = bool(positions) and any(self.files.get(path) != at for path, at in positions.items())
        if changed:
            self.files.update(positions)
        for node, time_ns in newest_by_node.items():
            if time_ns > self.nodes.get(node, 0):
                self.nodes[node] = time_ns
                changed = True
            self.seen[node] = max(self.seen.get(node, 0), seen_ns)
        if not changed:
            return
        for node in [n for n, at in self.seen.items() if at < seen_ns - self.idle_ns]:
            del self.nodes[node], self.seen[node]
        try:
            self._write()
        except OSError as err:  # a full disk: kept in memory, written with the next batch
            self._warn.warning("checkpoint %s cannot be written (%s): a restart would re-read more of Hubble's "
                               "buffer, each flow looked up", self.path, err.strerror or err)

    def _write(self) -> None:
        make_private_dir(self.path.parent)
        tmp = self.path.with_suffix(".tmp")
        data = {"source": self.source, "time_ns": self.time_ns, "nodes": self.nodes, "seen": self.seen,
                "files": self.files}
        with open_private(tmp, "w") as handle:
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

