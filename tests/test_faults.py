"""Nothing lost, nothing stored twice, under seeded schedules of faults.

Each schedule combines: the gRPC server dropping the stream at random points, store
calls failing before they are sent or after they landed (the ambiguous case), a
stretch of store outage, and the ingester process SIGKILLed (by itself just before or
after a store call, or from outside at a random moment) and started again. After it,
the stored flow ids are exactly the ids the server sent, once each, and the ledger
balances. `bench/soak` runs the same schedules for any number of seeds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf import json_format

from ingest.api.observer import observer_pb2
from ingest.pipeline.checkpoint import Checkpoint
from ingest.decode.decoder import Decoder
from ingest.pipeline.records import FlowRows
from ingest.demo.observer import FlowBuffer, ObserverServer

from .helpers import DNS_330, HTTP_348, REPO, fixture_lines, responses_of

SCHEDULES = int(os.environ.get("FLOWLOG_FAULT_SCHEDULES", "30"))
MAX_RUNS = 4


def schedule_input(seed: int):
    """The fixture flows in time order, a random share of them, with injected lost-event reports."""
    rng = random.Random(seed)
    responses = sorted(responses_of(fixture_lines(HTTP_348) + fixture_lines(DNS_330)),
                       key=lambda r: (r.flow.time.seconds, r.flow.time.nanos))
    responses = responses[:rng.randint(150, len(responses))]
    lost_total = 0
    for _ in range(rng.randint(0, 2)):
        at = rng.randrange(len(responses))
        count = rng.randint(1, 500)
        lost_total += count
        lost = json_format.ParseDict({"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": str(count)},
                                      "node_name": "node-x"}, observer_pb2.GetFlowsResponse())
        lost.time.CopyFrom(responses[at].flow.time)
        responses.insert(at, lost)
    return responses, lost_total


def expected_ids(responses) -> dict[str, set[str]]:
    ids = {"audit": set(), "http_flows": set(), "dns_flows": set()}
    decoder = Decoder()
    for response in responses:
        rows = decoder.decode(response)
        if isinstance(rows, FlowRows):
            ids["audit"].add(rows.audit_id)
            ids[rows.table.name].add(str(uuid.UUID(rows.flow_id)))  # a UUID column reads back with dashes
    return ids


def done(state: Path, address: str, newest_ns: int, server) -> bool:
    checkpoint = Checkpoint(state, address)
    spool_empty = not list((state / "spool").glob("*.batch"))
    return server.service.caught_up() and checkpoint.time_ns >= newest_ns and spool_empty


def run_schedule(seed: int, tmp_path: Path) -> tuple[dict, list, int, list[str]]:
    rng = random.Random(f"{seed}:outside")
    responses, lost_total = schedule_input(seed)
    newest_ns = max(r.flow.time.seconds * 1_000_000_000 + r.flow.time.nanos for r in responses if r.HasField("flow"))
    drops = sorted(rng.sample(range(10, 400), rng.randint(0, 3)))
    state = tmp_path / "state"
    history = []
    with ObserverServer(FlowBuffer(responses), drop_after=[drops[0]] + [b - a for a, b in zip(drops, drops[1:])]
                        if drops else None) as server:
        for run in range(MAX_RUNS):
            last = run == MAX_RUNS - 1
            worker = subprocess.Popen(
                [sys.executable, "-m", "tests.fault_worker", server.address, str(state), str(seed), str(run),
                 "0" if last else "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            kill_at = time.monotonic() + rng.uniform(1.0, 3.0) if not last and rng.random() < 0.3 else None
            deadline = time.monotonic() + 60
            while worker.poll() is None and time.monotonic() < deadline:
                if done(state, server.address, newest_ns, server):
                    worker.send_signal(signal.SIGTERM)
                    break
                if kill_at is not None and time.monotonic() > kill_at:
                    worker.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.05)
            out, err = worker.communicate(timeout=60)
            history.append(f"run {run}: exit {worker.returncode}")
            if worker.returncode == 0:
                return json.loads(out.strip().splitlines()[-1]), history, lost_total, expected_ids(responses)
            assert worker.returncode == -signal.SIGKILL, f"seed {seed} run {run} failed:\n{err[-3000:]}"
    raise AssertionError(f"seed {seed}: not done after {MAX_RUNS} runs: {history}")


@pytest.mark.parametrize("seed", range(SCHEDULES))
def test_fault_schedule_stores_every_flow_exactly_once(seed, tmp_path):
    stored, history, lost_total, expected = run_schedule(seed, tmp_path)
    context = f"seed {seed}: {history}"
    for table, key in (("audit_ids", "audit"), ("http_ids", "http_flows"), ("dns_ids", "dns_flows")):
        counts = Counter(stored[table])
        assert [i for i, n in counts.items() if n > 1] == [], f"duplicates in {table}, {context}"
        assert set(counts) == expected[key], f"{table} differs from what the server sent, {context}"
    assert sum(count for _, _, count in stored["gaps"]) == lost_total, context
    ledger = stored["ledger"]
    assert ledger["stored_audit"] == len(stored["audit_ids"]), context
    assert ledger["stored_http"] == len(stored["http_ids"]), context
    assert ledger["stored_dns"] == len(stored["dns_ids"]), context
    assert ledger["received"] - ledger["duplicates"] == ledger["stored_audit"], context
    assert ledger["lost"] == lost_total, context
