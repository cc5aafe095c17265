"""Shared fixtures: the real embedded ClickHouse engine and real Hubble fixture files.

chdb serves one data directory per process, so the whole test process shares one
directory and each test gets a database of its own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from ingest import config as config_mod
from ingest.runner import open_store

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures" / "hubble"
HTTP_348 = FIXTURES / "basic-sample-348-http-flows.json"
DNS_330 = FIXTURES / "basic-sample-330-dns-flows.json"
ALL_FIXTURES = sorted(FIXTURES.glob("*.json"))


def fixture_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
