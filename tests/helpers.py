"""What the tests share: the fixture files, a running ingester, waiting, and comparing the
store with the fixtures. Fixtures (pytest's) are in conftest.py."""

from __future__ import annotations

import dataclasses
import heapq
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

from google.protobuf import json_format

from ingest import cli
from ingest.api.observer import observer_pb2
from ingest.store.migrations import columns_as_of, render
from ingest.demo.observer import FlowBuffer, ObserverServer, response_time_ns
from ingest.runner import Ingester
from ingest.store.schema import SCHEMA_MIGRATIONS

from .expected import expected_rows, rfc3339_ns, stored_rows
from .faults import FaultyClient

REPO = Path(__file__).resolve().parent.parent
# The Hubble captures and the Cilium reference data, copied into the repository (see their READMEs).
FIXTURES = REPO / "tests" / "fixtures" / "hubble"
CILIUM = REPO / "tests" / "fixtures" / "cilium"
HTTP_348 = FIXTURES / "basic-sample-348-http-flows.json"
DNS_330 = FIXTURES / "basic-sample-330-dns-flows.json"
ALL_FIXTURES = sorted(FIXTURES.glob("*.json"))


def fixture_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def responses_of(lines: list[dict]) -> list[observer_pb2.GetFlowsResponse]:
    return [json_format.ParseDict(line, observer_pb2.GetFlowsResponse()) for line in lines]


