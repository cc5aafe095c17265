"""`flowlog run` as a real process: killed mid-stream and restarted, each flow is stored once;
stopped with SIGTERM, it flushes and exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from ingest.pipeline.checkpoint import Checkpoint
from ingest.demo.observer import FlowBuffer, ObserverServer

from .helpers import DNS_330, HTTP_348, REPO, fixture_lines, responses_of, store_sql as sql, wait_for


def start_ingester(address: str, tmp_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "run", "--source", address, "--store", f"chdb://{tmp_path / 'store'}",
         "--state-dir", str(tmp_path / "state"), "--metrics-address", "", "--log-level", "info",
         "--set", "batch.max_rows=40", "--set", "batch.max_delay_ms=50"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def checkpoint_ns(tmp_path, address: str) -> int:
    path = Checkpoint(tmp_path / "state", address).path
    try:
        return json.loads(path.read_text())["time_ns"]
    except (OSError, ValueError):
        return 0


def test_sigkill_mid_stream_then_restart_stores_each_flow_once(tmp_path):
    responses = sorted(responses_of(fixture_lines(HTTP_348) + fixture_lines(DNS_330)),
                       key=lambda r: (r.flow.time.seconds, r.flow.time.nanos))
    chunks = [responses[:250], responses[250:500], responses[500:]]
    buffer = FlowBuffer(chunks[0])
    with ObserverServer(buffer) as server:
        for chunk_index in range(len(chunks)):
            process = start_ingester(server.address, tmp_path)
            before = checkpoint_ns(tmp_path, server.address)
            wait_for(lambda: checkpoint_ns(tmp_path, server.address) > before, timeout=60,
                     what="a committed batch")
            if chunk_index + 1 < len(chunks):
                # More flows arrive while the ingester is busy; it dies in the middle of them.
                buffer.extend(chunks[chunk_index + 1])
                time.sleep(0.05 * (chunk_index + 1))
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
        newest = responses[-1].flow.time.seconds * 1_000_000_000 + responses[-1].flow.time.nanos
        wait_for(lambda: checkpoint_ns(tmp_path, server.address) >= newest, timeout=60, what="the last flow")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stderr.read().decode()
    assert sql(tmp_path, "SELECT count(), uniqExact(flow_id) FROM l7_audit") == ["678\t678"]
    assert sql(tmp_path, "SELECT count(), uniqExact(flow_id) FROM http_flows") == ["348\t348"]
    assert sql(tmp_path, "SELECT count(), uniqExact(flow_id) FROM dns_flows") == ["330\t330"]


def test_sigterm_during_a_busy_stream_flushes_and_exits_zero(tmp_path):
    responses = responses_of(fixture_lines(HTTP_348))
    with ObserverServer(FlowBuffer(responses)) as server:
        process = start_ingester(server.address, tmp_path)
        wait_for(lambda: server.service.sent > 0, timeout=60, what="streaming")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stderr.read().decode()
        stopped_in = time.monotonic() - started
    assert stopped_in < 10
    # Everything up to the checkpoint is stored: a restart resumes from there and loses nothing.
    resume_ns = checkpoint_ns(tmp_path, server.address)
    times = sorted(r.flow.time.seconds * 1_000_000_000 + r.flow.time.nanos for r in responses)
    stored = int(sql(tmp_path, "SELECT count() FROM http_flows")[0])
    assert stored > 0
    assert stored == sum(1 for t in times if t <= resume_ns)
    assert int(sql(tmp_path, "SELECT toUnixTimestamp64Nano(max(time)) FROM l7_audit")[0]) == resume_ns
