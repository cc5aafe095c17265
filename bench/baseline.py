"""The alternatives a user could build instead of flowlog: ClickHouse parses the input itself.

    python -m bench.baseline FLOWS.jsonl WORKDIR
    python -m bench.baseline --protobuf STREAM.bin WORKDIR

The second form is the same pipeline fed with the gRPC stream's own `GetFlowsResponse`
messages (`INSERT ... FORMAT Protobuf`, the messages length-delimited, the schema being
flowlog's own `.proto` files): what inserting the received bytes and deriving the
columns in ClickHouse, instead of decoding in Python, would reach on this machine. The
views and the destination tables are the same; only the parse differs.

What `hubble observe -o jsonpb | clickhouse-client --query "INSERT INTO hubble_jsonpb
FORMAT JSONEachRow"` does, done well, in the embedded engine (chdb) on the same machine:

- the project's own migrations create `http_flows`, `dns_flows` and their rollups in a
  database `baseline`, so the destination tables, codecs, sort keys and materialized
  views are exactly flowlog's;
- `hubble_jsonpb (flow String, node_name String, time String)` is a Null-engine table:
  JSONEachRow reads each line's `flow` object into `flow` as raw JSON text;
- one materialized view parses that text once per line, with a single `JSONExtract` into
  a named Tuple of just the fields the tables need, into a second Null table `parsed`;
- two materialized views fill `http_flows` and `dns_flows` from it with ClickHouse
  functions: URL parts, pod-name workload rule, header redaction, rcode names.

The timed statement is `INSERT INTO baseline.hubble_jsonpb FROM INFILE '...' FORMAT
JSONEachRow`, which ClickHouse parses in parallel on every core (max_threads), or `...
hubble_protobuf ... FORMAT Protobuf`, which it parses on one thread. It does less
than flowlog does: no audit table, no ledger, no duplicate lookups, no checkpoint, and a
flow without uuid gets the zero UUID as flow_id instead of a content hash. So the comparison
favours the baseline. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

from ingest.config import StoreConfig
from ingest.store.flow_input import varint
from ingest.store.migrations import migrate
from ingest.store.schema import DNS_FLOWS, HTTP_FLOWS

DATABASE = "baseline"
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_ENDPOINT = "Tuple(identity UInt32, namespace String, labels Array(String), pod_name String, " \
            "workloads Array(Tuple(name String, kind String)))"
_PORTS = "Tuple(source_port UInt16, destination_port UInt16)"
# Only the fields the tables use; names are matched against the JSON keys, or the
# protobuf fields. In JSON a Timestamp is text and a uint64 a string.
JSON_TIME, JSON_UINT64 = "String", "String"
PROTOBUF_TIME, PROTOBUF_UINT64 = "Tuple(seconds Int64, nanos Int32)", "UInt64"
FLOW_TYPE = (
    "Tuple(time {time}, uuid String, node_name String, verdict String, traffic_direction String, "
    "is_reply Nullable(Bool), IP Tuple(source String, destination String), "
    f"l4 Tuple(TCP {_PORTS}, UDP {_PORTS}, SCTP {_PORTS}), source {_ENDPOINT}, destination {_ENDPOINT}, "
    "source_names Array(String), destination_names Array(String), "
    "l7 Tuple(type String, latency_ns {uint64}, "
    "http Tuple(code UInt16, method String, url String, protocol String, "
    "headers Array(Tuple(key String, value String))), "
    "dns Tuple(query String, ips Array(String), ttl UInt32, cnames Array(String), observation_source String, "
    "rcode UInt16, qtypes Array(String), rrtypes Array(String))))"
)


def _workload(side: str) -> str:
    """flowlog's rule: Hubble's workloads, else the pod name without its generated
    suffixes, else the app label."""
    pod = f"f.{side}.pod_name"
    deployment, generated, ordinal = (f"'^(.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$'", f"'^(.+)-{_SAFE}{{5}}$'",
                                      "'^(.+)-[0-9]+$'")
    label = ("multiIf(startsWith(l, 'k8s:app.kubernetes.io/name='), substring(l, 28), "
             "startsWith(l, 'k8s:app='), substring(l, 9), startsWith(l, 'k8s:k8s-app='), substring(l, 13), '')")
    return (f"multiIf(notEmpty(f.{side}.workloads), f.{side}.workloads[1].name, "
            f"match({pod}, {deployment}), extract({pod}, {deployment}), "
            f"match({pod}, {generated}), extract({pod}, {generated}), "
            f"match({pod}, {ordinal}), extract({pod}, {ordinal}), "
            f"{pod} != '', {pod}, "
            f"arrayFirst(l -> l != '', arrayMap(l -> {label}, f.{side}.labels)))")


_URL = "replaceRegexpOne(f.l7.http.url, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@', '\\\\1')"
COMMON = {
    "time": "parseDateTime64BestEffort(f.time, 9, 'UTC')",
    "node": "if(f.node_name != '', f.node_name, node_name)",
    "flow_id": "toUUIDOrZero(f.uuid)",
    "verdict": "f.verdict",
    "l7_type": "f.l7.type",
    "traffic_direction": "f.traffic_direction",
    "is_reply": "f.is_reply",
    "src_namespace": "f.source.namespace", "src_pod": "f.source.pod_name", "src_workload": _workload("source"),
    "src_identity": "f.source.identity", "src_ip": "f.IP.source",
    "src_port": "f.l4.TCP.source_port + f.l4.UDP.source_port + f.l4.SCTP.source_port",
    "src_labels": "f.source.labels", "src_names": "f.source_names",
    "dst_namespace": "f.destination.namespace", "dst_pod": "f.destination.pod_name",
    "dst_workload": _workload("destination"), "dst_identity": "f.destination.identity", "dst_ip": "f.IP.destination",
    "dst_port": "f.l4.TCP.destination_port + f.l4.UDP.destination_port + f.l4.SCTP.destination_port",
    "dst_labels": "f.destination.labels", "dst_names": "f.destination_names",
    "latency_ns": "toUInt64OrZero(f.l7.latency_ns)",
}
# What differs when the flow comes from protobuf: typed already.
PROTOBUF_COMMON = {
    "time": "fromUnixTimestamp64Nano(f.time.seconds * 1000000000 + f.time.nanos, 'UTC')",
    "latency_ns": "f.l7.latency_ns",
}
HTTP = {
    "method": "f.l7.http.method",
    "url": _URL,
    "host": f"if(port({_URL}) != 0, concat(domain({_URL}), ':', toString(port({_URL}))), domain({_URL}))",
    "protocol": "f.l7.http.protocol",
    "status_code": "f.l7.http.code",
    # Hubble's name of the server; flowlog also falls back to the client's last DNS answer
    # for the server's IP, which a stateless view cannot do.
    "dst_dns_name": "if(f.l7.type = 'RESPONSE', f.source_names[1], f.destination_names[1])",
    "headers": "mapFromArrays(arrayMap(h -> h.1, f.l7.http.headers), arrayMap(h -> if(lower(h.1) IN "
               "('authorization', 'cookie', 'set-cookie', 'proxy-authorization'), '[REDACTED]', h.2), "
               "f.l7.http.headers))",
}
DNS = {
    "query": "f.l7.dns.query",
    "qtypes": "f.l7.dns.qtypes",
    "rcode": "f.l7.dns.rcode",
    "rcode_name": "if(f.l7.type = 'RESPONSE', transform(toUInt32(f.l7.dns.rcode), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "
                  "['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED', 'YXDOMAIN', 'YXRRSET', "
                  "'NXRRSET', 'NOTAUTH', 'NOTZONE'], concat('RCODE', toString(f.l7.dns.rcode))), '')",
    "ips": "f.l7.dns.ips",
    "ttl": "f.l7.dns.ttl",
    "cnames": "f.l7.dns.cnames",
    "rrtypes": "f.l7.dns.rrtypes",
    "observation_source": "f.l7.dns.observation_source",
}
IS_HTTP = "(f.l7.http.method != '' OR f.l7.http.url != '' OR f.l7.http.code != 0)"
IS_DNS = "(f.l7.dns.query != '' OR f.l7.dns.rcode != 0)"


def _select(table, common: dict, own: dict) -> tuple[str, list[str]]:
    """The view's select list over the table's columns; the columns it cannot fill."""
    expressions = {**common, **own}
    parts, missing = [], []
    for name in table.column_names:
        if name in expressions:
            parts.append(f"{expressions[name]} AS `{name}`")
        else:
            missing.append(name)
    return ",\n    ".join(parts), missing


def setup(client, protobuf: bool = False) -> list[str]:
    """The database, the tables and views for JSON lines (`hubble_jsonpb`) or for
    protobuf messages (`hubble_protobuf`); the table columns the views cannot fill."""
    migrate(client, StoreConfig(database=DATABASE))
    db = f"`{DATABASE}`"
    if protobuf:
        # The input table is the parsed one: the columns are GetFlowsResponse's fields.
        flow_type = FLOW_TYPE.format(time=PROTOBUF_TIME, uint64=PROTOBUF_UINT64)
        parsed, common, suffix = "hubble_protobuf", {**COMMON, **PROTOBUF_COMMON}, "protobuf"
        client.command(f"CREATE TABLE {db}.{parsed} (flow {flow_type}, node_name String) ENGINE = Null")
        source = f"(SELECT flow AS f, node_name FROM {db}.{parsed})"
    else:
        flow_type = FLOW_TYPE.format(time=JSON_TIME, uint64=JSON_UINT64)
        parsed, common, suffix = "parsed", COMMON, "json"
        client.command(f"CREATE TABLE {db}.hubble_jsonpb (flow String, node_name String, time String) ENGINE = Null")
        client.command(f"CREATE TABLE {db}.parsed (f {flow_type}, node_name String) ENGINE = Null")
        client.command(f"CREATE MATERIALIZED VIEW {db}.parse_mv TO {db}.parsed AS "
                       f"SELECT JSONExtract(flow, '{flow_type}') AS f, node_name FROM {db}.hubble_jsonpb")
        source = f"{db}.parsed"
    missing = []
    for table, own, where in ((HTTP_FLOWS, HTTP, IS_HTTP), (DNS_FLOWS, DNS, IS_DNS)):
        select, lacking = _select(table, common, own)
        missing += [f"{table.name}.{name}" for name in lacking]
        client.command(f"CREATE MATERIALIZED VIEW {db}.`{table.name}_from_{suffix}` TO {db}.`{table.name}` AS\n"
                       f"SELECT\n    {select}\nFROM {source} WHERE {where}")
    return missing


def protobuf_schema(directory: Path) -> str:
    """flowlog's .proto files, and the well-known ones they import (from grpcio-tools),
    laid out as their imports name them; the `format_schema` setting for GetFlowsResponse."""
    import grpc_tools

    from ingest import api

    api_dir = Path(api.__file__).parent
    for proto in api_dir.glob("*/*.proto"):
        target = directory / "ingest" / "api" / proto.parent.name / proto.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto, target)
    shutil.copytree(Path(grpc_tools.__file__).parent / "_proto" / "google", directory / "google", dirs_exist_ok=True)
    shutil.copyfile(api_dir / "observer" / "observer.proto", directory / "observer.proto")
    return f"{directory / 'observer.proto'}:GetFlowsResponse"


def length_delimited(stream: Path, out: Path) -> int:
    """The stream file's messages (4-byte big-endian lengths) as protobuf's varint-delimited
    sequence, which FORMAT Protobuf reads; returns the number of messages."""
    from bench.flowfiles import read_stream

    count = 0
    with open(out, "wb") as handle:
        for message in read_stream(stream):
            handle.write(varint(len(message)))
            handle.write(message)
            count += 1
    return count


def _literal(text: str) -> str:
    """A ClickHouse string literal (INFILE and SETTINGS take no query parameters)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run(input_path: Path, workdir: Path, protobuf: bool = False) -> dict:
    import chdb  # noqa: F401  (registers the chdb backend)
    import clickhouse_connect

    workdir.mkdir(parents=True, exist_ok=True)
    client = clickhouse_connect.get_client(dsn=f"chdb://{workdir / 'store'}")
    missing = setup(client, protobuf)
    if protobuf:
        data = workdir / "messages.protobuf"
        lines = length_delimited(input_path, data)
        statement = (f"INSERT INTO `{DATABASE}`.hubble_protobuf FROM INFILE {_literal(str(data))} "
                     f"SETTINGS format_schema = {_literal(protobuf_schema(workdir / 'schema'))}, "
                     # BoolValue is_reply into Nullable(Bool)
                     "input_format_protobuf_flatten_google_wrappers = 1 FORMAT Protobuf")
    else:
        lines = sum(1 for _ in open(input_path, "rb"))
        statement = f"INSERT INTO `{DATABASE}`.hubble_jsonpb FROM INFILE {_literal(str(input_path))} FORMAT JSONEachRow"
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    client.command(statement)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    counts = dict(client.query(
        f"SELECT 'http_flows', count() FROM `{DATABASE}`.http_flows UNION ALL "
        f"SELECT 'dns_flows', count() FROM `{DATABASE}`.dns_flows").result_rows)
    threads = client.query("SELECT getSetting('max_threads')").result_rows[0][0]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stored = counts.get("http_flows", 0) + counts.get("dns_flows", 0)
    return {"format": "Protobuf" if protobuf else "JSONEachRow", "lines": lines,
            "stored": {k: int(v) for k, v in counts.items()}, "seconds": round(seconds, 3),
            "flows_per_s": round(stored / seconds, 1) if seconds else 0.0, "cpu_s": round(cpu, 2),
            "max_threads": int(threads), "columns_not_filled": missing,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    arguments = sys.argv[1:]
    as_protobuf = arguments[:1] == ["--protobuf"]
    if as_protobuf:
        arguments = arguments[1:]
    print(json.dumps(run(Path(arguments[0]), Path(arguments[1]), as_protobuf)), flush=True)
