"""One config object from file, environment and flags; bad keys and types named."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ingest.config import ConfigError, dump_yaml, load

from .helpers import REPO


def test_precedence_file_then_env_then_flags(tmp_path):
    path = tmp_path / "flowlog.yaml"
    path.write_text("source:\n  address: relay:4245\n  namespaces: [default]\nbatch:\n  max_rows: 5000\n")
    config = load(str(path), env={"FLOWLOG_BATCH_MAX_ROWS": "7000", "FLOWLOG_STORE": "http://ch:8123"},
                  overrides={"source.address": "unix:///tmp/hubble.sock"})
    assert config.source.address == "unix:///tmp/hubble.sock"
    assert config.source.namespaces == ["default"]
    assert config.batch.max_rows == 7000
    assert config.store.dsn == "http://ch:8123"


@pytest.mark.parametrize("text, message", [
    ("sorce:\n  address: x\n", "unknown key sorce"),
    ("source:\n  adress: x\n", "unknown key source.adress"),
    ("batch:\n  max_rows: many\n", "batch.max_rows: expected an integer"),
    ("source:\n  tls:\n    enabled: 3\n", "source.tls.enabled: expected true or false"),
    ("source:\n  namespaces: default\n", "source.namespaces: expected a list"),
    ("store:\n  database: \"x; DROP\"\n", "store.database"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_bad_keys_and_types_are_refused_by_name(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(str(path), env={})


def test_env_values_are_typed_and_named_when_wrong():
    assert load(env={"FLOWLOG_SOURCE_VERDICTS": "FORWARDED,DROPPED"}).source.verdicts == ["FORWARDED", "DROPPED"]
    with pytest.raises(ConfigError, match="batch.max_delay_ms"):
        load(env={"FLOWLOG_BATCH_MAX_DELAY_MS": "soon"})


def test_config_show_masks_secrets(tmp_path):
    env = {"FLOWLOG_STORE_DSN": "https://ingest:hunter2@ch.example:8443", "FLOWLOG_STORE_PASSWORD": "s3cret-pw"}
    shown = dump_yaml(load(env=env))
    assert "hunter2" not in shown and "s3cret-pw" not in shown
    data = yaml.safe_load(shown)
    assert data["store"]["dsn"] == "https://ingest:*****@ch.example:8443"
    assert data["store"]["password"] == "*****"


def test_config_show_cli_and_unknown_key_exit_code(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("store:\n  ttl_dayz: 3\n")
    result = subprocess.run([sys.executable, "-m", "ingest", "config", "show", "--config", str(path)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith("flowlog: error: unknown key store.ttl_dayz (known: ") and "ttl_days" in message
    ok = subprocess.run([sys.executable, "-m", "ingest", "config", "show", "--set", "batch.max_rows=123"],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["batch"]["max_rows"] == 123


@pytest.mark.parametrize("settings", [{"serve.tls.ca_file": "/ca.pem"}, {"serve.tls.key_file": "/key.pem"},
                                      {"serve.tls.enabled": "true"}, {"serve.tls.cert_file": "/cert.pem"}])
def test_serve_tls_without_a_certificate_and_its_key_is_refused_not_served_in_plaintext(settings):
    with pytest.raises(ConfigError, match=r"serving TLS needs serve.tls.cert_file and serve.tls.key_file"):
        load(env={}, overrides=settings)
    assert load(env={}, overrides={"serve.tls.cert_file": "/c", "serve.tls.key_file": "/k",
                                   "serve.tls.ca_file": "/ca"}).serve.tls.ca_file == "/ca"


def test_an_unknown_log_level_is_a_configuration_error():
    with pytest.raises(ConfigError, match=r"log.level: expected debug, info, warning or error, got 'verbose'"):
        load(env={}, overrides={"log.level": "verbose"})


@pytest.mark.parametrize("dsn, message", [("https://", "no host"), ("http://user@:8123", "no host"),
                                          ("http://host:notaport", "the port is not a number"),
                                          ("clickhouse://host:9000", "9000 is ClickHouse's native protocol port")])
def test_a_server_dsn_without_a_host_or_port_is_refused_not_sent_to_localhost(dsn, message):
    with pytest.raises(ConfigError, match=f"store.dsn: .*: {message}"):
        load(env={}, overrides={"store.dsn": dsn})


def test_source_filters_are_for_a_hubble_source_and_name_real_verdicts():
    with pytest.raises(ConfigError, match=r"source.verdicts: BOGUS: no such verdict \(Hubble's are VERDICT_UNKNOWN, "
                                          r"FORWARDED, DROPPED"):
        load(env={}, overrides={"source.verdicts": "BOGUS"})
    with pytest.raises(ConfigError, match=r"source.namespaces, source.verdicts: Hubble's server applies them .* "
                                          r"\(hubble-export-allowlist"):
        load(env={}, overrides={"source.address": "file:///var/run/cilium/hubble/events.log",
                                "source.namespaces": "shop"})
    assert load(env={}, overrides={"source.verdicts": "dropped"}).source.verdicts == ["dropped"]


def test_a_password_with_a_raw_hash_or_slash_is_no_port_or_path():
    for dsn in ("http://default:Pa#ss9@host:8123", "http://default:Pa/ss9@host:8123/?secure=0"):
        assert load(env={}, overrides={"store.dsn": dsn}).store.dsn == dsn
