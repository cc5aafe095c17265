#!/usr/bin/env python3
"""`flowlog serve` over millions of stored flows: time to the first response and flows/s
streamed, for the requests `hubble observe` sends.

    python bench/history.py --base-flows 1000000 --copies 5

Builds an embedded store once (cached in bench/.cache/history-*): `flowlog replay` stores
--base-flows generated flows (bench/traffic.py, 2,500 flows/s of cluster time), then
ClickHouse copies them --copies - 1 times, each a day later (INSERT ... SELECT with the time moved:
ids and times differ, the flow bytes are the same, so a copy's flow.time field still
says the first day; response.time and every filter on time use the stored time), and
merges l7_audit's parts (OPTIMIZE ... FINAL) as a store that has run a while has them. Then
`flowlog serve` runs in its own process and this one sends each request as the hubble CLI
builds it, counting the responses without decoding them (the client's cost is not the
server's). "Now" is the newest stored flow. The server's CPU seconds are reported beside.
Then (`resources`) what the server holds and burns as deployed, with 1, 8 and 32 clients
streaming at once and the store in another process: what the Deployment's requests and
limits come from (bench/results/history.json, checked by tests/test_deploy.py).

The baseline, in the same run: a Python gRPC server in its own process that streams the
same messages already serialized, from memory, with no store and no filter: the most a
Python gRPC server sends a second, one response per flow, to the same client.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import flowfiles, procstat  # noqa: E402
from bench.ingester import free_port  # noqa: E402
from ingest.api.flow import flow_pb2  # noqa: E402
from ingest.api.observer import observer_pb2  # noqa: E402

NS = 1_000_000_000
DAY = 86_400 * NS
TABLES = ("l7_audit", "http_flows", "dns_flows")


def flowlog(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *argv], check=True, cwd=REPO, **kwargs)


def build_store(cache: Path, base: int, copies: int, seed: int, log) -> Path:
    store = cache / f"history-{seed}-{base}-{copies}"
    if (store / "done").exists():
        return store
    shutil.rmtree(store, ignore_errors=True)
    files = flowfiles.make(cache, seed, base, rate=2500.0, log=log)
    log(f"storing {base:,} flows with flowlog replay")
    started = time.monotonic()
    common = ["--state-dir", str(store / "state"), "--store", f"chdb://{store / 'db'}", "--log-level", "warning"]
    flowlog("replay", "--no-progress", *common, str(files.jsonl))
    log(f"  {time.monotonic() - started:.0f} s; copying {copies - 1} times, a day apart")
    for copy in range(1, copies):
        for table in TABLES:
            columns = _stored_columns(store, table)
            select = ", ".join(f"time + toIntervalDay({copy})" if c == "time" else
                               f"concat(flow_id, '-{copy}')" if (c == "flow_id" and table == "l7_audit") else
                               "generateUUIDv4()" if c == "flow_id" else f"`{c}`" for c in columns)
            sql = (f"INSERT INTO flowlog.{table} ({', '.join(f'`{c}`' for c in columns)}) "
                   f"SELECT {select} FROM flowlog.{table} WHERE time < (SELECT min(time) FROM flowlog.{table}) + "
                   f"toIntervalDay(1)")
            flowlog("sql", *common, sql)
    # A store that has run a while: its parts merged.
    flowlog("sql", *common, "OPTIMIZE TABLE flowlog.l7_audit FINAL")
    (store / "done").write_text("")
    return store


def _stored_columns(store: Path, table: str) -> list[str]:
    from ingest.store.schema import ALL_TABLES
    return list(next(t for t in ALL_TABLES if t.name == table).column_names)


def namespace_filters(namespace: str, **fields) -> list[flow_pb2.FlowFilter]:
    """`--namespace X`: two filters OR'ed, each with the other flags' fields (hubble CLI)."""
    return [flow_pb2.FlowFilter(source_pod=[f"{namespace}/"], **fields),
            flow_pb2.FlowFilter(destination_pod=[f"{namespace}/"], **fields)]


def requests(newest_ns: int, namespace: str, dns_pattern: str) -> dict[str, observer_pb2.GetFlowsRequest]:
    def since(ns_ago: int, **kwargs) -> observer_pb2.GetFlowsRequest:
        request = observer_pb2.GetFlowsRequest(**kwargs)
        request.since.FromNanoseconds(newest_ns - ns_ago)
        return request
    l7 = [flow_pb2.EventTypeFilter(type=129)]
    return {
        f"--since 1h --namespace {namespace} --last 100": since(3600 * NS, number=100,
                                                               whitelist=namespace_filters(namespace)),
        "--since 24h --http-status 5+": since(DAY, whitelist=[flow_pb2.FlowFilter(http_status_code=["5+"],
                                                                                   event_type=l7)]),
        f"--since 7d --dns-query '{dns_pattern}'": since(7 * DAY, whitelist=[flow_pb2.FlowFilter(
            dns_query=[dns_pattern])]),
        f"--namespace {namespace} --last 1000 (no since)": observer_pb2.GetFlowsRequest(
            number=1000, whitelist=namespace_filters(namespace)),
        "--since 1h --last 50000 (every flow)": since(3600 * NS, number=50_000),
        "--since 1m -f (history, then follow)": since(60 * NS, follow=True),
    }


def measure(address: str, request: observer_pb2.GetFlowsRequest, follow_s: float) -> dict:
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        call = channel.unary_stream("/observer.Observer/GetFlows",
                                    request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                                    response_deserializer=None)(request, timeout=follow_s if request.follow
                                                                else 600)
        started = time.monotonic()
        first = None
        count = 0
        size = 0
        try:
            for raw in call:
                if first is None:
                    first = time.monotonic() - started
                count += 1
                size += len(raw)
                if request.follow and time.monotonic() - started > follow_s:
                    call.cancel()
                    break
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED) or \
                    not request.follow:
                raise
        total = time.monotonic() - started
    streaming = total - (first or 0)
    return {"responses": count, "first_response_s": round(first, 3) if first is not None else None,
            "total_s": round(total, 3), "bytes": size,
            "flows_per_s": round((count - 1) / streaming) if count > 1 and streaming > 0 and not request.follow
            else None}


def newest_and_namespace(store: Path) -> tuple[int, str, str]:
    common = ["--state-dir", str(store / "state"), "--store", f"chdb://{store / 'db'}", "--log-level", "warning"]
    out = flowlog("sql", *common, "SELECT toUnixTimestamp64Nano(max(time)) FROM flowlog.l7_audit FORMAT TSV",
                  capture_output=True, text=True).stdout.split()
    namespace = flowlog("sql", *common, "SELECT src_namespace FROM flowlog.http_flows WHERE src_namespace != '' "
                        "GROUP BY src_namespace ORDER BY count() ASC LIMIT 1 OFFSET 2 FORMAT TSV",
                        capture_output=True, text=True).stdout.strip()
    pattern = flowlog("sql", *common, "SELECT query FROM flowlog.dns_flows WHERE query LIKE '%stripe%' "
                      "LIMIT 1 FORMAT TSV", capture_output=True, text=True).stdout.strip()
    return int(out[0]), namespace, "stripe" if pattern else "svc"


def raw_server(port: int, stream: Path, count: int) -> None:
    """The baseline server: `count` stored messages (repeated), as bytes, no work."""
    messages = [raw for raw, _ in zip(flowfiles.read_stream(stream), range(20_000))]

    def get_flows(request, context):
        for index in range(count):
            yield messages[index % len(messages)]
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("observer.Observer", {
        "GetFlows": grpc.unary_stream_rpc_method_handler(
            get_flows, request_deserializer=observer_pb2.GetFlowsRequest.FromString)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def start(argv: list[str], port: int, python: str = sys.executable) -> subprocess.Popen:
    process = subprocess.Popen([python, *argv], cwd=REPO)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with grpc.insecure_channel(address) as channel:
                grpc.channel_ready_future(channel).result(timeout=1)
            return process
        except grpc.FutureTimeoutError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{argv} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-flows", type=int, default=1_000_000)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--follow-seconds", type=float, default=5.0)
    parser.add_argument("--baseline-flows", type=int, default=50_000)
    parser.add_argument("--raw-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=lambda text: [int(n) for n in text.split(",")], default=[1, 8, 32],
                        help="clients at once for the resources measure (default 1,8,32; 32 is serve.max_streams)")
    # A page of serve.page_rows flows for each of 32 clients takes about a minute to be read at all.
    parser.add_argument("--resources-seconds", type=float, default=60.0)
    parser.add_argument("--phases", default="queries,resources", help="queries, resources or both (default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    cache = REPO / "bench" / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    files = flowfiles.make(cache, args.seed, args.base_flows, rate=2500.0, log=log)
    if args.raw_server:
        raw_server(args.raw_server, files.stream, args.baseline_flows)
        return 0
    store = build_store(cache, args.base_flows, args.copies, args.seed, log)
    newest_ns, namespace, pattern = newest_and_namespace(store)
    results = {"flows_stored": args.base_flows * args.copies, "now": newest_ns}
    if "queries" in args.phases:
        queries(store, newest_ns, namespace, pattern, args, results)
    if "resources" in args.phases:
        results["resources"] = resources(store, newest_ns, args.streams, args.resources_seconds, log)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


def queries(store: Path, newest_ns: int, namespace: str, pattern: str, args, results: dict) -> None:
    """Each request as the hubble CLI sends it, against the Python gRPC limit."""
    results["queries"] = {}
    port = free_port()
    baseline = start([__file__, "--base-flows", str(args.base_flows), "--seed", str(args.seed), "--baseline-flows",
                      str(args.baseline_flows), "--raw-server", str(port)], port)
    try:
        cpu_before = cpu_seconds(baseline.pid)
        limit = measure(f"127.0.0.1:{port}", observer_pb2.GetFlowsRequest(), args.follow_seconds)
        limit["server_cpu_s"] = round(cpu_seconds(baseline.pid) - cpu_before, 2)
    finally:
        baseline.terminate()
        baseline.wait(30)
    results["python_grpc_limit"] = limit
    print(f"{'baseline: Python gRPC, serialized messages from memory':55} {limit['responses']:>8,} responses, "
          f"{limit['flows_per_s']:>8} flows/s, server CPU {limit['server_cpu_s']} s", flush=True)

    port = free_port()
    server = start(["-m", "ingest", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(store / "state"),
                    "--store", f"chdb://{store / 'db'}", "--log-level", "warning", "--set",
                    "serve.metrics_address="], port)
    try:
        address = f"127.0.0.1:{port}"
        for name, request in requests(newest_ns, namespace, pattern).items():
            cpu_before = cpu_seconds(server.pid)
            result = measure(address, request, args.follow_seconds)
            result["server_cpu_s"] = round(cpu_seconds(server.pid) - cpu_before, 2)
            if result["flows_per_s"]:
                result["of_limit"] = round(result["flows_per_s"] / limit["flows_per_s"], 2)
            results["queries"][name] = result
            print(f"{name:55} first {result['first_response_s']} s, {result['responses']:>8,} responses, "
                  f"{result['flows_per_s'] or '-':>8} flows/s ({result.get('of_limit', '-')} of the limit), "
                  f"server CPU {result['server_cpu_s']} s", flush=True)
    finally:
        server.terminate()
        server.wait(30)


def resources(store: Path, newest_ns: int, streams: list[int], seconds: float, log) -> dict:
    """What `flowlog serve` holds and burns as it is deployed: the store in another process
    (ClickHouse's HTTP interface over the engine, bench/store_server.py), the server run
    with only the image's packages, and `streams` clients at once, each asking for every
    flow of the last week (the widest request, read page by page) for `seconds`. The
    server is started afresh for each count, so its VmHWM is that count's peak."""
    from bench.run import image_python
    from bench.store_server import StoreServer

    python = image_python(REPO / "bench" / ".cache", log)
    request = observer_pb2.GetFlowsRequest()
    request.since.FromNanoseconds(newest_ns - 7 * DAY)
    found = {}
    with StoreServer(store / "http-store", data=store / "db") as stand_in:
        for count in streams:
            port = free_port()
            server = start(["-m", "ingest", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir",
                            str(store / "state"), "--store", stand_in.dsn, "--log-level", "warning",
                            "--set", f"serve.metrics_address=127.0.0.1:{free_port()}",
                            "--set", f"serve.max_streams={count}"], port, python)
            try:
                idle_mb = procstat.rss_mb(server.pid, tree=False)
                cpu_before = procstat.cpu_seconds(server.pid, tree=False)
                with futures.ThreadPoolExecutor(count) as pool:
                    sent = sum(pool.map(lambda _: _stream_for(f"127.0.0.1:{port}", request, seconds), range(count)))
                cpu = procstat.cpu_seconds(server.pid, tree=False) - cpu_before
                peak_mb = procstat.peak_rss_mb(server.pid, tree=False)
            finally:
                server.terminate()
                server.wait(30)
            found[str(count)] = {"streams": count, "idle_rss_mb": round(idle_mb, 1), "peak_rss_mb": round(peak_mb, 1),
                                 "cpu_cores": round(cpu / seconds, 2), "flows_per_s": round(sent / seconds)}
            log(f"serve, {count} streams at once for {seconds:.0f} s, store over HTTP: peak RSS {peak_mb:.0f} MB "
                f"(idle {idle_mb:.0f}), {cpu / seconds:.2f} cores, {sent / seconds:,.0f} flows/s sent in all")
    return found


def _stream_for(address: str, request: observer_pb2.GetFlowsRequest, seconds: float) -> int:
    """Responses received in `seconds` (then the call is cancelled), not decoded."""
    count = 0
    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        call = channel.unary_stream("/observer.Observer/GetFlows",
                                    request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
                                    response_deserializer=None)(request, timeout=seconds + 60)
        ends = time.monotonic() + seconds
        try:
            for _ in call:
                count += 1
                if time.monotonic() > ends:
                    call.cancel()
                    break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise
    return count


if __name__ == "__main__":
    sys.exit(main())
