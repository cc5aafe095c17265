"""The query library (`sql/queries/`) and `flowlog query`, against the embedded store.

Every query's answer is compared with the answer computed in `tests/answers.py` from the
fixture JSON. The fixtures are replayed once into a database of this module (the queries
only read); tests that add data of their own use the per-test `config` and `client`.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import uuid

import pytest

from ingest import cli
from ingest.store import queries
from ingest import config as config_mod
from ingest.store.queries import QueryError
from ingest.runner import replay
from ingest.store.connection import open_store

from . import answers
from .helpers import DNS_330, HTTP_348, fixture_lines
from .expected import rfc3339_ns

DAY = {"from": "2021-10-04 00:00:00", "until": "2021-10-05 00:00:00"}  # the fixtures' day: 24 h, > 6 h
HOUR_14 = {"from": "2021-10-04T14:00:00Z", "until": "2021-10-04T15:00:00Z"}  # the HTTP capture: 1 h, <= 6 h
TABLES = ("http_flows", "dns_flows", "l7_audit", "ingest_gaps", "ingest_ledger", "http_rollup_1m", "dns_rollup_1m")
LIBRARY = queries.load()


@pytest.fixture(scope="module")
def store(chdb_dir, tmp_path_factory):
    """(config, client) of a database holding the 348 HTTP and 330 DNS fixture flows."""
    config = config_mod.load(env={}, overrides={
        "store.dsn": f"chdb://{chdb_dir}", "store.database": f"q_{uuid.uuid4().hex[:12]}",
        "state_dir": str(tmp_path_factory.mktemp("state")), "batch.max_delay_ms": "100", "metrics.address": ""})
    client = open_store(config)
    replay(config, client, [str(HTTP_348), str(DNS_330)])
    yield config, client
    client.command(f"DROP DATABASE IF EXISTS `{config.store.database}`")
    client.close()


@pytest.fixture(scope="module")
def http():
    return answers.l7_flows(fixture_lines(HTTP_348), "http")


@pytest.fixture(scope="module")
def dns():
    return answers.l7_flows(fixture_lines(DNS_330), "dns")


def ask(store, query: str, **values) -> list[dict]:
    config, client = store
    return LIBRARY[query].rows(client, values, config.store.database)


def counts(store) -> dict[str, int]:
    config, client = store
    return {t: client.command(f"SELECT count() FROM `{config.store.database}`.`{t}`") for t in TABLES}


def without(rows: list[dict], *keys: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


# --- the files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(queries.QUERY_DIR.glob("*.sql")), ids=lambda p: p.stem)
def test_every_file_has_a_parsable_header_declaring_every_placeholder(path):
    text = path.read_text()
    assert text.startswith(f"-- {path.stem}: ")
    query = queries.parse(path.stem, text, path)
    assert query.summary and query.description and query.columns
    declared = {p.name: re.sub(r"\s", "", p.type) for p in query.params}
    used = {name: re.sub(r"\s", "", type_) for name, type_ in re.findall(r"\{(\w+):([^{}]+)\}", query.sql)}
    assert used == declared
    assert {"from", "until"} <= set(declared)
    for param in query.params:
        assert param.description, param
        if not param.required:
            param.convert(param.default)
    # The SQL holds no value of its own formatting: no %s, no {name} without a type.
    assert "%s" not in query.sql and "%(" not in query.sql


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_declared_columns_are_the_answer_columns(store, name):
    config, client = store
    query = LIBRARY[name]
    values = {"name": "x", "ip": "x", "destination": "x", "request_id": "x", **DAY}
    parameters = query.bind({k: v for k, v in values.items() if query.param(k)})
    client.database = config.store.database
    described = client.query(f"DESCRIBE TABLE ({query.sql})", parameters=parameters).result_rows
    assert tuple(row[0] for row in described) == query.columns


@pytest.mark.parametrize("text, message", [
    ("-- q: x\n-- columns: a\nSELECT {a:String} AS a", "{a:String} is not declared"),
    ("-- q: x\n-- param: a UInt8 = 1 d\n-- columns: a\nSELECT {a:String} AS a", "declares a UInt8"),
    ("-- q: x\n-- param: a UInt8 = 1 d\n-- param: b String (required) d\n-- columns: a\nSELECT {a:UInt8} AS a",
     "parameter b declared but not used"),
    ("-- q: x\n-- param: a Array(String) (required) d\n-- columns: a\nSELECT {a:Array(String)}", "unsupported type"),
    ("-- q: x\n-- param: a UInt8 = 300 d\n-- columns: a\nSELECT {a:UInt8}", "default of parameter a: expected UInt8"),
    ("-- q: x\n-- param: a DateTime64(9) (required) d\n-- columns: a\nSELECT {a:DateTime64(9)}", "unsupported type"),
    ("-- q: x\n-- param: a UInt8 d\n-- columns: a\nSELECT {a:UInt8}", "expected 'NAME TYPE (required)"),
    ("-- other: x\n-- columns: a\nSELECT 1", "starts '-- q: what it answers'"),
    ("-- q: x\nSELECT 1", "no '-- columns: ...' line"),
])
def test_bad_headers_are_refused_naming_the_problem(text, message):
    with pytest.raises(QueryError, match=re.escape(message)):
        queries.parse("q", text)


# --- answers equal the ones computed from the fixture JSON ---------------------------------------

def test_http_latency_short_range_reads_raw_flows_with_exact_quantiles(store, http):
    got = ask(store, "http_latency", **HOUR_14)
    assert {r["read_from"] for r in got} == {"http_flows"}
    expected = answers.http_latency(http)
    assert without(got, "read_from", "error_pct") == without(expected, "latencies", "error_pct")
    assert [r["error_pct"] for r in got] == pytest.approx([r["error_pct"] for r in expected], abs=0.006)
    # The five server workloads of the capture, and the servers with none named by identity and IP.
    assert {(r["destination_namespace"], r["destination_workload"]) for r in got} == {
        ("kube-system", "node-local-dns"), ("bookinfo", "productpage-v1"), ("kube-system", "kube-dns"),
        ("istio-system", "jaeger"), ("kube-system", "clickhouse-operator"), ("", "world 10.128.0.3"),
        ("", "world 10.128.0.4"), ("", "world 10.128.0.6"), ("", "host 10.128.0.5")}


def test_http_latency_by_route_collapses_ids(store, http):
    got = ask(store, "http_latency", by_route="true", **DAY)  # by route: raw even for a long range
    assert {r["read_from"] for r in got} == {"http_flows"}
    assert without(got, "read_from", "error_pct") == without(answers.http_latency(http, by_route=True),
                                                             "latencies", "error_pct")
    assert {r["route"] for r in got} == {"GET /metrics", "GET /productpage"}


def test_rollup_and_raw_http_latency_agree_on_the_same_range(store, http):
    rollup = ask(store, "http_latency", rollup_above_hours="0", **DAY)
    raw = ask(store, "http_latency", rollup_above_hours="1000", **DAY)
    default = ask(store, "http_latency", **DAY)  # 24 h > the default 6 h
    assert {r["read_from"] for r in rollup} == {"http_rollup_1m"} and default == rollup
    assert {r["read_from"] for r in raw} == {"http_flows"}
    key = ("destination_namespace", "destination_workload")
    assert [tuple(r[k] for k in key + ("requests", "errors", "error_pct")) for r in rollup] == \
           [tuple(r[k] for k in key + ("requests", "errors", "error_pct")) for r in raw]
    expected = {tuple(r[k] for k in key): r for r in answers.http_latency(http)}
    for row_raw, row_rollup in zip(raw, rollup):
        latencies = expected[tuple(row_raw[k] for k in key)]["latencies"]
        for q, column in zip(answers.QUANTILES, ("p50_ms", "p95_ms", "p99_ms")):
            assert row_raw[column] == answers.exact_quantile(latencies, q) / 1e6
            low, high = answers.tdigest_band(latencies, q)
            assert low <= row_rollup[column] <= high, (row_rollup, column, low, high)


def test_rollup_http_latency_covers_the_whole_minutes_the_range_touches(store, http):
    got = ask(store, "http_latency", rollup_above_hours="0", **{"from": "2021-10-04 14:29:30", "until":
                                                               "2021-10-04 14:30:30"})
    minutes = answers.within(http, rfc3339_ns("2021-10-04T14:29:00Z"), rfc3339_ns("2021-10-04T14:31:00Z"))
    expected = answers.http_latency(minutes)
    assert [(r["destination_workload"], r["requests"], r["errors"]) for r in got] == \
           [(r["destination_workload"], r["requests"], r["errors"]) for r in expected]


@pytest.mark.parametrize("limit", [1, 20, 1000])
def test_http_slowest(store, http, limit):
    assert ask(store, "http_slowest", limit=str(limit), **DAY) == answers.http_slowest(http, limit)


def test_http_slowest_only_within_the_range(store, http):
    span = {"from": "2021-10-04T14:29:00Z", "until": "2021-10-04T14:30:00.5Z"}
    inside = answers.within(http, rfc3339_ns(span["from"]), rfc3339_ns(span["until"]))
    assert ask(store, "http_slowest", limit="1000", **span) == answers.http_slowest(inside, 1000)


@pytest.mark.parametrize("step, min_status", [(3600, 400), (60, 400), (60, 500), (60, 200)])
def test_http_errors(store, http, step, min_status):
    got = ask(store, "http_errors", step_seconds=str(step), min_status=str(min_status), **DAY)
    assert got == answers.http_errors(http, step, min_status)
    assert got


def test_http_errors_refuses_buckets_of_0_seconds(store):
    with pytest.raises(QueryError, match=re.escape("query http_errors: parameter step_seconds: at least 1")):
        ask(store, "http_errors", step_seconds="0", **DAY)
    with pytest.raises(QueryError, match="parameter step_seconds"):  # with no flows in the range too
        ask(store, "http_errors", step_seconds="0", **{"from": "2000-01-01", "until": "2000-01-02"})


@pytest.mark.parametrize("rcode", ["NXDOMIAN", "NOERROR", "3", "RCODE", "NXDOMAIN ", "RCODE0", "RCODE3", "rcode23",
                                   "RCODE012", "RCODE65536", "RCODE99999999999999999999"])
def test_dns_failures_refuses_what_names_no_failure(store, rcode):
    """A misspelt rcode must not pass for "no failures of that kind"."""
    with pytest.raises(QueryError, match=re.escape("query dns_failures: parameter rcode: not the name of a failure")):
        ask(store, "dns_failures", rcode=rcode, **DAY)


def test_dns_failures_knows_every_failure_the_store_names(store):
    """The query's list of names is the decoder's and the views' (RCODE_NAMES), but NOERROR."""
    from ingest.store.flow_input import RCODE_NAMES

    sql = LIBRARY["dns_failures"].sql
    names = re.findall(r"'([A-Z]+)'", sql[sql.index("IN ('"):sql.index("-- RCODE<n>")])
    assert names == [name for number, name in RCODE_NAMES.items() if number]
    numbers = sql[sql.index("NOT IN ("):].split(")")[0][len("NOT IN ("):]
    assert [int(n) for n in numbers.split(",")] == [number for number in RCODE_NAMES if number]
    for name in [*names, "RCODE12", "RCODE15", "rcode24", "RCODE65535", "servfail", "nxdomain"]:
        rows = ask(store, "dns_failures", rcode=name, **DAY)  # accepted
        assert bool(rows) == (name.upper() == "NXDOMAIN"), name  # the fixtures' only failure


