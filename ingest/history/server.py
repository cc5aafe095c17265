"""observer.Observer over the stored history: what `hubble observe`, Hubble UI and anything
speaking Hubble's API call, answered from the store instead of a node's ring buffer.

GetFlows streams stored flows (`stream`); ServerStatus, GetNodes and GetNamespaces
summarise the store; GetAgentEvents and GetDebugEvents answer UNIMPLEMENTED (the store
keeps no such events). Every response carries the `hubble-server-version` header the
hubble CLI reads, and the gRPC health service answers for `hubble.server.Observer`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__
from ..api.observer import observer_pb2, observer_pb2_grpc
from ..api.relay import relay_pb2
from ..config import ServeConfig
from ..metrics.history import CALLS, FLOWS_SENT, GAPS_SENT, STORE_UP, STREAMS_OPEN
from .reader import HistoryReader, OverBudget, StoreFailed
from .stream import FlowStream, InvalidRequest, plan

log = logging.getLogger(__name__)

HEALTH_SERVICE = "hubble.server.Observer"
# The Hubble API this server speaks (api/v1 of Cilium 1.19.4), with this build as
# semver build metadata, so the hubble CLI's version check parses it.
SERVER_VERSION = f"1.19.4+flowlog.{__version__}"
_HEADERS = (("hubble-server-version", SERVER_VERSION),)
_SPARE_THREADS = 8


def _code(context, failed: bool) -> str:
    """The status a call ended with, as the client sees it: what it aborted with; UNKNOWN
    when it raised anything else (gRPC answers that); DEADLINE_EXCEEDED or CANCELLED when
    the client stopped waiting."""
    code = context.code()
    remaining = context.time_remaining()  # None: the call had no deadline
    if code is None:
        if context.is_active():
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        elif remaining is not None and remaining <= 0:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            code = grpc.StatusCode.CANCELLED
    return code.name


def _counted(method):
    """Counts the calls of a unary method by the status they ended with."""
    def call(self, request, context):
        failed = True
        try:
            answer = method(self, request, context)
            failed = False
            return answer
        finally:
            CALLS.labels(method.__name__, _code(context, failed)).inc()
    return call


class HistoryObserver(observer_pb2_grpc.ObserverServicer):
    def __init__(self, reader: HistoryReader, serve: ServeConfig, database: str, tls: bool = False):
        self.reader = reader
        self.serve = serve
        self.database = database
        self.tls = tls
        self.started_ns = time.time_ns()
        self.streams = threading.BoundedSemaphore(serve.max_streams)

    def _refuse(self, context, err: Exception):
        if isinstance(err, InvalidRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if isinstance(err, OverBudget):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        context.abort(grpc.StatusCode.UNAVAILABLE, str(err))

    def GetFlows(self, request, context):
        failed = True
        try:
            yield from self._flows(request, context)
            failed = False
        except GeneratorExit:  # the client left, and gRPC closed the stream
            failed = False
            raise
        finally:
            CALLS.labels("GetFlows", _code(context, failed)).inc()

    def _flows(self, request, context):
        context.send_initial_metadata(_HEADERS)
        if not self.streams.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.serve.max_streams} GetFlows calls are served already (serve.max_streams)")
        STREAMS_OPEN.inc()
        try:
            stream = FlowStream(self.reader, plan(request, self.database), self.serve.page_rows,
                                self.serve.follow_poll_s, self.serve.follow_delay_s, self.serve.follow_window_s,
                                active=context.is_active)
            for response in stream.responses():
                yield response
                # Counted once gRPC has taken it: the one in hand when a client leaves was not sent.
                (FLOWS_SENT if response.HasField("flow") else GAPS_SENT).inc()
        except (InvalidRequest, OverBudget, StoreFailed) as err:
            if not context.is_active():
                return  # cancelled meanwhile: no one to tell
            log.info("GetFlows from %s refused: %s", context.peer(), err)
            self._refuse(context, err)
        finally:
            STREAMS_OPEN.dec()
            self.streams.release()

    @_counted
    def ServerStatus(self, request, context):
        context.send_initial_metadata(_HEADERS)
        try:
            _, _, stored = self.reader.span()
            seen, recent = self.reader.seen_and_recent(60.0)
            connected, unavailable = self._node_states()
        except (OverBudget, StoreFailed) as err:
            self._refuse(context, err)
        response = observer_pb2.ServerStatusResponse(
            num_flows=stored, max_flows=stored, seen_flows=max(seen, stored),
            uptime_ns=time.time_ns() - self.started_ns, version=f"flowlog {__version__} (history)",
            flows_rate=recent / 60.0, unavailable_nodes=unavailable)
        response.num_connected_nodes.value = len(connected)
        response.num_unavailable_nodes.value = len(unavailable)
        return response

    def _node_states(self) -> tuple[list[str], list[str]]:
        cutoff = time.time_ns() - int(self.serve.node_recent_s * 1e9)
        connected, unavailable = [], []
        for node, _, newest in self.reader.nodes():
            (connected if newest >= cutoff else unavailable).append(node)
        return connected, unavailable

    @_counted
    def GetNodes(self, request, context):
        context.send_initial_metadata(_HEADERS)
        try:
            rows = self.reader.nodes()
        except (OverBudget, StoreFailed) as err:
            self._refuse(context, err)
        cutoff = time.time_ns() - int(self.serve.node_recent_s * 1e9)
        nodes = [observer_pb2.Node(
            name=node, version=SERVER_VERSION, address="", num_flows=count, max_flows=count, seen_flows=count,
            uptime_ns=time.time_ns() - self.started_ns,
            state=relay_pb2.NODE_CONNECTED if newest >= cutoff else relay_pb2.NODE_UNAVAILABLE,
            tls=observer_pb2.TLS(enabled=self.tls)) for node, count, newest in rows]
        return observer_pb2.GetNodesResponse(nodes=nodes)

    @_counted
    def GetNamespaces(self, request, context):
        context.send_initial_metadata(_HEADERS)
        try:
            names = self.reader.namespaces()
        except (OverBudget, StoreFailed) as err:
            self._refuse(context, err)
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(namespace=name) for name in names])

    @_counted
    def GetAgentEvents(self, request, context):
        context.send_initial_metadata(_HEADERS)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the history server keeps no agent events: ask Hubble Relay")

    @_counted
    def GetDebugEvents(self, request, context):
        context.send_initial_metadata(_HEADERS)
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the history server keeps no debug events: ask Hubble Relay")


class HistoryServer:
    """The gRPC server: observer.Observer and health, on serve.listen."""

    def __init__(self, reader: HistoryReader, serve: ServeConfig, database: str):
        self.reader = reader
        self.serve = serve
        tls = bool(serve.tls.cert_file)
        # A thread per call: GetFlows streams up to serve.max_streams (counted by the
        # servicer), and threads to spare for health checks, status and refusals.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=serve.max_streams + _SPARE_THREADS,
                                                             thread_name_prefix="history"))
        observer_pb2_grpc.add_ObserverServicer_to_server(HistoryObserver(reader, serve, database, tls), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:  # grpcio returns 0, or (since 1.5x) raises RuntimeError("Failed to bind ...")
            if tls:
                self.port = self.server.add_secure_port(serve.listen, _credentials(serve))
            else:
                self.port = self.server.add_insecure_port(serve.listen)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            why = (": the address is in use or not this host's, or serve.tls.cert_file and key_file are no PEM "
                   "certificate and its key" if tls else ": the address is in use or not this host's")
            raise OSError(f"serve.listen: cannot listen on {serve.listen}{why}")
        self.store_answers = False
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_store, name="history-health", daemon=True)

    @property
    def address(self) -> str:
        host = self.serve.listen.rpartition(":")[0] or "0.0.0.0"
        return f"{host}:{self.port}"

    def start(self) -> "HistoryServer":
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._check_store()
        self.server.start()
        self._watch.start()
        return self

    def _check_store(self) -> None:
        try:
            self.reader.span()
            status = health_pb2.HealthCheckResponse.SERVING
        except (OverBudget, StoreFailed) as err:
            log.warning("history server: the store does not answer: %s", err)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        self.store_answers = status == health_pb2.HealthCheckResponse.SERVING
        STORE_UP.set(int(self.store_answers))
        self.health.set(HEALTH_SERVICE, status)

    def _watch_store(self) -> None:
        while not self._stop.wait(10.0):
            self._check_store()

    def stop(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(0)


def _credentials(serve: ServeConfig) -> grpc.ServerCredentials:
    def read(path: str, what: str) -> bytes:
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as err:
            raise OSError(f"serve.tls.{what}: cannot read {path}: {err.strerror}") from None
    if not serve.tls.key_file:
        raise OSError("serve.tls.key_file: a certificate needs its key")
    pair = [(read(serve.tls.key_file, "key_file"), read(serve.tls.cert_file, "cert_file"))]
    if serve.tls.ca_file:
        return grpc.ssl_server_credentials(pair, root_certificates=read(serve.tls.ca_file, "ca_file"),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)
