"""Where the ingester's time goes: py-spy attached to the running process, stacks summarised.

`record` runs `py-spy record --format raw --threads --nonblocking [--gil]` on a pid for
some seconds (py-spy must be installed: `pip install py-spy`; it reads another process's
memory, so it needs ptrace rights, as root has). `summarise` reads the collapsed stacks
and gives, per thread, the share of samples, and over all threads the functions with
the most samples on top of the stack (self) and anywhere in it (total).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Frames every thread has at its bottom: in the "total" list they only say "a thread ran".
_THREAD_FRAMES = {"Thread._bootstrap (threading.py)", "Thread._bootstrap_inner (threading.py)",
                  "Thread.run (threading.py)", "_Thread.run (ingest/runner.py)"}
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def available() -> str | None:
    return shutil.which("py-spy") or (str(Path(sys.executable).with_name("py-spy"))
                                      if Path(sys.executable).with_name("py-spy").exists() else None)


def record(pid: int, seconds: float, output: Path, rate: int = 100, gil: bool = False) -> subprocess.Popen:
    """Starts recording; wait on the returned process. With gil, only the thread holding
    the GIL is sampled: in a GIL-bound process, that is where the throughput goes."""
    exe = available()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
               "--format", "raw", "--threads", "--nonblocking", "--output", str(output)]
    if gil:
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/work/main/", 1)[-1]
    return f"{match.group('func')} ({path})"


def _thread_name(label: str) -> str:
    """'thread (24114): hubble-source' -> 'hubble-source'; the metrics endpoint's
    per-request threads ('Thread-3 (process_request_thread)') become one name."""
    name = re.sub(r"^thread \([0-9a-fA-Fx]+\):? ?", "", label.strip())
    name = re.sub(r"^Thread-\d+ ", "", name)
    return name or label


def summarise(raw: Path, top: int = 15) -> dict:
    threads: Counter = Counter()
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread, frames = frames[0], [_short(f) for f in frames[1:]]
        samples += n
        threads[_thread_name(thread)] += n
        if frames:
            own[frames[-1]] += n
            for frame in set(frames) - _THREAD_FRAMES:
                total[frame] += n

    def share(counter: Counter) -> list[list]:
        return [[name, round(100 * n / samples, 1)] for name, n in counter.most_common(top)] if samples else []

    return {"samples": samples, "threads_pct": share(threads), "self_pct": share(own), "total_pct": share(total)}