@pytest.mark.parametrize("name", ["zipkin.istio-system.svc.cluster.local", "details.bookinfo.svc.cluster.local.",
                                  "istiod-istio-1611.istio-system.svc.istio-system.svc.cluster.local."])
def test_dns_answers(store, dns, name):
    got = ask(store, "dns_answers", name=name, **DAY)
    assert got == answers.dns_answers(dns, name) and got


def test_dns_answers_of_one_name_spelled_out(store):
    # zipkin's A record, answered 14 times with TTLs counting down from 30, to all four node-local-dns pods.
    [row] = ask(store, "dns_answers", name="zipkin.istio-system.svc.cluster.local", **DAY)
    assert (row["query_types"], row["rcode_name"], row["answers"], row["ttl_min"], row["ttl_max"],
            row["responses"], len(row["asked_by"])) == ("A", "NOERROR", ["10.160.4.20"], 2, 30, 14, 4)


def test_dns_reverse_for_every_answered_ip(store, dns):
    ips = sorted({ip for f in dns for ip in f["l7"]["dns"].get("ips", [])})
    assert len(ips) >= 5
    for ip in ips:
        got = ask(store, "dns_reverse", ip=ip, **DAY)
        assert got == answers.dns_reverse(dns, ip) and got, ip
    assert ask(store, "dns_reverse", ip="10.160.4.2", **DAY) == []  # a prefix of an answer is not an answer


