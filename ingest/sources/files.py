"""Source `file`: backfill from `hubble observe -o jsonpb` output and Hubble exporter files.

Reads JSON Lines (one `GetFlowsResponse` per line, or a bare `Flow` object per line),
plain or gzip-compressed, or `-` for standard input. Each line is parsed into the same
message the gRPC source receives and handed to the dispatcher in file order (the
decoder learns DNS answers as it goes), each file in a window of its own in which every
flow is looked up before it is stored. A bad line is dead-lettered with its file and
line number and the rest of the file goes on.

Parsing JSON into messages is most of a replay's work and needs no state, so on a
machine with more than one usable CPU it runs in worker processes, chunks of lines at
a time, a few chunks ahead; the messages come back serialized, in order.
"""

from __future__ import annotations

import collections
import gzip
import io
import itertools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from ..api.flow import flow_pb2
from ..api.observer import observer_pb2
from ..pipeline.records import DecodeError, Window
from . import jsonpb

RESPONSE_KEYS = {"flow", "lost_events", "node_status"}
_CHUNK_LINES = 2000
_CHUNKS_AHEAD = 4  # per worker: enough to keep it busy, few enough to bound memory
# Decoding and inserting, in this process, keep up with about one parsing worker; more
# would only cost memory (each imports the package).
_MAX_PARSE_WORKERS = 2
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


@dataclass
class ReplayCounts:
    lines: int = 0
    l7_flows: int = 0
    filtered: int = 0
    gaps: int = 0
    bad_lines: int = 0

    def add(self, window: Window) -> None:
        """What the dispatcher counted in one file's window."""
        self.lines += window.read
        self.l7_flows += window.flows
        self.filtered += window.filtered
        self.gaps += window.gaps
        self.bad_lines += window.bad


def _open(path: str) -> io.BufferedIOBase:
    """The file as a binary stream; gzip is recognised by its magic bytes."""
    if path == "-":
        return sys.stdin.buffer
    raw = open(path, "rb")
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    return raw


def parse_line(line: bytes) -> observer_pb2.GetFlowsResponse:
    """One JSON line as a GetFlowsResponse; a bare Flow is wrapped. Raises DecodeError."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError(f"not UTF-8 at byte {err.start}") from None
    if not text.strip():
        raise DecodeError("empty line")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DecodeError(f"not JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"expected a JSON object, got {type(data).__name__}")
    try:
        if RESPONSE_KEYS & data.keys():
            return jsonpb.parse(data, observer_pb2.GetFlowsResponse)
        flow = jsonpb.parse(data, flow_pb2.Flow)
    except json_format.ParseError as err:
        raise DecodeError(str(err)) from None
    return observer_pb2.GetFlowsResponse(flow=flow, node_name=flow.node_name, time=flow.time)


class FileSource:
    """Reads the files in order into `out` (the dispatcher: `message` for each parsed line,
    `unreadable` for a line that is no message), and sums what it read in `counts`."""

    def __init__(self, paths: list[str], out, progress=None):
        self.paths = paths
        self.out = out
        self.progress = progress
        self.counts = ReplayCounts()

    def run(self) -> None:
        workers = parse_workers()
        if workers < 1:
            for path in self.paths:
                self._read(path, parse_lines)
            return
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for path in self.paths:
                self._read(path, lambda lines: pool.submit(parse_lines, lines), ahead=workers * _CHUNKS_AHEAD)

    def _read(self, path: str, parse, ahead: int = 0) -> None:
        """Every line of the file in order. `parse` turns a chunk of lines into messages or
        error texts, or, when `ahead` chunks may be in flight, into a future of them."""
        stream = _open(path)
        window = Window("<stdin>" if path == "-" else path, place="{source}:{n}")
        pending: collections.deque = collections.deque()
        try:
            while chunk := list(itertools.islice(stream, _CHUNK_LINES)):
                pending.append((chunk, parse(chunk)))
                while len(pending) > ahead:
                    chunk, parsed = pending.popleft()
                    self._chunk(window, chunk, parsed.result() if ahead else parsed)
            while pending:
                chunk, parsed = pending.popleft()
                self._chunk(window, chunk, parsed.result())
        finally:
            for _, parsed in pending:
                parsed.cancel()
            if stream is not sys.stdin.buffer:
                stream.close()
            self.counts.add(window)

    def _chunk(self, window: Window, lines: list[bytes], parsed: list) -> None:
        message, unreadable = self.out.message, self.out.unreadable
        for line, result in zip(lines, parsed):
            if isinstance(result, str):
                unreadable(window, result, line.rstrip(b"\r\n"))
            else:
                message(window, observer_pb2.GetFlowsResponse.FromString(result), line.rstrip(b"\r\n"))
        if self.progress is not None:
            self.progress(sum(map(len, lines)))


def parse_workers() -> int:
    """Processes that parse JSON beside this one: the CPUs this process may use (its
    affinity, and in a container its CPU limit, which the affinity does not show) less
    one, at most _MAX_PARSE_WORKERS."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return min(cpus - 1, _MAX_PARSE_WORKERS)


def cgroup_cpu_limit() -> float | None:
    """CPUs the cgroup's quota allows (v2, else v1); None when unlimited or unknown."""
    try:
        quota, period = CGROUP_V2_CPU_MAX.read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP_V1_CPU / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 else None


def parse_lines(lines: list[bytes]) -> list[bytes | str]:
    """Each line as a serialized GetFlowsResponse, or the text of why it is not one (run
    in worker processes: plain values cross back)."""
    parsed: list[bytes | str] = []
    for line in lines:
        try:
            parsed.append(parse_line(line.rstrip(b"\r\n")).SerializeToString())
        except DecodeError as err:
            parsed.append(str(err))
    return parsed