class RunningIngester:
    """`flowlog run` in a thread of the test process, stopped as SIGTERM would."""

    def __init__(self, config, client, serving_history: bool = False):
        self.ingester = Ingester(config, client, serving_history=serving_history)
        self.thread = threading.Thread(target=self.ingester.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.ingester

    def __exit__(self, *exc):
        self.ingester.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "ingester did not stop"


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ingest_lines(config, client, lines, drop_after=None):
    with ObserverServer(FlowBuffer(responses_of(lines)), drop_after=drop_after) as server:
        config.source.address = server.address
        service = server.service
        with RunningIngester(config, client) as ingester:
            wait_for(lambda: service.caught_up() and ingester.writer.committed_ns >= service.newest_sent_ns,
                     what="every flow sent and committed")
        return server, ingester


def count(client, config, table):
    return client.query(f"SELECT count() FROM `{config.store.database}`.`{table}`").result_rows[0][0]


HTTP_COLUMNS = ["time", "node", "verdict", "l7_type", "traffic_direction", "is_reply", "src_namespace", "src_pod",
                "src_identity", "src_ip", "src_port", "src_labels", "dst_namespace", "dst_pod", "dst_identity",
                "dst_ip", "dst_port", "dst_labels", "method", "url", "path", "query", "protocol", "status_code",
                "latency_ns"]
DNS_COLUMNS = ["time", "node", "verdict", "l7_type", "traffic_direction", "is_reply", "src_namespace", "src_pod",
               "src_identity", "src_ip", "src_port", "src_labels", "dst_namespace", "dst_pod", "dst_identity",
               "dst_ip", "dst_port", "dst_labels", "query", "qtypes", "rcode", "ips", "ttl", "rrtypes", "cnames",
               "observation_source"]


def assert_stored_equals_fixture(client, config, lines):
    http, dns = expected_rows(lines)
    assert stored_rows(client, config.store.database, "http_flows", HTTP_COLUMNS) == http
    assert stored_rows(client, config.store.database, "dns_flows", DNS_COLUMNS) == dns
    assert count(client, config, "l7_audit") == len(http) + len(dns)


def flowlog(*argv: str) -> int:
    """`flowlog ARGV`, as the command line runs it."""
    return cli.main(list(argv))


def create_at(client, store, version: int) -> None:
    client.command(f"CREATE DATABASE `{store.database}`")
    for v in range(1, version + 1):
        for statement in render(v, store):
            client.command(statement)
        client.insert(f"`{store.database}`.{SCHEMA_MIGRATIONS.name}", [[v, 0, "test"]],
                      column_names=SCHEMA_MIGRATIONS.column_names)


def store_sql(tmp_path, query: str) -> list[str]:
    """`flowlog sql` on the embedded store and state dir of a `flowlog run` process under tmp_path,
    its rows as TSV lines."""
    result = subprocess.run([sys.executable, "-m", "ingest", "sql", "--store", f"chdb://{tmp_path / 'store'}",
                             "--state-dir", str(tmp_path / "state"), "--format", "tsv", query],
                            capture_output=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()[1:]


def rows_as_of(lines: list[bytes], version: int) -> dict[str, list[tuple]]:
    """The flows as the decoder of schema version `version` made them, in that version's
    layout: columns added later left out; up to version 5 path and query stored, and
    Hubble's uuid as it came in every table."""
    from urllib.parse import urlsplit

    from ingest.decode.decoder import Decoder
    from ingest.pipeline.records import FlowRows
    from ingest.store.schema import HTTP_FLOWS, L7_AUDIT
    from ingest.sources.files import parse_line

    decoder, rows = Decoder(), {}
    for line in lines:
        decoded = decoder.decode(parse_line(line))
        if not isinstance(decoded, FlowRows):
            continue
        for table, row in ((decoded.table, decoded.row), (L7_AUDIT, decoded.audit_row)):
            values = dict(zip(table.column_names, row))
            if version <= 5 and table is not L7_AUDIT:
                values["flow_id"] = decoded.audit_id
                if table is HTTP_FLOWS:
                    parts = urlsplit(values["url"])
                    values.update(path=parts.path, query=parts.query)
            names = [c.name for c in columns_as_of(table, version) if not c.alias]
            rows.setdefault(table.name, []).append(tuple(values[name] for name in names))
    return rows


def http_flow(url: str, headers: dict[str, str]) -> observer_pb2.GetFlowsResponse:
    return json_format.ParseDict({"flow": {
        "time": "2026-11-26T10:00:00.123456789Z", "Type": "L7", "node_name": "n1", "verdict": "FORWARDED",
        "l7": {"type": "REQUEST", "http": {"method": "GET", "url": url,
                                           "headers": [{"key": k, "value": v} for k, v in headers.items()]}}}},
        observer_pb2.GetFlowsResponse())


def legacy_pickle(batch) -> bytes:
    """A batch as builds before the marshal format spooled it: pickled as the class
    `ingest.spool.SpooledBatch` (a module that no longer exists), with the field
    `ids_at_newest` they resumed from."""
    module = types.ModuleType("ingest.spool")
    fields = [(f.name, f.type) for f in dataclasses.fields(batch)]
    fields.insert(5, ("ids_at_newest", "set[str]"))
    spooled = dataclasses.make_dataclass("SpooledBatch", fields)
    spooled.__module__ = module.__name__
    module.SpooledBatch = spooled
    sys.modules[module.__name__] = module
    try:
        values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
        return pickle.dumps(spooled(**values, ids_at_newest={"an-id"}), protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        del sys.modules[module.__name__]


class ArrivalOrderBuffer(FlowBuffer):
    """A FlowBuffer that keeps flows in the order given, as Relay's merge delivers them,
    instead of time order; the server skips those older than a request's `since`."""

    def extend(self, responses) -> None:
        with self._changed:
            for response in responses:
                self._seq += 1
                self._items.append((response_time_ns(response), self._seq, response))
            self._changed.notify_all()

    def first_position_since(self, since_ns: int) -> int:
        return self.overwritten


def relay_merge(lines: list[dict], skews_ms: list[int], per_second: int = 1000, sort_buffer: int = 100,
                drain_ms: int = 1000) -> list[observer_pb2.GetFlowsResponse]:
    """The fixture flows spread round-robin over len(skews_ms) nodes whose clocks are off
    by those amounts, in the order Hubble Relay delivers them. The flows happen per_second
    apart from the first fixture time on and reach Relay as they happen, stamped with
    their node's clock. Relay's sort buffer emits the oldest stamp once it holds more than
    sort_buffer flows, and everything when none came for drain_ms (Cilium's
    sort-buffer-len-max 100 and sort-buffer-drain-timeout 1 s)."""
    start_ns = min(rfc3339_ns(line["flow"]["time"]) for line in lines)
    held, out, last_ns = [], [], None
    for index, line in enumerate(lines):
        node = index % len(skews_ms)
        happened_ns = start_ns + index * 1_000_000_000 // per_second
        stamp_ns = happened_ns + skews_ms[node] * 1_000_000
        response = json_format.ParseDict(line, observer_pb2.GetFlowsResponse())
        response.flow.time.FromNanoseconds(stamp_ns)
        response.time.FromNanoseconds(stamp_ns)
        response.flow.node_name = response.node_name = f"node-{node}"
        if last_ns is not None and happened_ns - last_ns >= drain_ms * 1_000_000:
            out += [item[2] for item in sorted(held)]
            held = []
        last_ns = happened_ns
        heapq.heappush(held, (stamp_ns, index, response))
        if len(held) > sort_buffer:
            out.append(heapq.heappop(held)[2])
    return out + [item[2] for item in sorted(held)]


def assert_each_flow_stored_once(client, database: str) -> None:
    """Every table holds each flow id once, the rollups count exactly the raw rows, and the
    ledger balances and matches the tables."""
    def one(sql):
        return client.query(sql.replace("DB", f"`{database}`")).result_rows[0]

    for table in ("l7_audit", "http_flows", "dns_flows"):
        rows, ids = one(f"SELECT count(), uniqExact(flow_id) FROM DB.{table}")
        assert rows == ids, f"{table}: {rows} rows for {ids} ids"
    assert one("SELECT sum(requests) FROM DB.http_rollup_1m") == one(
        "SELECT count() FROM DB.http_flows WHERE l7_type = 'RESPONSE'")
    assert one("SELECT sum(queries) + sum(responses) FROM DB.dns_rollup_1m") == one("SELECT count() FROM DB.dns_flows")
    received, duplicates, audit, http, dns = one("SELECT sum(received), sum(duplicates), sum(stored_audit), "
                                                 "sum(stored_http), sum(stored_dns) FROM DB.ingest_ledger")
    assert received - duplicates == audit
    assert (audit, http, dns) == one("SELECT (SELECT count() FROM DB.l7_audit), (SELECT count() FROM DB.http_flows), "
                                     "(SELECT count() FROM DB.dns_flows)")


def take_store_down(ingester, client) -> FaultyClient:
    """The ingester's store fails from now on, until the returned client's `down` is cleared."""
    faulty = FaultyClient(client)
    faulty.down.set()
    ingester.sink.client = faulty
    return faulty


def free_port() -> int:
    """A loopback port nothing listens on now (for a process told where to listen)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