def test_dns_failures_nxdomain_count_per_name(store, dns):
    got = ask(store, "dns_failures", rcode="NXDOMAIN", limit="1000", **DAY)
    assert got == answers.dns_failures(dns, "NXDOMAIN", 1000)
    per_name = {}
    for f in dns:
        if f["l7"]["type"] == "RESPONSE" and f["l7"]["dns"].get("rcode") == 3:
            per_name[f["l7"]["dns"]["query"]] = per_name.get(f["l7"]["dns"]["query"], 0) + 1
    got_per_name = {}
    for row in got:
        got_per_name[row["name"]] = got_per_name.get(row["name"], 0) + row["responses"]
    assert got_per_name == per_name and sum(per_name.values()) == 102
    assert ask(store, "dns_failures", rcode="nxdomain", limit="1000", **DAY) == got
    assert ask(store, "dns_failures", limit="1000", **DAY) == got  # NXDOMAIN is the fixtures' only failure
    assert ask(store, "dns_failures", rcode="SERVFAIL", **DAY) == []
    assert ask(store, "dns_failures", limit="3", **DAY) == got[:3]


@pytest.mark.parametrize("destination", ["kube-system/kube-dns", "kube-dns", "10.128.0.4", "10.156.3.6",
                                         "productpage", "productpage.bookinfo.svc.cluster.local.",
                                         "bookinfo/productpage-v1-6b746f74dc-ffh56", "10.160.7.125", "10.160.9.50",
                                         "nobody"])
