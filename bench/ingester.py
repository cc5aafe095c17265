"""Runs the real `flowlog run` as a subprocess against the load generator, and watches it.

The command is the one a user runs (`python -m ingest` is `flowlog`), on a fresh state
directory with the embedded store inside it and the metrics endpoint on a free loopback
port. Extra `--set KEY=VALUE` overrides pass straight through. Its log goes to a file.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import procstat

ROOT = Path(__file__).resolve().parent.parent
ROWS = "flowlog_rows_inserted_total"
DROPPED = "flowlog_duplicates_dropped_total"
NEWEST = "flowlog_newest_committed_flow_timestamp_seconds"
# Wall-clock time of the last acknowledged insert: the commit time, exact, whatever the polling interval.
LAST_INSERT = "flowlog_last_insert_timestamp_seconds"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Ingester:
    def __init__(self, source: str, workdir: Path, overrides: list[str] = (), store: Path | None = None,
                 store_dsn: str | None = None, python: str = sys.executable):
        """The embedded store in store (or workdir/store), unless store_dsn names a server;
        python: the interpreter, e.g. one of a virtualenv with only what the image installs."""
        self.workdir = workdir
        self.state = workdir / "state"
        self.store = store_dsn or store or workdir / "store"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.log_path = workdir / "flowlog.log"
        command = [python, "-m", "ingest", "run", "--source", source,
                   "--store", store_dsn or f"chdb://{self.store}",
                   "--state-dir", str(self.state), "--metrics-address", self.metrics, "--log-level", "info"]
        for item in overrides:
            command += ["--set", item]
        self.command = command
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self.exit_code: int | None = None
        self.shutdown_s: float | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"flowlog run exited {self.process.returncode}; its log ({self.log_path}) ends:\n"
                               + self.log_tail())

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return procstat.peak_rss_mb(self.pid)

    def rss_mb(self) -> float:
        return procstat.rss_mb(self.pid)

    def anon_rss_mb(self) -> float:
        return procstat.rss_mb(self.pid, key="RssAnon")

    def scrape(self) -> dict[str, float]:
        return procstat.scrape(self.metrics, (ROWS, NEWEST, LAST_INSERT, DROPPED))

    def rows(self, samples: dict[str, float], table: str) -> int:
        return int(samples.get(f'{ROWS}{{table="{table}"}}', 0))

    def dropped(self, samples: dict[str, float], table: str) -> int:
        """Rows not inserted because they were stored already (or repeated in a batch)."""
        return int(samples.get(f'{DROPPED}{{table="{table}"}}', 0))

    def checkpoint_ns(self) -> int:
        """time_ns of the checkpoint file (flows durable in the spool), 0 before the first."""
        for path in (self.state / "checkpoints").glob("*.json"):
            try:
                return int(json.loads(path.read_text())["time_ns"])
            except (OSError, ValueError, KeyError):
                return 0  # caught between write and rename; the next poll reads it
        return 0

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as a DaemonSet's pod gets; returns the exit code."""
        if self.alive():
            started = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.shutdown_s = round(time.monotonic() - started, 2)
        self.exit_code = self.process.returncode
        self._log.close()
        return self.exit_code
