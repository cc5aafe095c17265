"""Source `file`: backfill from `hubble observe -o jsonpb` output and Hubble exporter files.

Reads JSON Lines (one `GetFlowsResponse` per line, or a bare `Flow` object per line),
plain or gzip-compressed, or `-` for standard input. Each line is parsed with
protobuf's json_format into the same messages the gRPC source receives and goes
through the same decoder. A bad line is dead-lettered with its file and line number
and the rest of the file goes on.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from dataclasses import dataclass

from google.protobuf import json_format

from .. import jsonpb, metrics
from ..api.flow import flow_pb2
from ..api.observer import observer_pb2
from ..deadletter import DeadLetters
from ..decode import Decoder, DecodeError, FlowRows, GapRow
from ..pipeline import Entry, Tally

RESPONSE_KEYS = {"flow", "lost_events", "node_status"}


@dataclass
class ReplayCounts:
    lines: int = 0
    l7_flows: int = 0
    filtered: int = 0
    gaps: int = 0
    bad_lines: int = 0


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
    def __init__(self, paths: list[str], decoder: Decoder, dead_letters: DeadLetters, emit, progress=None):
        self.paths = paths
        self.decoder = decoder
        self.dead_letters = dead_letters
        self.emit = emit
        self.progress = progress
        self.counts = ReplayCounts()

    def run(self) -> None:
        for path in self.paths:
            stream = _open(path)
            name = "<stdin>" if path == "-" else path
            try:
                for number, line in enumerate(stream, start=1):
                    self._line(name, number, line.rstrip(b"\r\n"))
                    if self.progress is not None:
                        self.progress(len(line))
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()

    def _line(self, name: str, number: int, line: bytes) -> None:
        self.counts.lines += 1
        try:
            decoded = self.decoder.decode(parse_line(line))
        except DecodeError as err:
            self.counts.bad_lines += 1
            metrics.DECODE_ERRORS.labels("file").inc()
            self.dead_letters.add(f"{name}:{number}", str(err), line)
            self.emit(Entry(Tally("", quarantined=1), False, name))
            return
        if isinstance(decoded, list):
            for gap in decoded:
                self.counts.gaps += 1
                self.emit(Entry(gap, True, name))
            return
        if isinstance(decoded, GapRow):
            self.counts.gaps += 1
            self.emit(Entry(decoded, True, name))
            return
        if isinstance(decoded, FlowRows):
            self.counts.l7_flows += 1
            metrics.FLOWS_RECEIVED.labels("file", "L7").inc()
            self.emit(Entry(decoded, True, name))
            return
        self.counts.filtered += 1
        metrics.FLOWS_RECEIVED.labels("file", decoded.kind).inc()
        metrics.FLOWS_FILTERED.labels(decoded.kind).inc()
        self.emit(Entry(Tally(decoded.node, decoded.time_ns, filtered=1), False, name))