def test_audit_talkers(store, http, dns, destination):
    got = ask(store, "audit_talkers", destination=destination, **DAY)
    assert got == answers.audit_talkers(http, dns, destination, dns)
    assert bool(got) == (destination != "nobody")


def test_audit_talkers_of_a_cluster_ip_spelled_out(store):
    """productpage's ClusterIP, which no flow carries: Hubble records the backend pod's IP."""
    by_name = ask(store, "audit_talkers", destination="productpage.bookinfo.svc.cluster.local", **DAY)
    by_ip = ask(store, "audit_talkers", destination="10.160.7.125", **DAY)
    assert by_ip == by_name
    assert [(r["source_workload"], r["protocol"], r["requests"], r["responses"]) for r in by_ip] == [
        ("ratings-v1", "http", 35, 34)]


def test_audit_talkers_of_kube_dns_spelled_out(store):
    got = ask(store, "audit_talkers", destination="kube-system/kube-dns", **DAY)
    assert [(r["source_workload"], r["protocol"], r["requests"], r["responses"]) for r in got] == [
        ("node-local-dns", "dns", 165, 165), ("prometheus", "http", 20, 20)]


@pytest.mark.parametrize("request_id", [
    "7644f8ea-8fbf-439a-8093-bb548a14dc63",  # ratings -> productpage -> reviews: two hops
    "11de4ec1dd45f80bda9f1a1feddd004d",      # the same request by its B3 trace id
    "88f74258-383a-49f1-b6cd-a090c2d41b60",  # three tries of one request, three responses
    "49116c2c-3017-4237-97e7-1ff4e16bfe28",  # a Prometheus scrape and its response
    "7644F8EA-8FBF-439A-8093-BB548A14DC63",  # X-Request-Id is compared exactly: no match
])
def test_request_trace(store, http, request_id):
    got = ask(store, "request_trace", request_id=request_id, **DAY)
    assert got == answers.request_trace(http, request_id)
    assert len(got) == {"7644f8ea": 3, "11de4ec1": 3, "88f74258": 6, "49116c2c": 2, "7644F8EA": 0}[request_id[:8]]


def test_request_trace_across_hops_spelled_out(store):
    got = ask(store, "request_trace", request_id="7644f8ea-8fbf-439a-8093-bb548a14dc63", **DAY)
    assert [(r["l7_type"], r["source"].split("/")[1][:10], r["destination"].split("/")[1][:10], r["status"])
            for r in got] == [("REQUEST", "ratings-v1", "productpag", 0), ("REQUEST", "productpag", "reviews-v1", 0),
                              ("RESPONSE", "ratings-v1", "productpag", 200)]


# --- data of the tests' own ----------------------------------------------------------------------

