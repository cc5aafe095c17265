"""`flowlog serve`: the history server until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading

from ..metrics.endpoint import Endpoint, EndpointError
from ..metrics.history import HISTORY, SERVER_PROCESS
from ..store.connection import connect
from .reader import HistoryReader
from .server import HistoryServer

log = logging.getLogger("flowlog")


def add_serve_parser(subparsers, common):
    parser = subparsers.add_parser(
        "serve", help="serve Hubble's observer API over the stored flows (hubble observe, Hubble UI)",
        description="Serve observer.Observer (GetFlows, ServerStatus, GetNodes, GetNamespaces) and gRPC health "
                    "over the stored history, for `hubble observe --server HOST:4245` and Hubble UI.")
    common(parser)
    parser.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default 0.0.0.0:4245)")
    parser.add_argument("--tls-cert-file", dest="serve_tls_cert_file", metavar="FILE", help="serve TLS with this "
                        "certificate")
    parser.add_argument("--tls-key-file", dest="serve_tls_key_file", metavar="FILE", help="its key")
    parser.add_argument("--tls-client-ca-file", dest="serve_tls_ca_file", metavar="FILE",
                        help="require client certificates signed by this CA (mTLS)")
    return parser


def serve_overrides(args) -> dict:
    flags = {"serve.listen": "listen", "serve.tls.cert_file": "serve_tls_cert_file",
             "serve.tls.key_file": "serve_tls_key_file", "serve.tls.ca_file": "serve_tls_ca_file"}
    return {key: getattr(args, attr) for key, attr in flags.items() if getattr(args, attr, None) is not None}


def start_server(config) -> HistoryServer:
    """The history server over the configured store, started."""
    # A reader: it needs only SELECT on the database (README, Security), and leaves the
    # schema to `flowlog run` and `flowlog migrate`.
    if config.store_dsn.startswith("chdb:"):
        # The embedded store is here or not: say so now (a server's may come back later,
        # and health says NOT_SERVING meanwhile).
        connect(config, create=False, read_only=True).close()
    reader = HistoryReader(lambda: connect(config, create=False, read_only=True), config.store.database,
                           config.serve, config.masker())
    server = HistoryServer(reader, config.serve, config.store.database).start()
    log.info("serving Hubble's observer API over %s on %s%s", config.store.database, server.address,
             " (TLS)" if config.serve.tls.cert_file else "")
    return server


def run_serve(config, stop: threading.Event | None = None) -> int:
    """Serves until stop is set (SIGTERM and SIGINT set it when run from the main thread;
    their handlers before are put back at the end), with /metrics, /healthz and /readyz
    on serve.metrics_address unless it is empty."""
    stop = stop or threading.Event()
    server = start_server(config)
    endpoint = None
    if config.serve.metrics_address:
        try:
            endpoint = Endpoint(config.serve.metrics_address, {"store": lambda: server.store_answers},
                                registries=(HISTORY, SERVER_PROCESS), key="serve.metrics_address").start()
        except EndpointError:
            server.stop(0)
            raise
        log.info("history server's metrics, /healthz and /readyz on http://%s", endpoint.address)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
        log.info("stopping the history server")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if endpoint is not None:
            endpoint.stop()
        server.stop()
    return 0
