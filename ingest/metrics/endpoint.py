"""The ingester's HTTP endpoint: `/metrics` (Prometheus text, or OpenMetrics when the
scraper asks), `/healthz` (the process is alive) and `/readyz` (connected to Hubble, the
store answering, the schema migrated), on one port."""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # scrapes every few seconds are not news
        pass


class EndpointError(RuntimeError):
    """The endpoint cannot listen where it is told to; the message names the address."""


class Endpoint:
    """Serves in a daemon thread; `checks` maps a readiness condition's name to a callable."""

    def __init__(self, address: str, checks: dict[str, callable], registry=REGISTRY):
        host, _, port = address.rpartition(":")
        self.checks = checks
        self._metrics = make_wsgi_app(registry)
        try:
            self.server = make_server(host or "0.0.0.0", int(port), self._app, _Server, handler_class=_QuietHandler)
        except OSError as err:
            raise EndpointError(f"metrics.address {address}: {err.strerror or err}") from None
        self.address = f"{host or '0.0.0.0'}:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-endpoint", daemon=True)

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            failing = [name for name, check in self.checks.items() if not check()]
            status = "503 Service Unavailable" if failing else "200 OK"
            start_response(status, [("Content-Type", "text/plain")])
            return [("not ready: " + ", ".join(failing) if failing else "ready").encode() + b"\n"]
        return self._metrics(environ, start_response)

    def start(self) -> "Endpoint":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
