"""Runs the Node.js load generator (bench/loadgen/server.js) and follows what it reports.

The server prints one JSON event per line (listening, loaded, call, started, sent,
cancelled); `LoadGenerator` collects them in a thread, and `wait_for` blocks until one
arrives. `go()` opens the gate of a server started with `gate=True`. Node modules are
installed with `npm ci` on first use.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

LOADGEN_DIR = Path(__file__).resolve().parent / "loadgen"


def ensure_installed(log=print) -> None:
    if (LOADGEN_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the load generator needs Node.js >= 20 and npm on PATH")
    log("installing the load generator's Node modules (npm ci)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=LOADGEN_DIR, check=True)


def node_version() -> str:
    node = shutil.which("node")
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else ""


def grpc_js_version() -> str:
    package = LOADGEN_DIR / "node_modules" / "@grpc" / "grpc-js" / "package.json"
    return json.loads(package.read_text())["version"] if package.exists() else ""


class LoadGenerator:
    def __init__(self, stream: Path, *, gate: bool = False, end: bool = False, rate: float = 0, count: int = 0,
                 times_out: Path | None = None):
        args = ["node", str(LOADGEN_DIR / "server.js"), "--file", str(stream), "--port", "0"]
        if gate:
            args.append("--gate")
        if end:
            args.append("--end")
        if rate:
            args += ["--rate", str(rate)]
        if count:
            args += ["--count", str(count)]
        if times_out is not None:
            args += ["--times-out", str(times_out)]
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.events: list[dict] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self.wait_for("listening", timeout=120)["port"]
        self.address = f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            event["at"] = time.time()
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def wait_for(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and not event.get("_taken"):
                    event["_taken"] = True
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"load generator: no '{name}' event in {timeout} s")
            try:
                if self._queue.get(timeout=min(left, 0.5)) is None and self.process.poll() is not None:
                    err = self.process.stderr.read()
                    raise RuntimeError(f"load generator exited {self.process.returncode}: {err[-2000:]}")
            except queue.Empty:
                pass

    def event(self, name: str) -> dict | None:
        """The latest event of this name, if any, without waiting."""
        for event in reversed(self.events):
            if event["event"] == name:
                return event
        return None

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def cpu_seconds(self) -> float:
        from .procstat import cpu_seconds
        return cpu_seconds(self.process.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "LoadGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
