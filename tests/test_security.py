"""TLS and mTLS to Hubble Relay with real certificates; passwords never in any output."""

from __future__ import annotations

import http.server
import logging
import subprocess
import sys
import threading
import time

import grpc
import pytest

from ingest.demo.observer import FlowBuffer, ObserverServer
from ingest.runner import Ingester
from ingest.sources.hubble import SourceError

from .certs import CA, write
from .helpers import DNS_330, HTTP_348, REPO, assert_stored_equals_fixture, fixture_lines, responses_of, RunningIngester, wait_for

RELAY_NAME = "hubble-relay.flowlog.test"


@pytest.fixture
def pki(tmp_path):
    ca, other_ca = CA("flowlog test CA"), CA("someone else's CA")
    server_cert, server_key = ca.issue(RELAY_NAME, [RELAY_NAME], client=False)
    client_cert, client_key = ca.issue("flowlog", ["flowlog"], client=True)
    return write(tmp_path, ca=ca.pem, other_ca=other_ca.pem, server_cert=server_cert, server_key=server_key,
                 client_cert=client_cert, client_key=client_key)


def relay_credentials(pki) -> grpc.ServerCredentials:
    read = lambda name: open(pki[name], "rb").read()  # noqa: E731
    return grpc.ssl_server_credentials([(read("server_key"), read("server_cert"))],
                                       root_certificates=read("ca"), require_client_auth=True)


def use_tls(config, pki, address, ca="ca", client_cert=True):
    config.source.address = address
    config.source.tls.enabled = True
    config.source.tls.ca_file = pki[ca]
    config.source.tls.server_name = RELAY_NAME
    if client_cert:
        config.source.tls.cert_file, config.source.tls.key_file = pki["client_cert"], pki["client_key"]


def test_mtls_to_relay_stores_the_flows(config, client, pki):
    lines = fixture_lines(DNS_330)
    with ObserverServer(FlowBuffer(responses_of(lines)), server_credentials=relay_credentials(pki)) as server:
        use_tls(config, pki, server.address)
        with RunningIngester(config, client) as ingester:
            service = server.service
            wait_for(lambda: service.caught_up() and ingester.writer.committed_ns >= service.newest_sent_ns)
    assert_stored_equals_fixture(client, config, lines)


@pytest.mark.parametrize("ca, client_cert, reason", [
    ("other_ca", True, "CERTIFICATE_VERIFY_FAILED"),
    ("ca", False, "set source.tls.cert_file and source.tls.key_file"),
])
def test_wrong_ca_or_missing_client_cert_fails_with_a_clear_error(config, client, pki, caplog, ca, client_cert,
                                                                  reason):
    with ObserverServer(FlowBuffer(responses_of(fixture_lines(DNS_330))),
                        server_credentials=relay_credentials(pki)) as server:
        use_tls(config, pki, server.address, ca, client_cert)
        with caplog.at_level(logging.WARNING, logger="ingest.sources.hubble"):
            with RunningIngester(config, client) as ingester:
                wait_for(lambda: any(reason in r.getMessage() for r in caplog.records), timeout=20,
                         what=f"a log line naming {reason}")
                assert not ingester.source.connected.is_set()
        assert server.service.sent == 0
    message = next(r.getMessage() for r in caplog.records if reason in r.getMessage())
    assert server.address in message


def test_unreadable_tls_file_stops_the_start_naming_the_key(config, client, pki):
    config.source.tls.enabled = True
    config.source.tls.ca_file = "/nonexistent/ca.pem"
    with pytest.raises(SourceError, match="source.tls.ca_file: cannot read /nonexistent/ca.pem"):
        Ingester(config, client)


class LeakyClickHouse(http.server.BaseHTTPRequestHandler):
    """Answers every request with an error that quotes the password it was sent."""

    def do_POST(self):
        import base64
        credentials = self.headers.get("Authorization", "")
        decoded = base64.b64decode(credentials.split()[-1]).decode() if credentials else ""
        body = f"Code: 516. DB::Exception: {decoded}: Authentication failed. (AUTHENTICATION_FAILED)".encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


def test_the_password_appears_in_no_output(tmp_path):
    password = "pw-Zq8uX3vL-known"
    (tmp_path / "password").write_text(password + "\n")
    leaky = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LeakyClickHouse)
    threading.Thread(target=leaky.serve_forever, daemon=True).start()
    env_password = {"FLOWLOG_STORE_PASSWORD": password}
    outputs = []

    def flowlog(*args, env=None):
        result = subprocess.run([sys.executable, "-m", "ingest", *args, "--log-level", "debug"],
                                capture_output=True, text=True, cwd=REPO, timeout=120,
                                env={**__import__("os").environ, **(env or {})})
        outputs.append(result.stdout + result.stderr)
        return result

    store = f"http://ingest:{password}@127.0.0.1:{leaky.server_port}"
    failed = flowlog("migrate", "--store", store, "--state-dir", str(tmp_path))
    assert failed.returncode == 1 and "cannot reach store http://ingest:*****@127.0.0.1" in failed.stderr
    failed = flowlog("migrate", "--store", f"http://ingest@127.0.0.1:{leaky.server_port}",
                     "--set", f"store.password_file={tmp_path / 'password'}", "--state-dir", str(tmp_path))
    assert failed.returncode == 1 and "Authentication failed" in failed.stderr
    shown = flowlog("config", "show", "--store", store, env=env_password)
    assert shown.returncode == 0
    # A whole run on the embedded store, with the password configured and debug logging.
    with ObserverServer(FlowBuffer(responses_of(fixture_lines(HTTP_348)))) as server:
        run = subprocess.Popen([sys.executable, "-m", "ingest", "run", "--source", server.address,
                                "--state-dir", str(tmp_path / "run"), "--metrics-address", "",
                                "--log-level", "debug"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**__import__("os").environ, **env_password})
        wait_for(lambda: server.service.caught_up(), timeout=60, what="the run to stream")
        time.sleep(1.5)
        run.terminate()
        outputs.append(run.communicate(timeout=30)[0])
        assert run.returncode == 0
    leaky.shutdown()
    everything = "\n".join(outputs)
    assert "streaming L7 flows" in everything
    assert password not in everything
