"""The dispatcher: what every message a source reads becomes, for both sources.

A source hands over each message it reads with its `Window`. The dispatcher decodes it
and puts an `Entry` in the batcher's inbox: a flow's rows (looked up before they are
stored if the window says it may be stored already), a gap row (always looked up:
Hubble sends a loss report again when a stream resumes), or a `Tally` of a flow that is
not L7; an exporter's agent and debug events are only counted. Input that cannot be
decoded is kept in the dead-letter file with its place (file:line, or the stream and
message number), counted, and tallied as quarantined; the
rest goes on. What is kept is redacted as the stored flows are: a message as the decoder
left it (redacted before it could fail), a line that is no message scrubbed by pattern. It counts what it read in the window, notes the newest flow of each node
(where the next window resumes) and when it was read, and counts in the ingester's own
metrics, by source kind.
"""

from __future__ import annotations

import logging
import time

from google.protobuf import json_format

from ..logs import RateLimitedLog
from .. import metrics
from ..pipeline.records import DecodeError, Entry, FilePosition, FlowRows, GapRow, OtherEvent, Tally, Window
from .decoder import LOST_SOURCE, NODE_STATE

log = logging.getLogger(__name__)
_now_ns = time.time_ns


class Dispatcher:
    """Decodes with `decoder`, keeps bad input in `dead_letters`, and calls `emit` with each
    Entry. `kind` labels the metrics (hubble, file); a live source (`live`) also reports
    Hubble's losses and Relay's node changes as they happen, in the log and the metrics."""

    def __init__(self, decoder, dead_letters, emit, kind: str, live: bool):
        self.decode = decoder.decode
        self.redact = decoder.redact
        self.dead_letters = dead_letters
        self.emit = emit
        self.kind = kind
        self.live = live
        self._received_l7 = metrics.FLOWS_RECEIVED.labels(kind, "L7")
        self._lost_log = RateLimitedLog(log)

    def message(self, window: Window, response, raw: bytes | None = None) -> None:
        """One message a source read, from raw when it was read as a line of JSON. A dead
        letter keeps the message as the decoder left it, redacted before it could fail:
        serialized, or as JSON for a line of JSON."""
        window.read += 1
        try:
            decoded = self.decode(response)
        except DecodeError as err:
            if response.HasField("flow") and response.flow.Summary:  # redacted for HTTP flows only, so far
                response.flow.Summary = self.redact.summary(response.flow.Summary)
            self._bad_input(window, str(err), response.SerializeToString() if raw is None else self._as_json(response, raw),
                            response.node_name)
            return
        if type(decoded) is FlowRows:  # nearly every message: the hot path
            window.flows += 1
            self._received_l7.inc()
            time_ns, node = decoded.time_ns, decoded.node
            newest = window.newest_by_node
            if time_ns > newest.get(node, 0):
                newest[node] = time_ns
            window.seen_by_node[node] = _now_ns()
            self.emit(Entry(decoded, time_ns <= window.maybe_stored_until_ns, window.source, decoded.size))
            return
        if isinstance(decoded, list):  # node status: one gap row per node
            if self.live:
                status = response.node_status
                metrics.NODE_STATUS.labels(NODE_STATE.label(status.state_change)).inc()
                log.info("Hubble Relay: nodes %s are %s: %s", ",".join(status.node_names),
                         NODE_STATE.shown(status.state_change), status.message)
            for gap_row in decoded:
                window.gaps += 1
                self.emit(Entry(gap_row, True, window.source))
            return
        if isinstance(decoded, GapRow):  # lost events
            window.gaps += 1
            if self.live:
                lost = response.lost_events
                metrics.LOST_EVENTS.labels(LOST_SOURCE.label(lost.source)).inc(lost.num_events_lost)
                self._lost_log.warning("Hubble lost %d events (%s) on %s", lost.num_events_lost,
                                       LOST_SOURCE.shown(lost.source), response.node_name or "?")
            # Hubble sends a report again when a stream resumes before the flow that followed
            # it, which can be after the newest flow received: always looked up (reports are
            # rare, and a batch's lookups are one query per table).
            self.emit(Entry(decoded, True, window.source))
            return
        if type(decoded) is OtherEvent:  # an exporter's agent or debug event: no flow
            window.events += 1
            metrics.EXPORTER_EVENTS.labels(decoded.kind).inc()
            return
        # Not L7: Hubble is asked for L7 events only, but a server or a file may hold others.
        window.filtered += 1
        metrics.FLOWS_RECEIVED.labels(self.kind, decoded.kind).inc()
        metrics.FLOWS_FILTERED.labels(decoded.kind).inc()
        self.emit(Entry(Tally(decoded.node, decoded.time_ns, filtered=1), False, window.source))

    def _as_json(self, response, raw: bytes) -> str | bytes:
        try:
            return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None)
        except (ValueError, TypeError):  # a value proto3 JSON cannot write: the line, scrubbed
            return self._scrubbed(raw)

    def _scrubbed(self, raw: bytes) -> str | bytes:
        try:
            return self.redact.text(raw.decode("utf-8"))
        except UnicodeDecodeError:  # the patterns are ASCII: through latin-1, every byte is kept
            return self.redact.text(raw.decode("latin-1")).encode("latin-1")

    def unreadable(self, window: Window, error: str, raw: bytes) -> None:
        """A line a source could not even parse into a message: kept scrubbed by pattern."""
        window.read += 1
        self._bad_input(window, self.redact.text(error), self._scrubbed(raw), "")

    def _bad_input(self, window: Window, error: str, raw: bytes, node: str) -> None:
        window.bad += 1
        metrics.DECODE_ERRORS.labels(self.kind).inc()
        self.dead_letters.add(window.last_place(), error, raw)
        self.emit(Entry(Tally(node, quarantined=1), False, window.source))

    def gap(self, window: Window, gap_row: GapRow, looked_up: bool = False) -> None:
        """A gap the source itself noticed (a stream that broke, a file cut): on record; looked
        up first when the source may notice it again after a restart."""
        self.emit(Entry(gap_row, looked_up, window.source))

    def position(self, window: Window, position: FilePosition) -> None:
        """Where a file source stands: every line before it has been handed on."""
        self.emit(Entry(position, False, window.source, 0))
