"""Shared fixtures: the real embedded ClickHouse engine, a Kubernetes API stand-in, and the
ingest-lag gauge put back. Helpers and the fixture files' paths are in helpers.py.

chdb serves one data directory per process, so the whole test process shares one
directory and each test gets a database of its own.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from ingest import config as config_mod
from ingest.store.connection import open_store

from .kube_api import FakeKubeAPI, Request


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def config(chdb_dir, tmp_path) -> config_mod.Config:
    return config_mod.load(env={}, overrides={
        "store.dsn": f"chdb://{chdb_dir}",
        "store.database": f"t_{uuid.uuid4().hex[:12]}",
        "state_dir": str(tmp_path / "state"),
        "batch.max_delay_ms": "100",
        "metrics.address": "",
    })


@pytest.fixture
def client(config):
    client = open_store(config)
    yield client
    client.command(f"DROP DATABASE IF EXISTS `{config.store.database}`")
    client.close()


@pytest.fixture
def newest_committed_restored():
    """The ingest-lag gauge follows the newest flow committed in this process; a test that
    stores a flow stamped ahead of the clock would leave it negative for the tests after it."""
    from ingest import metrics

    before = metrics._last["committed"]
    yield
    metrics._last["committed"] = before
    metrics.NEWEST_COMMITTED.set(before)


@pytest.fixture
def kube_api(tmp_path):
    api = FakeKubeAPI()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path)
            request = Request(self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                              self.headers.get("Content-Type"), body)
            api.requests.append(request)
            request.status, answer = api.serve(request)
            out = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(request.status)
            self.send_header("Content-Type", "application/json" if out.startswith(b"{") else "text/plain")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_PATCH = do_DELETE = _handle

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.kubeconfig_path = api.kubeconfig(tmp_path / "kubeconfig")
    yield api
    server.shutdown()
    server.server_close()
