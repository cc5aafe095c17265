"""What a process costs, read from /proc, and what the ingester reports on /metrics.

CPU is user + system time of the process and of its live descendants (so an ingester
that moves work into a child process is still measured whole), plus the children it
has already waited for. Peak RSS is VmHWM, summed the same way.
"""

from __future__ import annotations

import os
import re
import urllib.request

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ")" is fixed.
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """utime + stime (+ cutime + cstime of reaped children) of pid and its descendants."""
    total = 0
    for p in [pid] + (descendants(pid) if tree else []):
        fields = _stat(p)
        if fields is not None:
            # after the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / _TICK


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pid: int, tree: bool = True) -> float:
    """VmHWM of pid (plus that of its live descendants), in MB."""
    return sum(_status_kb(p, "VmHWM") for p in [pid] + (descendants(pid) if tree else [])) / 1024


def rss_mb(pid: int, tree: bool = True, key: str = "VmRSS") -> float:
    """Resident memory now, in MB; key "RssAnon" counts only the processes' own memory, not
    mapped files (the embedded ClickHouse engine maps about 240 MB of its library's code)."""
    return sum(_status_kb(p, key) for p in [pid] + (descendants(pid) if tree else [])) / 1024


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)', re.MULTILINE)


def scrape(address: str, names: tuple[str, ...], timeout: float = 2.0) -> dict[str, float]:
    """The named samples from the ingester's /metrics, keyed as `name{labels}`."""
    query = "&".join(f"name[]={n}" for n in names)
    with urllib.request.urlopen(f"http://{address}/metrics?{query}", timeout=timeout) as response:
        text = response.read().decode()
    samples = {}
    for name, labels, value in _SAMPLE.findall(text):
        if name in names:
            samples[name + (labels or "")] = float(value)
    return samples
