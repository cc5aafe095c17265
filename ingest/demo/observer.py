"""An in-process Hubble Observer gRPC server, for `flowlog demo` and the tests.

It serves `/observer.Observer/GetFlows` and `/observer.Observer/ServerStatus` like a
node's Hubble server: responses are kept in time order, as in Hubble's ring buffer;
`since`, `follow` and the whitelist filters the ingester sends (event type,
source/destination pod prefix, verdict) are honoured. It can also misbehave on
purpose: end a stream after a number of messages, as a restarting agent does.
"""

from __future__ import annotations

import bisect
import threading
from concurrent import futures

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..api.flow import flow_pb2
from ..api.observer import observer_pb2, observer_pb2_grpc
from ..decode.decoder import timestamp_ns


def response_time_ns(response: observer_pb2.GetFlowsResponse) -> int:
    if response.HasField("flow") and response.flow.HasField("time"):
        return timestamp_ns(response.flow.time, "flow.time")
    return timestamp_ns(response.time, "time")


def _matches(flt, flow) -> bool:
    if flt.event_type and not any(e.type == flow.event_type.type for e in flt.event_type):
        return False
    if flt.verdict and flow.verdict not in flt.verdict:
        return False
    if flt.source_pod and not any(f"{flow.source.namespace}/{flow.source.pod_name}".startswith(p)
                                  for p in flt.source_pod):
        return False
    if flt.destination_pod and not any(f"{flow.destination.namespace}/{flow.destination.pod_name}".startswith(p)
                                       for p in flt.destination_pod):
        return False
    return True


def wanted(request: observer_pb2.GetFlowsRequest, response: observer_pb2.GetFlowsResponse) -> bool:
    if not response.HasField("flow"):
        return True  # lost events and node status are always sent
    return not request.whitelist or any(_matches(f, response.flow) for f in request.whitelist)


class FlowBuffer:
    """The flows a node holds, in time order, like Hubble's ring buffer: with a capacity,
    the oldest are overwritten, and a reader that fell behind them is told how many it
    lost. Positions are absolute (they survive overwrites); appending wakes followers."""

    def __init__(self, responses=(), capacity: int | None = None):
        self._items: list[tuple[int, int, observer_pb2.GetFlowsResponse]] = []
        self._seq = 0
        self.capacity = capacity
        self.overwritten = 0
        self._changed = threading.Condition()
        self.extend(responses)

    def extend(self, responses) -> None:
        with self._changed:
            for response in responses:
                self._seq += 1
                bisect.insort(self._items, (response_time_ns(response), self._seq, response),
                              key=lambda item: (item[0], item[1]))
            if self.capacity is not None and len(self._items) > self.capacity:
                excess = len(self._items) - self.capacity
                del self._items[:excess]
                self.overwritten += excess
            self._changed.notify_all()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def end(self) -> int:
        return self.overwritten + len(self._items)

    def read_from(self, position: int, limit: int = 256):
        """(items from position on, at most limit; how many the reader lost to overwrites)."""
        with self._changed:
            lost = max(0, self.overwritten - position)
            start = position + lost - self.overwritten
            return self._items[start:start + limit], lost

    def first_position_since(self, since_ns: int) -> int:
        with self._changed:
            return self.overwritten + bisect.bisect_left(self._items, since_ns, key=lambda item: item[0])

    def wait_for_more(self, position: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.end > position, timeout=timeout)


class ObserverService(observer_pb2_grpc.ObserverServicer):
    def __init__(self, buffer: FlowBuffer, drop_after: list[int] | None = None):
        self.buffer = buffer
        # Each entry ends one stream (in order of calls) after that many messages.
        self.drop_after = list(drop_after or [])
        self.requests: list[observer_pb2.GetFlowsRequest] = []
        self.sent = 0
        self.newest_sent_ns = 0
        self.lost_reported = 0
        # Where the newest stream has read up to, in buffer positions.
        self.read_position = 0
        self._lock = threading.Lock()

    def GetFlows(self, request, context):
        with self._lock:
            self.requests.append(request)
            limit = self.drop_after.pop(0) if self.drop_after else None
        since_ns = timestamp_ns(request.since, "since") if request.HasField("since") else 0
        position = self.buffer.first_position_since(since_ns)
        sent_here = 0
        while context.is_active():
            items, lost = self.buffer.read_from(position)
            if lost:
                position += lost
                with self._lock:
                    self.lost_reported += lost
                now = Timestamp()
                now.GetCurrentTime()
                yield observer_pb2.GetFlowsResponse(
                    lost_events=flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER, num_events_lost=lost),
                    node_name="stand-in", time=now)
            for time_ns, _, response in items:
                position += 1
                # A buffer in arrival order (Relay's merge) holds older flows after newer ones.
                if response.HasField("flow") and time_ns < since_ns:
                    continue
                if wanted(request, response):
                    if limit is not None and sent_here >= limit:
                        context.abort(grpc.StatusCode.UNAVAILABLE, "stream dropped by the test server")
                    yield response
                    sent_here += 1
                    with self._lock:
                        self.sent += 1
                        if response.HasField("flow"):
                            self.newest_sent_ns = max(self.newest_sent_ns, time_ns)
                self.read_position = position
            self.read_position = position
            if items:
                continue
            if not request.follow:
                return
            self.buffer.wait_for_more(position, timeout=0.2)

    def caught_up(self) -> bool:
        """A stream has read everything the buffer holds now."""
        return self.read_position >= self.buffer.end

    def ServerStatus(self, request, context):
        return observer_pb2.ServerStatusResponse(num_flows=len(self.buffer), max_flows=4095,
                                                 seen_flows=len(self.buffer), version="flowlog-stand-in")


class ObserverServer:
    """Serves a FlowBuffer on loopback; `address` is what the ingester connects to."""

    def __init__(self, buffer: FlowBuffer, address: str = "127.0.0.1:0", drop_after: list[int] | None = None,
                 server_credentials: grpc.ServerCredentials | None = None):
        self.service = ObserverService(buffer, drop_after)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        observer_pb2_grpc.add_ObserverServicer_to_server(self.service, self.server)
        if server_credentials is not None:
            port = self.server.add_secure_port(address, server_credentials)
        else:
            port = self.server.add_insecure_port(address)
        self.address = address if address.startswith("unix:") else f"{address.rsplit(':', 1)[0]}:{port}"

    def __enter__(self) -> "ObserverServer":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None).wait()

