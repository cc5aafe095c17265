"""The HTTP endpoint of `flowlog run` and of `flowlog serve`: `/metrics` (Prometheus text,
or OpenMetrics when the scraper asks), `/healthz` (the process is alive) and `/readyz`
(the checks each command passes: for `run` connected to Hubble, the store answering,
the schema migrated; for `serve` the store answering), on one port.

Unlike prometheus_client's WSGI app, every path but those two answers the metrics, to
any method, with no `name[]` filter: Prometheus asks for the whole page."""

from __future__ import annotations

import gzip
import re
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder, gzip_accepted

_EOF = b"# EOF\n"
_ESCAPING = re.compile(r";\s*escaping=[^;,]*")


def metrics_page(registries: Iterable, pages: Iterable[Callable[[bool], bytes]], accept: str | None,
                 accept_encoding: str | None) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of one scrape: the registries' metrics in the format the scraper
    accepts, then each page that writes its own exposition text (the L7 metrics),
    gzipped when the scraper accepts it, as Prometheus does."""
    # The scraper's name-escaping scheme is not followed: every name here is a legacy
    # Prometheus name, which underscores escaping (declared in the answer's content type
    # where its version has one) leaves as it is, while the L7 page is written only so.
    encode, content_type = choose_encoder(_ESCAPING.sub("", accept or ""))
    openmetrics = content_type.startswith("application/openmetrics-text")
    # OpenMetrics ends with one `# EOF`, after every family.
    parts = [encode(registry).removesuffix(_EOF) if openmetrics else encode(registry) for registry in registries]
    parts += [page(openmetrics) for page in pages]
    body = b"".join(parts) + (_EOF if openmetrics else b"")
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding):
        # Level 1, not gzip's default 9: on a page at the series cap 2 against 9 ms of CPU,
        # for 22 against 18 kB sent (bench/scrape.py). The CPU is the node's.
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    return headers, body


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # scrapes every few seconds are not news
        pass


class EndpointError(RuntimeError):
    """The endpoint cannot listen where it is told to; the message names the address."""


class Endpoint:
    """Serves in a daemon thread; `checks` maps a readiness condition's name to a callable;
    `pages` write exposition text of their own after the registries' metrics; `key` is the
    config key of the address, for the message when it cannot listen."""

    def __init__(self, address: str, checks: dict[str, callable], pages: Iterable[Callable[[bool], bytes]] = (),
                 registries: Iterable = (REGISTRY,), key: str = "metrics.address"):
        host, _, port = address.rpartition(":")
        self.checks = checks
        self.pages = tuple(pages)
        self.registries = tuple(registries)
        try:
            self.server = make_server(host or "0.0.0.0", int(port), self._app, _Server, handler_class=_QuietHandler)
        except OSError as err:
            raise EndpointError(f"{key} {address}: {err.strerror or err}") from None
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
        headers, body = metrics_page(self.registries, self.pages, environ.get("HTTP_ACCEPT"),
                                     environ.get("HTTP_ACCEPT_ENCODING"))
        start_response("200 OK", headers)
        return [body]

    def start(self) -> "Endpoint":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
