"""The alternative a user could script instead of `flowlog replay`: ClickHouse parses the
JSON itself.

    python -m bench.baseline FLOWS.jsonl WORKDIR

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
JSONEachRow`; ClickHouse parses in parallel on every core (max_threads). It does less
than flowlog does: no audit table, no ledger, no duplicate lookups, no checkpoint, and a
flow without uuid gets an empty flow_id instead of a content hash. So the comparison
favours the baseline. Prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from ingest.config import StoreConfig
from ingest.migrate import migrate
from ingest.schema import DNS_FLOWS, HTTP_FLOWS

DATABASE = "baseline"
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_ENDPOINT = "Tuple(identity UInt32, namespace String, labels Array(String), pod_name String, " \
            "workloads Array(Tuple(name String, kind String)))"
_PORTS = "Tuple(source_port UInt16, destination_port UInt16)"
# Only the fields the tables use; names are matched against the JSON keys.
FLOW_TYPE = (
    "Tuple(time String, uuid String, node_name String, verdict String, traffic_direction String, "
    "is_reply Nullable(Bool), IP Tuple(source String, destination String), "
    f"l4 Tuple(TCP {_PORTS}, UDP {_PORTS}, SCTP {_PORTS}), source {_ENDPOINT}, destination {_ENDPOINT}, "
    "source_names Array(String), destination_names Array(String), "
    "l7 Tuple(type String, latency_ns String, "
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
    "flow_id": "f.uuid",
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
HTTP = {
    "method": "f.l7.http.method",
    "url": _URL,
    "host": f"if(port({_URL}) != 0, concat(domain({_URL}), ':', toString(port({_URL}))), domain({_URL}))",
    "path": f"path({_URL})",
    "query": f"queryString({_URL})",
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


def _select(table, own: dict) -> tuple[str, list[str]]:
    """The view's select list over the table's columns; the columns it cannot fill."""
    expressions = {**COMMON, **own}
    parts, missing = [], []
    for name in table.column_names:
        if name in expressions:
            parts.append(f"{expressions[name]} AS `{name}`")
        else:
            missing.append(name)
    return ",\n    ".join(parts), missing


def setup(client) -> list[str]:
    migrate(client, StoreConfig(database=DATABASE))
    db = f"`{DATABASE}`"
    client.command(f"CREATE TABLE {db}.hubble_jsonpb (flow String, node_name String, time String) ENGINE = Null")
    client.command(f"CREATE TABLE {db}.parsed (f {FLOW_TYPE}, node_name String) ENGINE = Null")
    client.command(f"CREATE MATERIALIZED VIEW {db}.parse_mv TO {db}.parsed AS "
                   f"SELECT JSONExtract(flow, '{FLOW_TYPE}') AS f, node_name FROM {db}.hubble_jsonpb")
    missing = []
    for table, own, where in ((HTTP_FLOWS, HTTP, IS_HTTP), (DNS_FLOWS, DNS, IS_DNS)):
        select, lacking = _select(table, own)
        missing += [f"{table.name}.{name}" for name in lacking]
        client.command(f"CREATE MATERIALIZED VIEW {db}.`{table.name}_from_json` TO {db}.`{table.name}` AS\n"
                       f"SELECT\n    {select}\nFROM {db}.parsed WHERE {where}")
    return missing


def run(jsonl: Path, workdir: Path) -> dict:
    import chdb  # noqa: F401  (registers the chdb backend)
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{workdir / 'store'}")
    missing = setup(client)
    lines = sum(1 for _ in open(jsonl, "rb"))
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    client.command(f"INSERT INTO `{DATABASE}`.hubble_jsonpb FROM INFILE '{jsonl}' FORMAT JSONEachRow")
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    counts = dict(client.query(
        f"SELECT 'http_flows', count() FROM `{DATABASE}`.http_flows UNION ALL "
        f"SELECT 'dns_flows', count() FROM `{DATABASE}`.dns_flows").result_rows)
    threads = client.query("SELECT getSetting('max_threads')").result_rows[0][0]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stored = counts.get("http_flows", 0) + counts.get("dns_flows", 0)
    return {"lines": lines, "stored": {k: int(v) for k, v in counts.items()}, "seconds": round(seconds, 3),
            "flows_per_s": round(stored / seconds, 1) if seconds else 0.0, "cpu_s": round(cpu, 2),
            "max_threads": int(threads), "columns_not_filled": missing,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
