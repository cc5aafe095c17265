"""Source `file`: backfill from `hubble observe -o jsonpb` output and Hubble exporter files.

Reads JSON Lines (one exporter `ExportEvent` or `GetFlowsResponse` per line, which share
their fields, or a bare `Flow` object per line), plain or gzip-compressed, or `-` for
standard input. Each line is parsed into an `ExportEvent` (the gRPC source's message
with the agent and debug events beside) and handed to the dispatcher in file order (the
decoder learns DNS answers as it goes), each file in a window of its own in which every
flow is looked up before it is stored. A bad line is dead-lettered with its file and
line number and the rest of the file goes on. A line longer than MAX_LINE_BYTES or
nested deeper than MAX_NESTING is refused before it is parsed (and only its beginning
read into memory). A file that cannot be opened, or cannot be read to its end (a
truncated .gz), costs one error line: what was read of it is stored, and the next file
goes on. Fields this build does not know (a newer Cilium's) are skipped and counted.

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
import logging
import multiprocessing
import os
import re
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from .. import metrics
from ..api.flow import flow_pb2
from ..api.observer import observer_pb2
from ..pipeline.records import DecodeError, Window
from . import jsonpb

log = logging.getLogger(__name__)

# The top-level fields of an exporter line (or of hubble observe -o jsonpb's) that say
# which event it is; a line with none of them is read as a bare flow.
EVENT_KEYS = {"flow", "lost_events", "node_status", "agent_event", "debug_event"}
# A Hubble flow is 1 to 3 KB of JSON, and five levels deep; these are far beyond any.
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_NESTING = 64
# What a dead letter keeps of a line too long to parse.
_KEPT_OF_TOO_LONG = 4096
_CHUNK_LINES = 2000
_CHUNK_BYTES = 16 * 1024 * 1024
# Distinct unknown field paths counted by name (each cut to so many characters); more
# fall under "other".
_UNKNOWN_FIELD_LABELS = 100
_UNKNOWN_FIELD_LABEL_CHARS = 100
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
    # Agent and debug events of exporter files: counted, not stored.
    events: int = 0
    bad_lines: int = 0
    # "path: why" of each input that could not be opened, or read to its end.
    unreadable: list[str] = field(default_factory=list)

    def add(self, window: Window) -> None:
        """What the dispatcher counted in one file's window."""
        self.lines += window.read
        self.l7_flows += window.flows
        self.filtered += window.filtered
        self.gaps += window.gaps
        self.events += window.events
        self.bad_lines += window.bad


def _open(path: str) -> io.BufferedIOBase:
    """The file as a binary stream; gzip is recognised by its magic bytes. OSError naming
    what is wrong when it cannot be read."""
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise OSError("standard input is closed")
        return sys.stdin.buffer
    raw = open(path, "rb")
    try:
        magic = raw.peek(2)[:2]
    except OSError:
        raw.close()
        raise
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw)
    return raw


class _TooLong(bytes):
    """The beginning of a line longer than MAX_LINE_BYTES; the rest was skipped unread."""


