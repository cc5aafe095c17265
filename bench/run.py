#!/usr/bin/env python3
"""The hubble-flowlog benchmark: the ingester against the limit and the alternative, in one run.

    python bench/run.py --flows 200000 --out bench/results/latest.json

Generates N realistic L7 flows (bench/traffic.py; seeded, cached in bench/.cache), then:

  limit   a Python gRPC client with the ingester's channel options receives the stream
          from the Node.js load generator and drops it: the receive ceiling; then a C++
          client the same way (bench/receive_floor.cc, where g++ and grpc++ are installed):
          the floor of what receiving costs outside Python
  node    what a node pays: `flowlog run` with the store in a process of its own (the
          real engine behind ClickHouse's HTTP interface, bench/store_server.py), as in
          production: the ingester's own CPU per flow, flows/s and peak RSS; then the same
          at fixed offered loads (--node-rates), what the DaemonSet's resources come from
  e2e     `flowlog run` (embedded store) takes the same stream: flows/s from the first
          flow sent to the last row committed, CPU per 1,000 flows, peak RSS; and
          ClickHouse parsing the same messages itself (FORMAT Protobuf, bench/baseline.py)
  disk    bytes per flow on disk per table of that store, after OPTIMIZE ... FINAL
  rerun   `flowlog run` again over the same stream into that store, with a fresh state
          dir: every flow looked up, found stored and dropped (what re-reading costs)
  lag     a fresh `flowlog run` at a fixed offered load: flow time to commit, p50/p99
  replay  `flowlog replay` of the same flows as `hubble observe -o jsonpb` lines, and
          ClickHouse's own JSONEachRow parser on the same file (bench/baseline.py)
  decode  the decoder alone on the stream's messages: CPU µs per flow (bench/decode.py)

Prints a table and writes every number, with the machine and the versions, to --out.
bench/README.md explains each number and what limits it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: import bench and ingest from the repository
    sys.path[0] = str(ROOT)

from bench import flowfiles, loadgen, phases, receive_floor, report  # noqa: E402
from bench.store_server import StoreServer  # noqa: E402

PHASES = ("limit", "node", "e2e", "disk", "rerun", "lag", "replay", "decode")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=200_000, help="flows to generate and ingest (default 200000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster-rate", type=float, default=2500.0,
                        help="flows/s of the generated cluster's own clock (spreads flow times; default 2500)")
    parser.add_argument("--limit-runs", type=int, default=3, help="receive-limit runs; the median is reported")
    parser.add_argument("--e2e-runs", type=int, default=1,
                        help="end-to-end runs; the median is reported (the disk numbers come from its store)")
    parser.add_argument("--lag-rate", type=float, default=10_000.0, help="offered load of the lag run, flows/s")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="length of the lag run (at most --flows)")
    parser.add_argument("--node-rates", default="1000,10000,30000",
                        help="fixed offered loads of the node phase, flows/s (default 1000,10000,30000)")
    parser.add_argument("--node-seconds", type=float, default=20.0,
                        help="length of each fixed-load node run (at most --flows)")
    parser.add_argument("--node-outage-s", type=float, default=30.0,
                        help="how long the store answers nothing in the node phase's memory run (default 30)")
    parser.add_argument("--poll-ms", type=float, default=100.0, help="how often /metrics is read (default 100)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"which to run (default {','.join(PHASES)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every flowlog run/replay (e.g. batch.max_rows=50000)")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="after the measured runs, one more end-to-end run with py-spy attached for this long")
    parser.add_argument("--profile-gil", action="store_true",
                        help="profile only the thread holding the GIL (py-spy --gil)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--compare", type=Path, help="an earlier results JSON to print beside this run")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "bench" / ".cache")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (stores, logs)")
    args = parser.parse_args(argv)
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    args.node_rates = [float(r) for r in args.node_rates.split(",") if r.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))} (known: {', '.join(PHASES)})")
    for phase in ("disk", "rerun"):
        if phase in args.phases and "e2e" not in args.phases:
            parser.error(f"{phase} uses the store of the e2e run: add e2e")
    return args


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _proc_line(path: str, prefix: str) -> str:
    try:
        return next((line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines()
                     if line.startswith(prefix)), "")
    except OSError:
        return ""


def machine() -> dict:
    model = _proc_line("/proc/cpuinfo", "model name")
    memory_kb = _proc_line("/proc/meminfo", "MemTotal").split()
    memory_gb = int(memory_kb[0]) / 1024**2 if memory_kb else 0.0

    def git(*args):
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "cpu_model": model,
        "memory_gb": round(memory_gb, 1), "kernel": platform.release(), "python": platform.python_version(),
        "packages": {name: _version(name) for name in ("grpcio", "protobuf", "chdb", "chdb-core", "clickhouse-connect",
                                                       "prometheus-client", "hubble-flowlog")},
        "node": loadgen.node_version(), "grpc_js": loadgen.grpc_js_version(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--", "ingest")),  # the measured code differs from the commit
    }


def image_python(cache_dir: Path, log) -> str:
    """The interpreter of a virtualenv holding what the image installs (`pip install .`:
    no extras, so none of the bench's chdb, pandas and pyarrow, which clickhouse-connect
    imports when they are there: 80 MB of RSS). Made once per pyproject.toml, editable so
    that it runs this checkout's code."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    venv = cache_dir / f"image-venv-{key}"
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"making a virtualenv with only the image's packages in {venv} (once)")
        for command in ([sys.executable, "-m", "venv", str(venv)],
                        [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return str(python)


def node(files: flowfiles.FlowFiles, workdir: Path, args: argparse.Namespace, log) -> dict:
    """The ingester with the store in another process, with only the image's packages:
    flat out, then at each fixed load, then with the store stopped."""
    log("node: flowlog run, the store in a process of its own (HTTP), the image's packages, the same stream")
    python = image_python(args.cache_dir, log)
    floor = receive_floor.build(args.cache_dir, log)
    with StoreServer(workdir / "node-store") as store:
        result = phases.end_to_end(files, workdir / "node", args.overrides, args.poll_ms / 1000, log,
                                   store_dsn=store.dsn, python=python)
        result["store_cpu_s"] = round(store.cpu_seconds(), 2)
    result["us_per_flow"] = round(result["cpu_s_per_1000_flows"] * 1000, 1)
    log(f"  {result['flows_per_s']:,.0f} flows/s, {result['us_per_flow']} µs of CPU a flow, "
        f"peak RSS {result['peak_rss_mb']:,.0f} MB")
    # The store above runs on these 2 cores too (about as much CPU a flow as the ingester);
    # on a node it is a server elsewhere. The same run with a stand-in that answers inserts
    # without storing them is what the ingester alone keeps up with.
    log("  again, the store answering inserts without storing them (the ingester's own ceiling)")
    with StoreServer(workdir / "node-store-discarding", discard=True) as store:
        alone = phases.end_to_end(files, workdir / "node-alone", args.overrides, args.poll_ms / 1000, log,
                                  store_dsn=store.dsn, python=python)
    alone["us_per_flow"] = round(alone["cpu_s_per_1000_flows"] * 1000, 1)
    result["alone"] = alone
    log(f"  {alone['flows_per_s']:,.0f} flows/s, {alone['us_per_flow']} µs of CPU a flow, "
        f"peak RSS {alone['peak_rss_mb']:,.0f} MB")
    rates = {}
    for rate in args.node_rates:
        log(f"  at {rate:,.0f} flows/s for {args.node_seconds:.0f} s")
        with StoreServer(workdir / f"node-store-{rate:.0f}") as store:
            rates[f"{rate:.0f}"] = run = phases.lag(files, workdir / f"node-{rate:.0f}", args.overrides, rate,
                                                    args.node_seconds, args.poll_ms / 1000, log, store_dsn=store.dsn,
                                                    python=python)
        run["receive"] = phases.receive_at(files, rate, args.node_seconds, floor)
        run["us_per_flow"] = round(run["cpu_s_per_1000_flows"] * 1000, 1)
        run["us_per_flow_beyond_receive"] = round(run["us_per_flow"] - run["receive"]["us_per_message"], 1)
        log(f"    cores busy {run['cores_busy']:.2f} ({run['us_per_flow']} µs a flow, of which gRPC's receive alone "
            f"{run['receive']['us_per_message']} µs), peak RSS {run['peak_rss_mb']:,.0f} MB, "
            f"lag p99 {run['p99_s']:.2f} s{'' if run['complete'] else ', fell behind'}")
    result["rates"] = rates
    log(f"  the store stopped for {args.node_outage_s:.0f} s while the stream is offered flat out")
    with StoreServer(workdir / "node-store-outage") as store:
        result["outage"] = phases.outage(files, workdir / "node-outage", args.overrides, store, args.node_outage_s,
                                         args.poll_ms / 1000, log, python)
    log(f"    peak RSS {result['outage']['peak_rss_mb_during']:,.0f} MB during the outage, "
        f"{result['outage']['peak_rss_mb']:,.0f} MB until every flow was committed")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    loadgen.ensure_installed(log)
    from ingest.config import SourceConfig
    from ingest.sources.hubble import flows_request
    request = flows_request(SourceConfig(), 0)
    mask = list(request.field_mask.paths) if request.HasField("field_mask") else []
    files = flowfiles.make(args.cache_dir, args.seed, args.flows, args.cluster_rate, mask, log)
    workdir = Path(tempfile.mkdtemp(prefix="flowlog-bench-"))
    results = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "input": files.as_dict(), "workdir": str(workdir),
    }
    log(f"input: {files.flows:,} flows ({files.http:,} HTTP, {files.dns:,} DNS), "
        f"{files.as_dict()['mean_message_bytes']:.0f} B per message"
        + (f", field mask {mask}" if mask else "") + f"; work directory {workdir}")
    started = time.monotonic()
    try:
        if "limit" in args.phases:
            log(f"limit: Python client with the ingester's channel options, {args.limit_runs} runs")
            results["limit"] = phases.limit(files, args.limit_runs, log, receive_floor.build(args.cache_dir, log))
        if "node" in args.phases:
            results["node"] = node(files, workdir, args, log)
            if "limit" in results:
                for run in (results["node"], results["node"]["alone"]):
                    run["ratio_to_limit"] = round(run["flows_per_s"] / results["limit"]["messages_per_s"], 3)
        if "e2e" in args.phases:
            log(f"e2e: flowlog run, embedded store, the same stream, {args.e2e_runs} run(s)")
            runs = []
            for run in range(args.e2e_runs):
                runs.append(phases.end_to_end(files, workdir / f"e2e-{run + 1}", args.overrides,
                                              args.poll_ms / 1000, log))
                log(f"  run {run + 1}: {runs[-1]['flows_per_s']:,.0f} flows/s")
            results["e2e"] = sorted(runs, key=lambda r: r["flows_per_s"])[len(runs) // 2]  # the median run
            results["e2e"]["runs_flows_per_s"] = [r["flows_per_s"] for r in runs]
            if "limit" in results:
                results["e2e"]["ratio_to_limit"] = round(
                    results["e2e"]["flows_per_s"] / results["limit"]["messages_per_s"], 3)
            log("  alternative: ClickHouse parses the same messages itself (FORMAT Protobuf)")
            try:
                results["protobuf_baseline"] = phases.baseline(files, workdir / "protobuf-baseline", protobuf=True)
            except RuntimeError as err:  # the other phases still run; the JSON says why this one did not
                results["protobuf_baseline"] = {"error": str(err)[-2000:]}
                log(f"  the Protobuf baseline failed: {str(err)[-300:]}")
            if results["protobuf_baseline"].get("flows_per_s"):
                results["e2e"]["ratio_to_protobuf_baseline"] = round(
                    results["e2e"]["flows_per_s"] / results["protobuf_baseline"]["flows_per_s"], 3)
        if "disk" in args.phases:
            log("disk: OPTIMIZE ... FINAL, system.parts")
            results["disk"] = phases.disk(results["e2e"]["store"])
            tables = results["disk"]["tables"]
            total = sum(t["bytes_on_disk"] for t in tables.values())
            results["disk"]["total_bytes_per_flow"] = round(total / files.flows, 1)
        if "rerun" in args.phases:
            log("rerun: flowlog run again over the same stream and store, fresh state dir: every flow found stored")
            results["rerun"] = phases.end_to_end(files, workdir / "rerun", args.overrides, args.poll_ms / 1000, log,
                                                 store=Path(results["e2e"]["store"]))
            results["rerun"]["ratio_to_e2e"] = round(results["rerun"]["flows_per_s"] / results["e2e"]["flows_per_s"], 3)
        if "lag" in args.phases:
            log(f"lag: flowlog run at {args.lag_rate:,.0f} flows/s for {args.lag_seconds:.0f} s")
            results["lag"] = phases.lag(files, workdir / "lag", args.overrides, args.lag_rate, args.lag_seconds,
                                        args.poll_ms / 1000, log)
        if "replay" in args.phases:
            log(f"replay: flowlog replay of {files.jsonl.stat().st_size / 1e6:,.0f} MB of JSON lines")
            results["replay"] = phases.replay(files, workdir / "replay", args.overrides)
            log(f"  {results['replay']['flows_per_s']:,.0f} flows/s; baseline: ClickHouse JSONEachRow")
            results["baseline"] = phases.baseline(files, workdir / "baseline")
            results["replay"]["ratio_to_baseline"] = round(
                results["replay"]["flows_per_s"] / results["baseline"]["flows_per_s"], 3)
        if "decode" in args.phases:
            log("decode: the decoder alone on the stream's messages")
            results["decode"] = phases.decode(files)
        if args.profile:
            log(f"profile: one more end-to-end run with py-spy for {args.profile:.0f} s (not a measurement)")
            profiled = phases.end_to_end(files, workdir / "profile", args.overrides, args.poll_ms / 1000, log,
                                         profile_s=args.profile, profile_gil=args.profile_gil)
            results["profile"] = {"seconds": args.profile, "gil_only": args.profile_gil,
                                  "flows_per_s_while_profiled": profiled["flows_per_s"], **profiled.get("profile", {})}
    finally:
        results["duration_s"] = round(time.monotonic() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    previous = json.loads(args.compare.read_text()) if args.compare else None
    m = results["machine"]
    print(f"\nhubble-flowlog benchmark, {results['started']}, commit {m['git_commit']}"
          f"{' (ingest/ modified)' if m['git_dirty'] else ''}; {m['nproc']} CPUs {m['cpu_model']}; "
          f"Python {m['python']}, grpcio {m['packages']['grpcio']}, chdb {m['packages']['chdb']}, "
          f"Node {m['node']} + grpc-js {m['grpc_js']}")
    print(f"input: {files.flows:,} flows ({files.http:,} HTTP, {files.dns:,} DNS; seed {files.seed}), "
          f"{files.as_dict()['mean_message_bytes']:.0f} B per message, "
          f"{files.as_dict()['mean_json_line_bytes']:.0f} B per JSON line"
          + (f"; lag run at {args.lag_rate:,.0f} flows/s for {results['lag']['flows'] / args.lag_rate:.0f} s"
             if "lag" in results else "") + "\n")
    print(report.table(results, previous))
    if "disk" in results:
        print(report.columns(results))
    if "profile" in results:
        print(f"\nprofile of flowlog run (py-spy{' --gil' if args.profile_gil else ''}, {args.profile:.0f} s, "
              f"{results['profile']['flows_per_s_while_profiled']:,.0f} flows/s while profiled):")
        print(report.profile(results["profile"]))
    print(f"\nall numbers: {args.out}  ({results['duration_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
