"""GetFlows over the stored history, as Hubble's local observer answers it.

Where the stream starts (Hubble's rules): `first` reads from `since`, else from the
oldest stored flow; `since` alone starts there too; `follow` with no `number` and no
`since` starts at the present; `number` 0 means every flow; otherwise the newest
`number` flows that match. Then flows go out oldest first, at most `number` of them
(unless following), ending at the first flow later than `until`. Recorded gaps in the
span the stream covers go out as `lost_events` (or `node_status`) at their place in
time; they pass every filter and do not count toward `number`, as in Hubble.

`follow` polls the store: a flow is sent once it is `serve.follow_delay_s` old, so flows
stored a little late still come in time order, and the last `serve.follow_window_s` are
read again at every poll, so one stored later still comes (out of order). The keys of
the flows already stored in that window when the request came, and of every flow sent,
are held while their flows are in the window: nothing is sent twice, across the hand-over
from history too, and nothing from before where the request starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

from ..api.flow import flow_pb2
from ..api.observer import observer_pb2
from ..api.relay import relay_pb2
from .filters import FilterError, Test, compile_request
from .query import Pushdown, pushdown
from .reader import Gap, HistoryReader, StoredFlow

NS = 1_000_000_000
_MIN_WINDOW_NS = 1_000            # 1 µs: below it, a window's flows are read in one query
_FIRST_WINDOW_NS = 60 * NS
_MAX_WINDOW_NS = 7 * 86_400 * NS


class InvalidRequest(ValueError):
    """A request Hubble refuses too (INVALID_ARGUMENT)."""


@dataclass
class Plan:
    """A GetFlowsRequest as this server reads it."""
    number: int
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None
    wanted: Test
    push: Pushdown
    mask: "FieldMask | None"


def plan(request: observer_pb2.GetFlowsRequest, database: str) -> Plan:
    if request.first and request.follow:
        raise InvalidRequest("first cannot be combined with follow")
    try:
        wanted = compile_request(request.whitelist, request.blacklist)
    except FilterError as err:
        raise InvalidRequest(str(err)) from None
    paths = list(request.field_mask.paths) or list(request.experimental.field_mask.paths)
    return Plan(
        number=request.number, first=request.first, follow=request.follow,
        since_ns=_ns(request.since) if request.HasField("since") else None,
        until_ns=_ns(request.until) if request.HasField("until") else None,
        wanted=wanted, push=pushdown(database, request.whitelist),
        mask=FieldMask(paths) if paths else None)


def _ns(stamp) -> int:
    return stamp.seconds * NS + stamp.nanos


class FieldMask:
    """Keeps only the named fields of each flow, as Hubble's fieldmask does: a message on a
    path is always present, if empty. Paths this build does not know are ignored, not
    refused: the hubble CLI's default compact mask may name fields newer than this build."""

    def __init__(self, paths: list[str]):
        self.tree: dict = {}
        for path in sorted(set(paths)):
            parts = path.split(".")
            if not _is_path(flow_pb2.Flow.DESCRIPTOR, parts):
                continue
            node = self.tree
            for index, part in enumerate(parts):
                if node.get(part, {}) is None:
                    break  # a shorter path keeps the whole field
                if index == len(parts) - 1:
                    node[part] = None
                else:
                    node = node.setdefault(part, {})

    def apply(self, flow: flow_pb2.Flow) -> flow_pb2.Flow:
        kept = flow_pb2.Flow()
        _copy(self.tree, flow, kept)
        return kept


def _copy(tree: dict, source, destination) -> None:
    for name, below in tree.items():
        if below is None:
            field = source.DESCRIPTOR.fields_by_name[name]
            if field.is_repeated:
                getattr(destination, name).extend(getattr(source, name))
            elif field.message_type is not None:
                if source.HasField(name):
                    getattr(destination, name).CopyFrom(getattr(source, name))
            else:
                setattr(destination, name, getattr(source, name))
        else:
            inner = getattr(destination, name)
            inner.SetInParent()
            _copy(below, getattr(source, name), inner)


def _is_path(descriptor, parts: list[str]) -> bool:
    field = descriptor.fields_by_name.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    return field.message_type is not None and not field.is_repeated and \
        _is_path(field.message_type, parts[1:])