def _lines(stream):
    """The stream's lines; one longer than MAX_LINE_BYTES as a _TooLong of its beginning."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            line = _TooLong(line[:_KEPT_OF_TOO_LONG])
        yield line


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1


def _nesting(line: bytes) -> int:
    """How deep the JSON in line nests (brackets in strings do not count), at C speed."""
    if line.count(b"{") + line.count(b"[") <= MAX_NESTING:
        return 0  # cannot be deeper than that: the common case
    brackets = _STRING.sub(b"", line).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse_line(line: bytes, unknown: list[str] | None = None) -> observer_pb2.ExportEvent:
    """One JSON line as an ExportEvent; a bare Flow is wrapped. Raises DecodeError. With a
    list for unknown, fields this build does not know are skipped and their paths added."""
    if isinstance(line, _TooLong):
        raise DecodeError(f"a line longer than {MAX_LINE_BYTES} bytes (the dead letter keeps its first "
                          f"{_KEPT_OF_TOO_LONG})")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DecodeError(f"not UTF-8 at byte {err.start}") from None
    if not text.strip():
        raise DecodeError("empty line")
    if _nesting(line) > MAX_NESTING:
        raise DecodeError(f"JSON nested more than {MAX_NESTING} deep")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DecodeError(f"not JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"expected a JSON object, got {type(data).__name__}")
    try:
        if EVENT_KEYS & data.keys():
            return jsonpb.parse(data, observer_pb2.ExportEvent, unknown)
        if not jsonpb.has_a_field(data, flow_pb2.Flow.DESCRIPTOR):  # {} too
            raise DecodeError("no field of a Hubble flow (flow.Flow, ExportEvent or GetFlowsResponse)")
        found: list[str] = []
        flow = jsonpb.parse(data, flow_pb2.Flow, found if unknown is not None else None)
        if unknown is not None:
            unknown += [f"flow.{path}" for path in found]
    except json_format.ParseError as err:
        raise DecodeError(str(err)) from None
    return observer_pb2.ExportEvent(flow=flow, node_name=flow.node_name, time=flow.time)


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
        name = "<stdin>" if path == "-" else path
        window = Window(name, place="{source}:{n}")
        try:
            stream = _open(path)
        except OSError as err:
            self._unreadable(name, f"cannot be read: {err.strerror or err}")
            return
        pending: collections.deque = collections.deque()
        chunks = _Chunks(stream)
        try:
            for chunk in chunks:
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
        if chunks.error is not None:
            self._unreadable(name, f"cannot be read past line {window.read}: {chunks.error}; the lines before it "
                                   "are stored")

    def _unreadable(self, name: str, why: str) -> None:
        log.error("%s %s", name, why)
        self.counts.unreadable.append(f"{name} {why}")

    def _chunk(self, window: Window, lines: list[bytes], parsed: list) -> None:
        message, unreadable = self.out.message, self.out.unreadable
        for line, result in zip(lines, parsed):
            if isinstance(result, str):
                unreadable(window, result, line if isinstance(line, _TooLong) else line.rstrip(b"\r\n"))
                continue
            serialized, unknown = result
            for path in unknown:
                count_unknown_field(path)
            message(window, observer_pb2.ExportEvent.FromString(serialized), line.rstrip(b"\r\n"))
        if self.progress is not None:
            self.progress(sum(map(len, lines)))


class _Chunks:
    """The stream's lines in chunks of at most _CHUNK_LINES lines and about _CHUNK_BYTES;
    a stream that fails partway (a truncated .gz) ends with what was read, and `error`
    says why."""

    def __init__(self, stream):
        self.stream = stream
        self.error: str | None = None

    def __iter__(self):
        chunk, size = [], 0
        try:
            for line in _lines(self.stream):
                chunk.append(line)
                size += len(line)
                if len(chunk) >= _CHUNK_LINES or size >= _CHUNK_BYTES:
                    yield chunk
                    chunk, size = [], 0
        except (OSError, EOFError, ValueError, zlib.error) as err:
            self.error = f"{type(err).__name__}: {err}"
        if chunk:
            yield chunk


_counted_unknown: set[str] = set()


def count_unknown_field(path: str) -> None:
    path = path[:_UNKNOWN_FIELD_LABEL_CHARS]
    if path not in _counted_unknown and len(_counted_unknown) >= _UNKNOWN_FIELD_LABELS:
        path = "other"
    _counted_unknown.add(path)
    metrics.JSON_UNKNOWN_FIELDS.labels(path).inc()


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


def parse_lines(lines: list[bytes]) -> list[tuple[bytes, list[str]] | str]:
    """Each line as a serialized ExportEvent and the paths of the fields it had that
    this build does not know, or the text of why it is not one (run in worker processes:
    plain values cross back). No line can stop the others."""
    parsed: list[tuple[bytes, list[str]] | str] = []
    for line in lines:
        unknown: list[str] = []
        try:
            parsed.append((parse_line(line if isinstance(line, _TooLong) else line.rstrip(b"\r\n"),
                                      unknown).SerializeToString(), unknown))
        except DecodeError as err:
            parsed.append(str(err))
        except Exception as err:  # a line nothing foresaw: it costs only itself
            parsed.append(f"cannot be parsed: {type(err).__name__}: {err}")
    return parsed
