"""Nothing lost, nothing stored twice, under seeded schedules of faults.

Each schedule combines: the gRPC server dropping the stream at random points, store
calls failing before they are sent or after they landed (the ambiguous case), a
stretch of store outage, and the ingester process SIGKILLed (by itself just before or
after a store call, or from outside at a random moment) and started again. Some serve
the flows as Relay delivers eight nodes whose clocks lag (out of time order); some
backfill part of them with `flowlog replay` first; between two runs the checkpoint may
be removed or damaged, or the ingester pointed at another address serving the same
flows. After it, the stored flow ids are exactly the ids the server sent, once each,
and the ledger balances. `bench/soak` runs the same schedules for any number of seeds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
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

from .helpers import DNS_330, HTTP_348, REPO, ArrivalOrderBuffer, fixture_lines, relay_merge, responses_of

# 12 keep the suite within 15 minutes on 2 cores (each takes 10 to 13 s); bench/soak.py runs more.
SCHEDULES = int(os.environ.get("FLOWLOG_FAULT_SCHEDULES", "12"))
DERIVED_SCHEDULES = int(os.environ.get("FLOWLOG_FAULT_SCHEDULES_DERIVED", "4"))
MAX_RUNS = 4


def schedule_input(seed: int):
    """A random share of the fixture flows, in time order as a node serves them or in the
    order Relay delivers them from eight nodes whose clocks lag (then it is a Relay
    schedule), with injected lost-event reports."""
    rng = random.Random(seed)
    lines = fixture_lines(HTTP_348) + fixture_lines(DNS_330)
    relay = rng.random() < 0.3
    if relay:
        responses = relay_merge(lines, [0, 0, 0, -300, -300, -2000, -2000, 0])
    else:
        responses = sorted(responses_of(lines), key=lambda r: (r.flow.time.seconds, r.flow.time.nanos))
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
    return responses, lost_total, relay


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
    try:  # read as it is: a Checkpoint would report the one cut short at every look
        checkpoint_ns = json.loads(Checkpoint(state, address).path.read_text())["time_ns"]
    except (OSError, ValueError, KeyError, TypeError):
        checkpoint_ns = 0
    spool_empty = not list((state / "spool").glob("*.batch"))
    return server.service.caught_up() and checkpoint_ns >= newest_ns and spool_empty


def backfill(responses, state: Path, share: float) -> str:
    """`flowlog replay` of the first share of the flows, as `hubble observe -o jsonpb` wrote them."""
    path = state.parent / "backfill.jsonl"
    flows = [r for r in responses if r.HasField("flow")]
    path.write_text("".join(json_format.MessageToJson(r, preserving_proto_field_name=True, indent=None) + "\n"
                            for r in flows[:int(len(flows) * share)]))
    done = subprocess.run([sys.executable, "-m", "ingest", "replay", str(path), "--state-dir", str(state),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return f"replayed {int(len(flows) * share)} flows first"


def between_runs(rng: random.Random, state: Path, servers: list, server):
    """What may happen to the state dir or the address between two runs; (server, history line)."""
    roll = rng.random()
    checkpoints = state / "checkpoints"
    if roll < 0.15:
        shutil.rmtree(checkpoints, ignore_errors=True)
        return server, "checkpoints removed"
    if roll < 0.25 and checkpoints.is_dir():
        for path in checkpoints.glob("*.json"):
            path.write_bytes(path.read_bytes()[:rng.randrange(1, 40)])
        return server, "checkpoint cut short"
    if roll < 0.4:
        other = servers[1] if server is servers[0] else servers[0]
        return other, f"now at {other.address}"
    return server, ""


def run_schedule(seed: int, tmp_path: Path, derive: str = "ingester") -> tuple[dict, list, int, list[str]]:
    rng = random.Random(f"{seed}:outside")
    responses, lost_total, relay = schedule_input(seed)
    newest_ns = max(r.flow.time.seconds * 1_000_000_000 + r.flow.time.nanos for r in responses if r.HasField("flow"))
    drops = sorted(rng.sample(range(10, 400), rng.randint(0, 3)))
    state = tmp_path / "state"
    history = []
    buffer = ArrivalOrderBuffer(responses) if relay else FlowBuffer(responses)
    if relay:
        history.append("Relay order")
    with (ObserverServer(buffer, drop_after=[drops[0]] + [b - a for a, b in zip(drops, drops[1:])]
                         if drops else None) as first, ObserverServer(buffer) as second):
        server = first
        if rng.random() < 0.25:
            history.append(backfill(responses, state, rng.uniform(0.1, 0.9)))
        for run in range(MAX_RUNS):
            last = run == MAX_RUNS - 1
            if run:
                server, happened = between_runs(rng, state, [first, second], server)
                if happened:
                    history.append(happened)
            worker = subprocess.Popen(
                [sys.executable, "-m", "tests.fault_worker", server.address, str(state), str(seed), str(run),
                 "0" if last else "1", derive], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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


# The same schedules with the columns derived in the store: the input table's insert,
# retried on its token alone, meets the same faults.
@pytest.mark.parametrize("seed, derive", [(seed, "ingester") for seed in range(SCHEDULES)]
                         + [(seed, "store") for seed in range(DERIVED_SCHEDULES)])
def test_fault_schedule_stores_every_flow_exactly_once(seed, derive, tmp_path):
    stored, history, lost_total, expected = run_schedule(seed, tmp_path, derive)
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
