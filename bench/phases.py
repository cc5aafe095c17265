"""The benchmark's measurements, one function each, in the order bench/run.py calls them.

Each returns a plain dict (it goes into the results JSON as it is). Processes are
started here and always stopped here, whatever happens.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import pyspy, receive_floor
from .flowfiles import FlowFiles
from .ingester import LAST_INSERT, NEWEST, Ingester
from .loadgen import LoadGenerator

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
# An ingester that commits nothing new for this long is stuck; the phase fails.
STALL_S = 90.0


def _python_json(args: list[str], timeout: float) -> dict:
    """Runs `python -m ARGS` from the repository root; returns its last line as JSON."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _wait_for_call(lg: LoadGenerator, ingester: Ingester, timeout: float = 180.0) -> dict:
    """The ingester's GetFlows call (it has started, migrated, connected)."""
    deadline = time.monotonic() + timeout
    while True:
        ingester.check_alive()
        try:
            return lg.wait_for("call", timeout=1.0)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"flowlog run did not call GetFlows within {timeout} s:\n{ingester.log_tail()}")


def _wait_committed(ingester: Ingester, samples: dict, newest_ns: int, timeout: float = 10.0) -> dict:
    """The metrics once the batch holding the newest flow is committed. Rows are counted as
    each table's insert returns; the commit time and the newest committed flow are set
    after the batch's last insert, so a read can catch the counts ahead of them."""
    deadline = time.monotonic() + timeout
    while samples.get(NEWEST, 0.0) * 1e9 + 1000 < newest_ns and time.monotonic() < deadline:
        time.sleep(0.01)
        samples = ingester.scrape()
    return samples


# --- 1. the raw receive limit ---

def limit(files: FlowFiles, runs: int, log, floor: Path | None = None) -> dict:
    """The Python client's median of `runs`; with `floor` (bench.receive_floor's binary),
    the compiled client's runs too, each right after the Python one, on the same server."""
    results, compiled = [], []
    with LoadGenerator(files.stream, end=True) as lg:
        for run in range(runs):
            result = _python_json(["bench.limit", lg.address, str(files.flows)], timeout=600)
            sent = lg.wait_for("sent", timeout=60)
            result["loadgen_cpu_s"] = round(sent["cpu_s"], 3)
            result["client_busy"] = round(result["cpu_s"] / result["seconds"], 2)
            result["loadgen_busy"] = round(sent["cpu_s"] / result["seconds"], 2)
            log(f"  limit run {run + 1}/{runs}: {result['messages_per_s']:,.0f} messages/s "
                f"({result['mb_per_s']} MB/s; client busy {result['client_busy']:.0%}, "
                f"load generator busy {result['loadgen_busy']:.0%})")
            results.append(result)
            if floor is not None:
                try:
                    compiled.append(receive_floor.receive(floor, lg.address, files.flows, timeout=600))
                except receive_floor.FloorError as err:
                    log(f"    compiled client: not measured: {err}")
                    floor = None
                    continue
                lg.wait_for("sent", timeout=60)
                log(f"    compiled client: {compiled[-1]['messages_per_s']:,.0f} messages/s, "
                    f"{compiled[-1]['us_per_message']} µs of CPU a message")
    rates = [r["messages_per_s"] for r in results]
    median = statistics.median(rates)
    middle = min(results, key=lambda r: abs(r["messages_per_s"] - median))
    summary = {"messages_per_s": median, "min": min(rates), "max": max(rates),
               "spread": f"{min(rates):,.0f} - {max(rates):,.0f}", "mb_per_s": middle["mb_per_s"],
               "us_per_message": round(1e6 * middle["cpu_s"] / middle["messages"], 1),
               "client_busy": middle["client_busy"], "loadgen_busy": middle["loadgen_busy"], "runs": results}
    if compiled:
        summary["compiled"] = _compiled_summary(compiled)
    return summary