def _write(tmp_path, name: str, lines: list) -> str:
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_w3c_traceparent_and_routes_with_ids(config, client, tmp_path):
    """Flows made from fixture flows with a traceparent header and paths with ids."""
    lines = fixture_lines(HTTP_348)
    request = next(l for l in lines if l["flow"]["l7"]["type"] == "REQUEST")
    response = next(l for l in lines if l["flow"]["l7"]["type"] == "RESPONSE"
                    and l["flow"].get("source", {}).get("pod_name", "").startswith("productpage"))
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    paths = ["/api/v1/users/12345/orders", "/api/v1/users/0f8fad5b-d9cb-469f-a165-70867728950e/orders",
             "/blobs/deadbeef1234", "/blobs/deadbeef", "/blobs/abc123", "/api/v1/users/7/orders"]
    made = []
    for index, path in enumerate(paths):
        line = copy.deepcopy(response if index else request)
        flow = line["flow"]
        flow["time"] = line["time"] = f"2021-10-04T16:00:0{index}.5Z"
        flow["l7"]["http"]["url"] = f"http://productpage:9080{path}"
        key = "traceparent" if index < 3 else "Traceparent"
        parent = f"{index + 1:016x}"
        flow["l7"]["http"]["headers"] = [{"key": key, "value": f"00-{trace if index != 5 else 'f' * 32}-{parent}-01"}]
        made.append(line)
    replay(config, client, [_write(tmp_path, "made.json", made)])
    http = answers.l7_flows(made, "http")
    query, db = LIBRARY["request_trace"], config.store.database
    for request_id in (trace, trace.upper(), f"00-{trace}-00f067aa0ba902b7-01"):
        got = query.rows(client, {"request_id": request_id, **DAY}, db)
        assert got == answers.request_trace(http, request_id) and len(got) == 5
    got = LIBRARY["http_latency"].rows(client, {"by_route": "true", **DAY}, db)
    assert without(got, "read_from", "error_pct") == without(answers.http_latency(http, by_route=True),
                                                             "latencies", "error_pct")
    assert {r["route"] for r in got} == {"GET /api/v1/users/{id}/orders", "GET /blobs/{id}", "GET /blobs/deadbeef",
                                         "GET /blobs/abc123"}


def test_audit_talkers_of_a_dns_name_by_the_addresses_it_resolved_to(config, client, tmp_path):
    """A name that resolved (earlier that day) to the world address Prometheus scraped."""
    dns_lines = fixture_lines(DNS_330)
    answer = copy.deepcopy(next(l for l in dns_lines if l["flow"]["l7"]["type"] == "RESPONSE"
                                and l["flow"]["l7"]["dns"].get("ips")))
    answer["flow"]["l7"]["dns"].update(query="metrics.example.com.", ips=["10.128.0.4"], ttl=300, rcode=0)
    http_lines = fixture_lines(HTTP_348)
    replay(config, client, [str(HTTP_348), _write(tmp_path, "answer.json", [answer])])
    http, dns = answers.l7_flows(http_lines, "http"), answers.l7_flows([answer], "dns")
    span = {"from": "2021-10-04T14:00:00Z", "until": "2021-10-04T15:00:00Z"}  # the answer is from 11:22
    got = LIBRARY["audit_talkers"].rows(client, {"destination": "metrics.example.com", **span}, config.store.database)
    assert got == answers.audit_talkers(http, [], "metrics.example.com", dns)
    [row] = got
    assert (row["source_workload"], row["requests"], row["responses"], row["destinations"]) == \
           ("prometheus", 20, 20, ["world 10.128.0.4"])


def test_an_aggregated_line_counts_as_the_flows_it_stands_for(config, client, tmp_path):
    """Cilium 1.19's exporter can write one line for many flows (`aggregate`). Fixture flows
    made into two single responses of 10 ms, one line for 9 responses of 200 ms with status
    503 and one for 20 with no latency; a DNS answer once alone and once for 4: every count
    and quantile weighs the line."""
    response = next(l for l in fixture_lines(HTTP_348) if l["flow"]["l7"]["type"] == "RESPONSE"
                    and l["flow"].get("source", {}).get("pod_name", "").startswith("productpage"))
    http_lines = []
    for second, latency_ms, status in ((0, 10, 200), (1, 10, 200), (2, 200, 503)):
        line = copy.deepcopy(response)
        line["flow"]["time"] = line["time"] = f"2021-10-05T10:00:0{second}Z"
        line["flow"]["l7"]["latency_ns"] = str(latency_ms * 1_000_000)
        line["flow"]["l7"]["http"]["code"] = status
        line["flow"].pop("uuid", None)
        http_lines.append(line)
    http_lines[-1]["flow"]["aggregate"] = {"ingress_flow_count": 5, "egress_flow_count": 4}
    # As the exporter aggregates (on fields other than latency): 20 responses of no known latency.
    no_latency = copy.deepcopy(http_lines[0])
    no_latency["flow"]["time"] = no_latency["time"] = "2021-10-05T10:00:03Z"
    del no_latency["flow"]["l7"]["latency_ns"]
    no_latency["flow"]["aggregate"] = {"unknown_direction_flow_count": 20}
    http_lines.append(no_latency)
    answer = next(l for l in fixture_lines(DNS_330) if l["flow"]["l7"]["type"] == "RESPONSE"
                  and l["flow"]["l7"]["dns"].get("ips"))
    dns_lines = []
    for second, count in ((3, 0), (4, 4)):
        line = copy.deepcopy(answer)
        line["flow"]["time"] = line["time"] = f"2021-10-05T10:00:0{second}Z"
        line["flow"].pop("uuid", None)
        line["flow"]["l7"]["dns"].update(rcode=3, ips=["10.1.2.3"])
        if count:
            line["flow"]["aggregate"] = {"unknown_direction_flow_count": count}
        dns_lines.append(line)
    replay(config, client, [_write(tmp_path, "aggregated.json", http_lines + dns_lines)])
    span = {"from": "2021-10-05T10:00:00Z", "until": "2021-10-05T11:00:00Z"}

    def ask_own(query: str, **values) -> list[dict]:
        return LIBRARY[query].rows(client, {**span, **values}, config.store.database)

    [latency] = ask_own("http_latency")
    # Of the three lines with a latency, the median is a 10 ms one; of their 11 flows, a 200 ms
    # one. The 20 of no known latency count as requests, not as latencies of 0.
    assert (latency["requests"], latency["errors"], latency["error_pct"], latency["p50_ms"], latency["p99_ms"]) \
        == (31, 9, 29.03, 200.0, 200.0)
    assert [(r["status"], r["responses"]) for r in ask_own("http_errors", min_status="500")] == [(503, 9)]
    server = response["flow"]["source"]["pod_name"]
    [talker] = ask_own("audit_talkers", destination=f"bookinfo/{server}")
    assert (talker["requests"], talker["responses"]) == (0, 31)
    name = answer["flow"]["l7"]["dns"]["query"]
    assert [r["responses"] for r in ask_own("dns_failures")] == [5]
    assert [r["responses"] for r in ask_own("dns_answers", name=name)] == [5]
    assert [r["responses"] for r in ask_own("dns_reverse", ip="10.1.2.3")] == [5]