class FlowStream:
    """The responses to one GetFlows request."""

    def __init__(self, reader: HistoryReader, plan_: Plan, page_rows: int, follow_poll_s: float,
                 follow_delay_s: float, follow_window_s: float, clock: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep, active: Callable[[], bool] = lambda: True):
        self.reader = reader
        self.plan = plan_
        self.page_rows = page_rows
        self.poll_s = follow_poll_s
        self.delay_ns = int(follow_delay_s * NS)
        self.window_ns = int(follow_window_s * NS)
        self.clock = clock
        self.sleep = sleep
        self.active = active
        self.sent = 0
        self.gaps_sent: set[str] = set()
        self.oldest = self.newest = 0

    # --- reading the store window by window -------------------------------------------

    def _scan(self, lo: int, hi: int, descending: bool) -> Iterator[StoredFlow]:
        """Every candidate flow in [lo, hi), in time order (or reverse), at most page_rows
        read at once. Windows grow while they hold few flows; a full one ends before its
        last flow's time, and the next starts there."""
        window = _FIRST_WINDOW_NS
        if self.newest:  # no empty years read window by window
            lo, hi = max(lo, self.oldest), min(hi, self.newest + 1)
        cursor = hi if descending else lo
        while (cursor > lo) if descending else (cursor < hi):
            w_lo, w_hi = (max(lo, cursor - window), cursor) if descending else (cursor, min(hi, cursor + window))
            rows = self.reader.flows(w_lo, w_hi, self.plan.push, descending, self.page_rows + 1)
            if len(rows) > self.page_rows:
                # Flows of the last time read may go on past the page: they come next time.
                edge = rows[self.page_rows - 1].time_ns
                kept = [row for row in rows[:self.page_rows] if row.time_ns != edge]
                if not kept:  # a page of flows all stamped the same nanosecond
                    kept = self.reader.flows(edge, edge + 1, self.plan.push, descending, 1 << 63)
                    edge = edge - 1 if descending else edge + 1
                yield from kept
                cursor = edge + 1 if descending else edge
                window = max(_MIN_WINDOW_NS, abs(edge - (w_hi if descending else w_lo)))
                continue
            yield from rows
            cursor = w_lo if descending else w_hi
            if len(rows) < self.page_rows:  # room left: the next window may be longer
                window = min(_MAX_WINDOW_NS, window * (4 if len(rows) <= self.page_rows // 4 else 2))

    def _decode(self, row: StoredFlow) -> flow_pb2.Flow | None:
        flow = flow_pb2.Flow.FromString(row.flow)
        # A flow received without its own time or node (they came on the response) gets
        # them back from its row, so filters and clients see what Hubble sent.
        if not flow.HasField("time"):
            flow.time.FromNanoseconds(row.time_ns)
        if not flow.node_name:
            flow.node_name = row.node
        return flow if self.plan.wanted(flow) else None

    def _response(self, row: StoredFlow, flow: flow_pb2.Flow) -> observer_pb2.GetFlowsResponse:
        """As Hubble: the response's time and node are the (masked) flow's."""
        sent = self.plan.mask.apply(flow) if self.plan.mask else flow
        response = observer_pb2.GetFlowsResponse(flow=sent, node_name=sent.node_name)
        if sent.HasField("time"):
            response.time.CopyFrom(sent.time)
        return response

    # --- the stream -------------------------------------------------------------------

    def responses(self) -> Iterator[observer_pb2.GetFlowsResponse]:
        p = self.plan
        now = self.clock()
        oldest, newest, count = self.reader.span()
        self.oldest, self.newest = oldest, newest  # the history part reads no empty years
        if p.follow:
            history_end = now - self.delay_ns
        else:
            history_end = max(now, newest) + 1
        if p.until_ns is not None:
            history_end = min(history_end, p.until_ns + 1)
        limit = p.number if (p.number and not p.follow) else None
        # follow: what is stored already near the hand-over, read before the history is, is
        # not new; with the keys the history sends, that is what polls must not send again.
        seen = {hash(key) for key in self.reader.keys(history_end - self.window_ns, history_end, p.push)} \
            if p.follow else set()
        start: tuple[int, str, str] | None = None
        if p.first or p.since_ns is not None:
            lo = p.since_ns if p.since_ns is not None else oldest
        elif p.follow and p.number == 0:
            lo = history_end
        elif p.number == 0:
            lo = oldest
        else:
            held, start = self._newest(p.number, oldest, history_end)
            if held is not None:
                lo = held[0][0].time_ns if held else history_end
                yield from self._with_gaps(held, lo, history_end)
                if p.follow:
                    seen.update(hash(row.key) for row, _ in held)
                    yield from self._follow(history_end, lo, seen)
                return
            lo = start[0] if start else history_end
        if count == 0 and not p.follow:
            yield from self._with_gaps([], lo, history_end)
            return
        # Polls read back one window from the hand-over: only keys in it need holding, so a
        # follow over months of history holds a window's keys, not every key it sent.
        forward = self._forward(lo, history_end, start, limit, seen if p.follow else None,
                                history_end - self.window_ns)
        yield from self._with_gaps(forward, lo, history_end, limited=limit is not None)
        if p.follow:
            yield from self._follow(history_end, lo, seen)

    def _newest(self, number: int, oldest: int, end: int):
        """The newest `number` matching flows: held in memory when they are few (with None),
        else (None, the key of the oldest of them) for a second pass forward."""
        held: list[tuple[StoredFlow, flow_pb2.Flow]] = []
        found = 0
        for row in self._scan(oldest, end, descending=True):
            flow = self._decode(row)
            if flow is None:
                continue
            found += 1
            if number <= self.page_rows:
                held.append((row, flow))
            if found == number:
                break
        if number <= self.page_rows:
            held.reverse()
            return held, None
        return None, (row.key if found else None)

    def _forward(self, lo: int, hi: int, start, limit, seen: set | None, seen_from: int):
        count = 0
        for row in self._scan(lo, hi, descending=False):
            if start is not None and row.key < start:
                continue
            flow = self._decode(row)
            if flow is None:
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            if seen is not None and row.time_ns >= seen_from:
                seen.add(hash(row.key))
            yield row, flow

    def _with_gaps(self, flows, lo: int, hi: int, limited: bool = False):
        """The flows, with the gaps recorded between lo and hi each at its time. When the
        number of flows ended the stream early, gaps after the last flow are not sent."""
        gaps = self.reader.gaps(lo, hi) if hi > lo else []
        index = 0
        last_ns = None
        for row, flow in flows:
            while index < len(gaps) and gaps[index].time_ns <= row.time_ns:
                yield self._gap(gaps[index])
                index += 1
            self.sent += 1
            last_ns = row.time_ns
            yield self._response(row, flow)
        if limited and last_ns is not None and self.plan.number and self.sent >= self.plan.number:
            return
        for gap in gaps[index:]:
            yield self._gap(gap)

    def _gap(self, gap: Gap) -> observer_pb2.GetFlowsResponse:
        self.gaps_sent.add(gap.gap_id)
        return _gap_response(gap)

    def _follow(self, cursor: int, floor: int, seen: set) -> Iterator[observer_pb2.GetFlowsResponse]:
        """Polls for flows stored since the history was read: every poll reads the window
        before the cursor again and sends what it has not seen, never a flow before floor
        (where the request starts). A key is held while its flow is in the window."""
        recent = dict.fromkeys(seen, cursor)
        self.newest = 0  # polls read past the newest flow the history knew of
        until = self.plan.until_ns
        while True:
            self.sleep(self.poll_s)
            if not self.active():  # the client left, or the server stops
                return
            end = self.clock() - self.delay_ns
            if until is not None:
                end = min(end, until + 1)
            lo = max(cursor - self.window_ns, floor)
            fresh: list[tuple[StoredFlow, flow_pb2.Flow]] = []
            for row in self._scan(lo, end, descending=False):
                key = hash(row.key)
                if key in recent:
                    continue
                recent[key] = row.time_ns
                flow = self._decode(row)
                if flow is not None:
                    fresh.append((row, flow))
            gaps = [g for g in self.reader.gaps(lo, end) if g.gap_id not in self.gaps_sent]
            events = sorted([(row.time_ns, 1, row, flow) for row, flow in fresh] +
                            [(gap.time_ns, 0, gap, None) for gap in gaps], key=lambda e: (e[0], e[1]))
            for _, kind, item, flow in events:
                if kind == 0:
                    yield self._gap(item)
                else:
                    self.sent += 1
                    yield self._response(item, flow)
            cursor = max(cursor, end)
            horizon = cursor - self.window_ns
            for key in [k for k, at in recent.items() if at < horizon]:
                del recent[key]
            if until is not None and end > until:
                return


def _gap_response(gap: Gap) -> observer_pb2.GetFlowsResponse:
    response = observer_pb2.GetFlowsResponse(node_name=gap.node)
    response.time.FromNanoseconds(gap.time_ns)
    if gap.kind == "node_status":
        state = relay_pb2.NodeState.Value(gap.source) if gap.source in relay_pb2.NodeState.keys() else 0
        response.node_status.CopyFrom(relay_pb2.NodeStatusEvent(state_change=state, node_names=[gap.node],
                                                                message=gap.message))
        return response
    source = flow_pb2.LostEventSource.Value(gap.source) if gap.source in flow_pb2.LostEventSource.keys() else 0
    lost = response.lost_events
    lost.source = source
    lost.num_events_lost = gap.count
    if gap.first_ns:
        lost.first.FromNanoseconds(gap.first_ns)
    if gap.last_ns:
        lost.last.FromNanoseconds(gap.last_ns)
    return response