def _compiled_summary(runs: list[dict]) -> dict:
    """The compiled client's median run, its CPU a message split into user and system."""
    middle = sorted(runs, key=lambda r: r["messages_per_s"])[len(runs) // 2]
    return {"grpc_version": receive_floor.library_version() or "", "messages_per_s": middle["messages_per_s"],
            "us_per_message": middle["us_per_message"],
            "user_us_per_message": round(1e6 * middle["user_s"] / middle["messages"], 1),
            "system_us_per_message": round(1e6 * middle["system_s"] / middle["messages"], 1),
            "runs": runs}


def receive_at(files: FlowFiles, rate: float, seconds: float, floor: Path | None = None) -> dict:
    """The raw receive (bench.limit) at a fixed offered load: what gRPC alone costs a
    process per message at that rate (far more a message at low rates, where every
    message wakes the receiving threads on its own); with `floor`, the compiled client's
    at the same load, from a load generator of its own."""
    count = min(files.flows, int(rate * seconds))
    with LoadGenerator(files.stream, end=True, rate=rate, count=count) as lg:
        result = _python_json(["bench.limit", lg.address, str(count)], timeout=seconds * 3 + 120)
    measured = {"rate": rate, "messages": count, "cpu_s": result["cpu_s"],
                "cores_busy": round(result["cpu_s"] / result["seconds"], 3),
                "us_per_message": round(1e6 * result["cpu_s"] / count, 1), "peak_rss_mb": result["max_rss_mb"]}
    if floor is not None:
        try:
            with LoadGenerator(files.stream, end=True, rate=rate, count=count) as lg:
                compiled = receive_floor.receive(floor, lg.address, count, timeout=seconds * 3 + 120)
        except receive_floor.FloorError as err:
            measured["compiled"] = {"error": str(err)}
        else:
            measured["compiled"] = _compiled_summary([compiled])
            measured["compiled"]["cores_busy"] = round(compiled["cpu_s"] / compiled["seconds"], 3)
    return measured


# --- 2. end to end, and (with profile_s) where the time goes ---

def end_to_end(files: FlowFiles, workdir: Path, overrides: list[str], poll_s: float, log,
               profile_s: float = 0.0, profile_gil: bool = False, store: Path | None = None,
               store_dsn: str | None = None, python: str = sys.executable) -> dict:
    """With store, a store that holds the flows already: every flow is looked up, found
    and dropped (a restart that lost its state dir), and counts as done when dropped.
    With store_dsn, the store is a server in another process (its CPU is not counted)."""
    workdir.mkdir(parents=True, exist_ok=True)
    lg = LoadGenerator(files.stream, gate=True)
    ingester = Ingester(lg.address, workdir, overrides, store, store_dsn, python)
    spy = None
    try:
        _wait_for_call(lg, ingester)
        cpu_before = ingester.cpu_seconds()
        lg_cpu_before = lg.cpu_seconds()
        rss_at_start = ingester.rss_mb()
        lg.go()
        first_sent = int(lg.wait_for("started", timeout=30)["t_ns"]) / 1e9
        if profile_s:
            spy_output = workdir / "pyspy.raw"
            spy = pyspy.record(ingester.pid, profile_s, spy_output, gil=profile_gil)
        first_commit = None
        rows = 0
        progress_at = time.monotonic()
        rss_max_sampled = anon_max_sampled = 0.0
        while True:
            time.sleep(poll_s)
            ingester.check_alive()
            samples = ingester.scrape()
            now = time.time()
            rss_max_sampled = max(rss_max_sampled, ingester.rss_mb())
            anon_max_sampled = max(anon_max_sampled, ingester.anon_rss_mb())
            current = ingester.rows(samples, "l7_audit") + ingester.dropped(samples, "l7_audit")
            if current and first_commit is None:
                first_commit = samples.get(LAST_INSERT) or now
            if current > rows:
                rows, progress_at = current, time.monotonic()
            if rows >= files.flows:
                samples = _wait_committed(ingester, samples, files.newest_ns)
                break
            if time.monotonic() - progress_at > STALL_S:
                raise RuntimeError(f"end to end: stuck at {rows:,} of {files.flows:,} rows:\n{ingester.log_tail()}")
        last_commit = samples.get(LAST_INSERT) or now
        cpu = ingester.cpu_seconds() - cpu_before
        lg_cpu = lg.cpu_seconds() - lg_cpu_before
        peak_rss = ingester.peak_rss_mb()
        sent = lg.event("sent")
        spy_summary = None
        if spy is not None:
            spy.wait(timeout=profile_s + 30)
            spy_summary = pyspy.summarise(spy_output) if spy_output.exists() else {"error": spy.stderr.read()[-500:]}
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        exit_code = ingester.stop()
        lg.close()
    seconds = last_commit - first_sent
    result = {
        "flows": files.flows, "seconds": round(seconds, 3), "flows_per_s": round(files.flows / seconds, 1),
        "first_commit_after_s": round(first_commit - first_sent, 3),
        "loadgen_done_after_s": round(int(sent["last_ns"]) / 1e9 - first_sent, 3) if sent else None,
        "cpu_s": round(cpu, 2), "cpu_s_per_1000_flows": round(1000 * cpu / files.flows, 4),
        "cores_busy": round(cpu / seconds, 2), "loadgen_cpu_s": round(lg_cpu, 2),
        "peak_rss_mb": round(peak_rss, 1), "rss_at_start_mb": round(rss_at_start, 1),
        "rss_max_sampled_mb": round(rss_max_sampled, 1), "anon_rss_max_sampled_mb": round(anon_max_sampled, 1),
        "rows": {t: ingester.rows(samples, t) for t in ("http_flows", "dns_flows", "l7_audit", "ingest_gaps")},
        "dropped": {t: ingester.dropped(samples, t) for t in ("http_flows", "dns_flows", "l7_audit")},
        "exit_code": exit_code, "shutdown_s": ingester.shutdown_s, "store": str(ingester.store),
        "log": str(ingester.log_path), "command": " ".join(ingester.command),
    }
    if spy_summary is not None:
        result["profile"] = spy_summary
    return result


def outage(files: FlowFiles, workdir: Path, overrides: list[str], store, seconds: float, poll_s: float,
           log, python: str = sys.executable) -> dict:
    """The most memory the ingester holds: the stream offered flat out while the store
    answers nothing (its process stopped, SIGSTOP) for seconds, then the store back
    (SIGCONT) until every flow is committed. store is a running bench.store_server."""
    workdir.mkdir(parents=True, exist_ok=True)
    lg = LoadGenerator(files.stream, gate=True)
    ingester = Ingester(lg.address, workdir, overrides, store_dsn=store.dsn, python=python)
    stopped = False
    try:
        _wait_for_call(lg, ingester)
        os.kill(store.process.pid, signal.SIGSTOP)
        stopped = True
        lg.go()
        rss_max = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            ingester.check_alive()
            rss_max = max(rss_max, ingester.rss_mb())
        peak_during = ingester.peak_rss_mb()
        os.kill(store.process.pid, signal.SIGCONT)
        stopped = False
        progress_at, rows = time.monotonic(), 0
        while rows < files.flows:
            time.sleep(poll_s)
            ingester.check_alive()
            current = ingester.rows(ingester.scrape(), "l7_audit")
            if current > rows:
                rows, progress_at = current, time.monotonic()
            if time.monotonic() - progress_at > STALL_S:
                raise RuntimeError(f"outage: stuck at {rows:,} of {files.flows:,} rows:\n{ingester.log_tail()}")
        peak_after = ingester.peak_rss_mb()
    finally:
        if stopped:
            os.kill(store.process.pid, signal.SIGCONT)
        ingester.stop()
        lg.close()
    return {"outage_s": seconds, "peak_rss_mb_during": round(peak_during, 1),
            "rss_max_sampled_mb": round(rss_max, 1), "peak_rss_mb": round(peak_after, 1), "rows": rows}


# --- 3. ingest lag at a fixed load ---

def lag(files: FlowFiles, workdir: Path, overrides: list[str], rate: float, seconds: float, poll_s: float,
        log, store_dsn: str | None = None, python: str = sys.executable) -> dict:
    count = min(files.flows, int(rate * seconds))
    workdir.mkdir(parents=True, exist_ok=True)
    times_path = workdir / "send-times.bin"
    lg = LoadGenerator(files.stream, gate=True, rate=rate, count=count, times_out=times_path)
    ingester = Ingester(lg.address, workdir, overrides, store_dsn=store_dsn, python=python)
    committed: list[tuple[float, float]] = []  # (newest committed flow time, wall time of that commit)
    durable: list[tuple[int, float]] = []  # (checkpoint time_ns, wall time it was seen)
    try:
        _wait_for_call(lg, ingester)
        cpu_before = ingester.cpu_seconds()
        lg.go()
        first_sent = int(lg.wait_for("started", timeout=30)["t_ns"]) / 1e9
        deadline = first_sent + count / rate + 30
        # Far behind, the sender is held back by flow control and writes the send times only
        # once it is done: the polling goes on until then, however long it takes.
        latest = deadline + STALL_S + count / rate
        rows = 0
        while time.time() < deadline or (lg.event("sent") is None and time.time() < latest):
            time.sleep(poll_s)
            ingester.check_alive()
            samples = ingester.scrape()
            now = time.time()
            newest = samples.get(NEWEST, 0.0)
            if newest and (not committed or newest > committed[-1][0]):
                committed.append((newest, samples.get(LAST_INSERT) or now))
            checkpoint = ingester.checkpoint_ns()
            if checkpoint and (not durable or checkpoint > durable[-1][0]):
                durable.append((checkpoint, now))
            rows = ingester.rows(samples, "l7_audit")
            if rows >= count:
                lg.wait_for("sent", timeout=30)
                samples = _wait_committed(ingester, samples, _read_times(times_path, count)[-1])
                newest = samples.get(NEWEST, 0.0)
                if newest and (not committed or newest > committed[-1][0]):
                    committed.append((newest, samples.get(LAST_INSERT) or time.time()))
                break
        if lg.event("sent") is None:
            lg.wait_for("sent", timeout=30)
        end_wall = time.time()  # flows not committed by now count as committed now (a lower bound)
        elapsed = end_wall - first_sent
        cpu = ingester.cpu_seconds() - cpu_before
        peak_rss = ingester.peak_rss_mb()
        sent = lg.event("sent")
    finally:
        ingester.stop()
        lg.close()
    send_ns = _read_times(times_path, count)
    lags, unseen = _lags(send_ns, [(n * 1e9, w) for n, w in committed], end_wall, tolerance_ns=1000)
    durable_lags, _ = _lags(send_ns, [(float(n), w) for n, w in durable], end_wall, tolerance_ns=0)
    intervals = [b[1] - a[1] for a, b in itertools.pairwise(committed)]
    return {
        "rate": rate, "seconds": seconds, "flows": count, "committed": rows, "complete": rows >= count,
        "p50_s": round(_percentile(lags, 0.50), 3), "p90_s": round(_percentile(lags, 0.90), 3),
        "p99_s": round(_percentile(lags, 0.99), 3), "max_s": round(lags[-1], 3) if lags else None,
        "not_committed_in_time": unseen,
        "durable_p50_s": round(_percentile(durable_lags, 0.50), 3),
        "durable_p99_s": round(_percentile(durable_lags, 0.99), 3),
        "commits_seen": len(committed),
        "mean_commit_interval_s": round(statistics.mean(intervals), 3) if intervals else None,
        "loadgen_max_behind_ms": round(sent["max_behind_ms"], 1) if sent else None,
        "cpu_s_per_1000_flows": round(1000 * cpu / count, 4), "cores_busy": round(cpu / elapsed, 2),
        "peak_rss_mb": round(peak_rss, 1),
    }


def _read_times(path: Path, count: int) -> list[int]:
    import array
    values = array.array("q")
    with open(path, "rb") as handle:
        values.frombytes(handle.read())
    if sys.byteorder != "little":
        values.byteswap()
    return list(values[:count])


def _lags(send_ns: list[int], commits: list[tuple[float, float]], end_wall: float,
          tolerance_ns: float) -> tuple[list[float], int]:
    """Per flow: wall time of the first commit whose newest flow is at or after the flow's
    time, minus the flow's time. Flows no commit covered count with end_wall (a lower bound)."""
    newest = [n for n, _ in commits]
    lags, unseen = [], 0
    for t in send_ns:
        j = bisect.bisect_left(newest, t - tolerance_ns)
        if j < len(commits):
            lags.append(commits[j][1] - t / 1e9)
        else:
            unseen += 1
            lags.append(end_wall - t / 1e9)
    lags.sort()
    return lags, unseen


# --- 4. bytes on disk ---

def disk(store: str) -> dict:
    return _python_json(["bench.store_stats", store], timeout=600)


# --- 5. replay and the ClickHouse baseline ---

_SUMMARY = re.compile(r"replayed (\d+) lines in ([\d.]+) s .*?: (\d+) L7 flows")


def replay(files: FlowFiles, workdir: Path, overrides: list[str]) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ingest", "replay", str(files.jsonl), "--no-progress",
               "--store", f"chdb://{workdir / 'store'}", "--state-dir", str(workdir / "state")]
    for item in overrides:
        command += ["--set", item]
    out_path, err_path = workdir / "replay.out", workdir / "replay.log"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    if process.returncode != 0:
        raise RuntimeError(f"flowlog replay exited {process.returncode}:\n{err_path.read_text()[-3000:]}")
    match = _SUMMARY.search(text)
    seconds = float(match.group(2)) if match else wall
    flows = int(match.group(3)) if match else files.flows
    return {"flows": flows, "seconds": round(seconds, 2), "flows_per_s": round(flows / seconds, 1),
            "wall_s": round(wall, 2), "wall_flows_per_s": round(flows / wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "summary": text.strip().splitlines()[-1] if text.strip() else "", "command": " ".join(command)}


def baseline(files: FlowFiles, workdir: Path, protobuf: bool = False) -> dict:
    """ClickHouse parsing the same input itself: the JSON lines, or the stream's messages."""
    workdir.mkdir(parents=True, exist_ok=True)
    arguments = ["--protobuf", str(files.stream)] if protobuf else [str(files.jsonl)]
    return _python_json(["bench.baseline", *arguments, str(workdir)], timeout=1200)


# --- 6. the decoder alone ---

def decode(files: FlowFiles) -> dict:
    """CPU µs a flow of Decoder.decode on the stream's messages, in a process of its own."""
    return _python_json(["bench.decode", str(files.stream)], timeout=1200)