def test_ingest_completeness(config, client, tmp_path):
    """Two replays of the HTTP file, the DNS file, a lost-events report and a line that is not JSON."""
    node = "gke-ilya-otel-demo-2-ilya-otel-demo-2-dac8cc20-hr0z"
    lost = {"lost_events": {"source": "HUBBLE_RING_BUFFER", "num_events_lost": "7"}, "node_name": node,
            "time": "2021-10-04T14:29:00Z"}
    extra = _write(tmp_path, "extra.json", [lost, "{not json"])
    replay(config, client, [str(HTTP_348), str(DNS_330), extra])
    replay(config, client, [str(HTTP_348)])
    got = LIBRARY["ingest_completeness"].rows(client, {"from": "2021-10-04", "until": "2200-01-01"},
                                              config.store.database)
    expected = {}
    for path, times in ((HTTP_348, 2), (DNS_330, 1)):
        for line in fixture_lines(path):
            ns = rfc3339_ns(line["flow"]["time"])
            key = (answers.text_time(ns // 3_600_000_000_000 * 3_600_000_000_000)[:19], line["flow"]["node_name"])
            row = expected.setdefault(key, {"received": 0, "stored": 0, "stored_http": 0, "stored_dns": 0,
                                            "duplicates": 0, "lost": 0})
            kind = "stored_http" if "http" in line["flow"]["l7"] else "stored_dns"
            row["received"] += times
            row["stored"] += 1
            row[kind] += 1
            row["duplicates"] += times - 1
    expected[("2021-10-04 14:00:00", node)]["lost"] = 7
    by_key = {(r["hour"], r["node"]): r for r in got}
    for key, want in expected.items():
        row = by_key.pop(key)
        assert {k: row[k] for k in want} == want, key
        assert (row["filtered"], row["quarantined"], row["interruptions"], row["spool_batches_lost"]) == (0, 0, 0, 0)
        once = want["received"] - want["duplicates"]  # a flow received again counts once
        assert row["complete_pct"] == pytest.approx(round(100 * once / (once + want["lost"]), 2))
        assert row["stored_twice"] == 0
    # The bad line names no node and no time: it counts for node '' in the hour it was committed.
    [(key, rest)] = by_key.items()
    assert key[1] == "" and rest["quarantined"] == 1 and rest["received"] == 0 and rest["complete_pct"] == 0


# --- parameters: refused by name, and data, never SQL --------------------------------------------

def _values(name: str, *params: str, **flags) -> dict:
    query = LIBRARY[name]
    return query.bind(cli.command_values(query, list(params), flags.get("since"), flags.get("start"),
                                             flags.get("end"), now_ns=rfc3339_ns("2021-10-05T00:00:00Z")))


@pytest.mark.parametrize("name, params, flags, message", [
    ("dns_answers", [], {}, "query dns_answers: missing parameter name (String)"),
    ("http_slowest", ["limit=x"], {}, "query http_slowest: parameter limit: expected UInt32, got 'x'"),
    ("http_slowest", ["limit=-1"], {}, "query http_slowest: parameter limit: expected UInt32, got '-1'"),
    ("http_slowest", ["limit=4294967296"], {}, "parameter limit: expected UInt32, got '4294967296'"),
    ("http_slowest", ["limit=1; DROP TABLE http_flows"], {}, "parameter limit: expected UInt32"),
    ("http_latency", ["by_route=maybe"], {}, "query http_latency: parameter by_route: expected Bool, got 'maybe'"),
    ("http_latency", ["rollup_above_hours=nan"], {}, "parameter rollup_above_hours: expected Float64, got 'nan'"),
    ("http_errors", ["min_status=70000"], {}, "parameter min_status: expected UInt16, got '70000'"),
    ("http_slowest", ["limt=3"], {}, "query http_slowest: unknown parameter limt (parameters: from, until, limit)"),
    ("http_slowest", ["limit"], {}, "--param limit: expected NAME=VALUE"),
    ("http_slowest", ["limit=1", "limit=2"], {}, "parameter limit given twice"),
    ("http_slowest", ["from=2021-10-04"], {}, "parameter from: give the time range with --since or --from/--until"),
    ("http_slowest", [], {"since": "1x"}, "--since 1x: expected a duration like 90s"),
    ("http_slowest", [], {"start": "yesterday"}, "--from yesterday: expected a time like"),
    ("http_slowest", [], {"start": "2021-10-04'; DROP TABLE http_flows; --"}, "--from 2021-10-04'; DROP TABLE"),
    ("http_slowest", [], {"start": "2021-02-30"}, "--from 2021-02-30: expected a time"),
    ("http_slowest", [], {"start": "2021-10-05", "end": "2021-10-04"}, "empty time range"),
    ("http_slowest", [], {"since": "1h", "start": "2021-10-04"}, "--since and --from exclude each other"),
    ("http_slowest", [], {"since": "10000w"}, "--since 10000w: reaches before 1900"),
])
def test_missing_and_ill_typed_parameters_are_refused_by_name(name, params, flags, message):
    with pytest.raises(QueryError) as err:
        _values(name, *params, **flags)
    assert message in str(err.value)


def test_missing_parameters_of_a_query_called_directly_are_all_named():
    with pytest.raises(QueryError, match=re.escape("query dns_answers: missing parameters name (String), "
                                                   "from (DateTime64(9, 'UTC')), until (DateTime64(9, 'UTC'))")):
        LIBRARY["dns_answers"].bind({})


def test_time_range_flags():
    assert _values("http_slowest", since="90m")["from"] == "2021-10-04 22:30:00.000000000"
    assert _values("http_slowest")["from"] == "2021-10-04 23:00:00.000000000"  # default: the hour before now
    span = _values("http_slowest", start="2021-10-04T16:28:38.735173594+02:00", end="2021-10-04T15:00:00Z")
    assert (span["from"], span["until"]) == ("2021-10-04 14:28:38.735173594", "2021-10-04 15:00:00.000000000")
    span = _values("http_slowest", since="1h30m", end="2021-10-04 15:00")
    assert (span["from"], span["until"]) == ("2021-10-04 13:30:00.000000000", "2021-10-04 15:00:00.000000000")


NASTY = [
    "'", "\\", "\\'", "''", "'; DROP TABLE http_flows; --", "x' OR '1'='1", "\"; DROP TABLE dns_flows; --",
    "`http_flows`", "{name:String}", "%s %(x)s", "\t\n\r\x00", "é ☃", "\udcff\udcfe'; DROP TABLE l7_audit; --",
    b"\xff\xfe'; DROP TABLE http_flows; --", "7644f8ea-8fbf-439a-8093-bb548a14dc63' OR '1'='1",
    "zipkin.istio-system.svc.cluster.local.'; DROP TABLE dns_flows; --",
]
STRING_PARAMS = [("dns_answers", "name"), ("dns_reverse", "ip"), ("dns_failures", "rcode"),
                 ("audit_talkers", "destination"), ("request_trace", "request_id")]


def test_parameters_are_data_never_sql(store):
    before = counts(store)
    assert before["http_flows"] == 348 and before["dns_flows"] == 330
    for name, param in STRING_PARAMS:
        for value in NASTY:
            if name == "dns_failures":  # names no failure: refused, by the SQL that received it as data
                with pytest.raises(QueryError, match="parameter rcode: not the name of a failure"):
                    ask(store, name, **{param: value}, **DAY)
                continue
            assert ask(store, name, **{param: value}, **DAY) == [], (name, value)
    assert counts(store) == before
    # Each value reaches ClickHouse byte for byte: non-UTF-8 command-line bytes too.
    echo = queries.parse("echo", "-- echo: the value\n-- param: v String (required) any\n-- columns: h\n"
                                 "SELECT hex({v:String}) AS h")
    _, client = store
    for value in NASTY:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        assert echo.rows(client, {"v": value}) == [{"h": raw.hex().upper()}], value


def test_the_cli_path_with_non_utf8_and_injection(store, capsysbinary):
    config, client = store
    parser = argparse.ArgumentParser(prog="flowlog")
    cli.add_query_parser(parser.add_subparsers(dest="command"), cli._common)
    before = counts(store)
    # As the shell hands non-UTF-8 bytes to Python: surrogate escapes.
    hostile = b"zipkin\xff'; DROP TABLE dns_flows; --".decode("utf-8", "surrogateescape")
    args = parser.parse_args(["query", "dns_answers", "--from", "2021-10-04", "--until", "2021-10-05",
                              "--param", f"name={hostile}", "--format", "json"])
    assert cli.run_query(args, config, client) == 0
    assert capsysbinary.readouterr().out == b""
    assert counts(store) == before


@pytest.mark.parametrize("fmt, check", [
    ("json", lambda out: [int(json.loads(line)["responses"]) for line in out.splitlines()] == [10, 10, 10, 6, 6]),
    ("csv", lambda out: out.splitlines()[0].startswith(b'"source_namespace","source_workload","name"')),
    ("tsv", lambda out: out.splitlines()[0].startswith(b"source_namespace\tsource_workload\tname")),
    ("table", lambda out: b"NXDOMAIN" in out and b"\xe2\x94\x82" in out),
])
def test_flowlog_query_output_formats(store, capsysbinary, fmt, check):
    config, client = store
    parser = argparse.ArgumentParser(prog="flowlog")
    cli.add_query_parser(parser.add_subparsers(dest="command"), cli._common)
    args = parser.parse_args(["query", "dns_failures", "--from", "2021-10-04", "--until", "2021-10-05", "-p",
                              "limit=5", "--format", fmt])
    assert cli.run_query(args, config, client) == 0
    out = capsysbinary.readouterr().out
    assert check(out), out[:400]


def test_flowlog_query_list(capsys):
    parser = argparse.ArgumentParser(prog="flowlog")
    cli.add_query_parser(parser.add_subparsers(dest="command"), cli._common)
    assert cli.run_query(parser.parse_args(["query", "--list"]), None, None) == 0
    out = capsys.readouterr().out
    for name, query in LIBRARY.items():
        assert f"{name}: {query.summary}" in out
    assert "name (String, required): the DNS name" in out
    assert "limit (UInt32, default 20)" in out
    with pytest.raises(QueryError, match="query nope: no such query"):
        cli.run_query(parser.parse_args(["query", "nope"]), None, None)


def test_flowlog_query_through_the_cli(store, capsysbinary, tmp_path):
    config, _ = store
    common = ["--store", config.store.dsn, "--database", config.store.database, "--state-dir", str(tmp_path)]
    code = cli.main(["query", "dns_failures", *common, "--from", "2021-10-04", "--until", "2021-10-05",
                     "--param", "rcode=NXDOMAIN", "--param", "limit=2", "--format", "tsv"])
    captured = capsysbinary.readouterr()
    assert code == 0, captured.err
    lines = captured.out.decode().splitlines()
    assert lines[0].split("\t")[:4] == ["source_namespace", "source_workload", "name", "rcode_name"]
    assert len(lines) == 3
    code = cli.main(["query", "dns_answers", *common, "--since", "1h"])
    captured = capsysbinary.readouterr()
    assert code == 2 and captured.err.decode().strip() == \
        "flowlog: error: query dns_answers: missing parameter name (String)"
    code = cli.main(["query", "http_slowest", *common, "-p", "limit=x"])
    captured = capsysbinary.readouterr()
    assert code == 2 and "parameter limit: expected UInt32, got 'x'" in captured.err.decode()
    code = cli.main(["query", "dns_failures", *common, "--since", "1h", "-p", "rcode=NXDOMIAN"])
    captured = capsysbinary.readouterr()
    assert code == 2 and captured.err.decode().strip() == ("flowlog: error: query dns_failures: parameter rcode: "
                                                           "not the name of a failure (NXDOMAIN, SERVFAIL, ..., "
                                                           "RCODE<n>)")
