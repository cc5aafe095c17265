"""Source `hubble`: follows `Observer.GetFlows` on a node's socket or on Hubble Relay.

Asks only for L7 events (`event_type.type = 129`, what `hubble observe -t l7` asks),
plus the configured namespace and verdict filters.

Each connection re-reads a window and looks all of it up, so that exactly-once never
rests on the checkpoint being there or right (a backfill first, another source address,
a lost state dir). It asks for flows `since` the oldest node's newest flow, less
`source.resume_margin_s`: Relay merges nodes whose clocks and delays differ, so a node
behind the others would otherwise lose what it had not yet delivered. The newest flow
of each node comes from the checkpoint at start, then from what was received. A node
not heard from for `source.node_idle_s` (by this host's clock) no longer holds it back. Every flow
stamped up to the later of now and the newest flow received, plus the margin, is what
Hubble held when the connection began: it is handed on as possibly stored, and the sink
looks it up. A resume point ahead of this host's clock (flows stamped in the future)
would make Hubble skip every flow until that time: then it asks for all Hubble holds.

Reconnects forever with exponential backoff and full jitter; a stream that breaks after
delivering is recorded as a gap.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
import grpc.experimental
from google.protobuf.timestamp_pb2 import Timestamp

from .. import metrics
from ..api import L7_EVENT_TYPE
from ..api.flow import flow_pb2
from ..api.observer import observer_pb2, observer_pb2_grpc
from ..backoff import Backoff
from ..config import SourceConfig
from ..logs import RateLimitedLog
from ..pipeline.records import Window, interruption_gap

log = logging.getLogger(__name__)

# Measured here: grpcio's default client receives about 14,000 messages/s on a
# server stream, with this option about 90,000.
CHANNEL_OPTIONS = [
    (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]


class SourceError(RuntimeError):
    """The source is misconfigured (unreadable certificate files and the like)."""


class Connector:
    """Opens channels to the configured address; TLS files are read once, at start, so a
    missing or unreadable one stops the ingester with the config key named."""

    def __init__(self, config: SourceConfig):
        self.target = config.address
        self.options = list(CHANNEL_OPTIONS)
        self.credentials = None
        tls = config.tls
        if not tls.enabled:
            return
        if bool(tls.cert_file) != bool(tls.key_file):
            raise SourceError("source.tls: cert_file and key_file go together (mTLS needs both)")
        self.credentials = grpc.ssl_channel_credentials(root_certificates=_read("ca_file", tls.ca_file),
                                                        private_key=_read("key_file", tls.key_file),
                                                        certificate_chain=_read("cert_file", tls.cert_file))
        if tls.server_name:
            self.options.append(("grpc.ssl_target_name_override", tls.server_name))

    def open(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)


def _read(key: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise SourceError(f"source.tls.{key}: cannot read {path}: {err.strerror}") from None


# How far ahead of this host's clock the resume point may be and still be used.
_AHEAD_OF_CLOCK_NS = 1_000_000_000
# How a dead letter names a message: the stream and the message's number in this process.
_PLACE = "{source}#message {n}"


def flows_request(config: SourceConfig, since_ns: int) -> observer_pb2.GetFlowsRequest:
    base = dict(event_type=[flow_pb2.EventTypeFilter(type=L7_EVENT_TYPE)])
    if config.verdicts:
        try:
            base["verdict"] = [flow_pb2.Verdict.Value(v.upper()) for v in config.verdicts]
        except ValueError as err:
            raise SourceError(f"source.verdicts: {err}") from None
    prefixes = [ns.rstrip("/") + "/" for ns in config.namespaces]
    if prefixes:
        # Hubble has no namespace filter: whitelist filters are OR'ed, fields within one AND'ed.
        whitelist = [flow_pb2.FlowFilter(source_pod=prefixes, **base),
                     flow_pb2.FlowFilter(destination_pod=prefixes, **base)]
    else:
        whitelist = [flow_pb2.FlowFilter(**base)]
    since = Timestamp(seconds=since_ns // 1_000_000_000, nanos=since_ns % 1_000_000_000)
    return observer_pb2.GetFlowsRequest(follow=True, whitelist=whitelist, since=since)


class HubbleSource:
    """Follows the configured Hubble into `out` (the dispatcher: `message` for each message,
    `gap` for a stream that broke) until `stop` is set."""

    def __init__(self, config: SourceConfig, out, stop: threading.Event, resume: dict[str, int] | None = None,
                 seen: dict[str, int] | None = None):
        self.config = config
        self.connector = Connector(config)
        self.out = out
        self.stop = stop
        self.connections = 0
        self.connected = threading.Event()
        self._call = None
        self._connect_log = RateLimitedLog(log, interval_s=5.0)
        # From the checkpoint: the newest durable flow of each node, and when this host saw
        # it; then what was received.
        self._window = Window(config.address, _PLACE, newest_by_node=dict(resume or {}),
                              seen_by_node=dict(seen or {}))

    @property
    def newest_ns(self) -> int:
        """The newest flow received of any node."""
        return self._window.newest_ns

    def cancel(self) -> None:
        """Ends the current stream from another thread (shutdown)."""
        call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        backoff = Backoff(self.config.reconnect_initial_s, self.config.reconnect_max_s)
        attempt = 0
        while not self.stop.is_set():
            if attempt:
                metrics.RECONNECTS.inc()
            attempt += 1
            received = self._stream_once()
            if self.stop.is_set():
                break
            if received:
                backoff.reset()
            wait = backoff.next_wait()
            log.info("reconnecting to %s in %.1f s", self.config.address, wait)
            self.stop.wait(wait)

    def _stream_once(self) -> int:
        """One GetFlows call until it ends; returns how many messages it delivered."""
        previous = self._window
        margin_ns = int(self.config.resume_margin_s * 1e9)
        now_ns = time.time_ns()
        since_ns = resume_point(previous.newest_by_node, previous.seen_by_node, now_ns, margin_ns,
                                int(self.config.node_idle_s * 1e9))
        if since_ns > now_ns + _AHEAD_OF_CLOCK_NS:
            # Hubble would skip every flow until that time comes: nodes whose clocks ran
            # ahead and were put right, or flows stamped in the future.
            log.warning("the resume point, %s, is ahead of this host's clock (%s): asking %s for every flow it "
                        "holds; each is looked up and not stored again", _iso(since_ns), _iso(now_ns),
                        self.config.address)
            since_ns = 0
        maybe_stored_until_ns = max(now_ns, self.newest_ns) + margin_ns
        # Messages are numbered across connections, so a dead letter's place is unique.
        window = self._window = Window(self.config.address, _PLACE, maybe_stored_until_ns, previous.newest_by_node,
                                       previous.seen_by_node, read=previous.read)
        self.connections += 1
        received = 0
        message = self.out.message
        channel = self.connector.open()
        try:
            stub = observer_pb2_grpc.ObserverStub(channel)
            self._call = stub.GetFlows(flows_request(self.config, since_ns))
            if self.stop.is_set():
                self._call.cancel()
            for response in self._call:
                if not received:
                    self.connected.set()
                    metrics.CONNECTED.set(1)
                    log.info("streaming L7 flows from %s since %s", self.config.address, _iso(since_ns))
                received += 1
                message(window, response)
        except grpc.RpcError as err:
            if not self.stop.is_set():
                code = err.code() if hasattr(err, "code") else None
                details = err.details() if hasattr(err, "details") else str(err)
                hint = "" if received else self._connect_hint()
                self._connect_log.warning("Hubble stream %s ended: %s %s%s", self.config.address,
                                          code.name if code else "", details, hint)
                if received:
                    now_ns = time.time_ns()
                    self.out.gap(window, interruption_gap(self.config.address, "", min(window.newest_ns, now_ns),
                                                          now_ns, f"{code.name if code else 'ERROR'}: {details}"))
        finally:
            self._call = None
            self.connected.clear()
            metrics.CONNECTED.set(0)
            channel.close()
        return received

    def _connect_hint(self) -> str:
        """What to check when a TLS connection never delivered anything."""
        tls = self.config.tls
        if not tls.enabled:
            return ""
        if not tls.cert_file:
            return (" (TLS: if the server requires client certificates (mTLS), set source.tls.cert_file "
                    "and source.tls.key_file)")
        return " (TLS: check source.tls.ca_file, source.tls.server_name and the client certificate)"


def resume_point(newest_by_node: dict[str, int], seen_by_node: dict[str, int], now_ns: int, margin_ns: int,
                 idle_ns: int) -> int:
    """Where to ask Hubble to start: the oldest newest-flow time among the nodes heard from
    within idle_ns (by this host's clock), less margin_ns. A node not heard from for longer
    delivered what it had long ago; when every node is such, the newest of them, less the
    margin. 0, everything Hubble holds, when no node is known."""
    if not newest_by_node:
        return 0
    heard = [t for node, t in newest_by_node.items() if now_ns - seen_by_node.get(node, now_ns) <= idle_ns]
    return max(0, (min(heard) if heard else max(newest_by_node.values())) - margin_ns)


def _iso(ns: int) -> str:
    if not ns:
        return "the oldest flow in Hubble's buffer"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"
