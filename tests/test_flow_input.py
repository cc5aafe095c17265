"""store.derive = store: ClickHouse derives the flow tables from the flows the ingester
sends to flow_input. The same input stored both ways must give the same rows, every
column, and the same books."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from prometheus_client import REGISTRY

from ingest import config as config_mod
from ingest.runner import replay
from ingest.store.migrations import migrate

from .helpers import ALL_FIXTURES, HTTP_348, fixture_lines

EXPORTER_LINES = HTTP_348.parent.parent / "exporter" / "masked-and-aggregated.jsonl"
TABLES = ("http_flows", "dns_flows", "l7_audit", "ingest_gaps")
# What a rollup row holds; the t-digest by its quantiles (as text: nan for none).
ROLLUPS = {
    "http_rollup_1m": "* EXCEPT (latency), toString(quantilesTDigestMerge(0.5, 0.9)(latency))",
    "dns_rollup_1m": "*",
}


def _edge_lines() -> list[dict]:
    """Fixture flows changed the ways the rules differ on: unknown enum numbers, ids that are
    no lowercase UUID or none, a flow with no time of its own or no node, workloads from
    each source (Hubble's, each pod-name rule, each app label), UDP and SCTP ports, replies,
    userinfo and credentials in URLs and headers, rcodes with and without a name."""
    http = fixture_lines(HTTP_348)
    dns = [line for line in fixture_lines(ALL_FIXTURES[1]) if "dns" in line["flow"].get("l7", {})]
    out = []
    for index, line in enumerate(http[:40] + dns[:40]):
        line = copy.deepcopy(line)
        flow = line["flow"]
        flow["uuid"] = f"00000000-0000-4000-8000-{index:012d}"
        variant = index % 10
        if variant == 0:
            flow["verdict"], flow["traffic_direction"] = 99, 7
        elif variant == 1:
            flow["uuid"] = flow["uuid"].upper()
        elif variant == 2:
            del flow["uuid"]
            flow["Summary"] = f"content {index}"
        elif variant == 3:
            line["time"] = flow.pop("time")
            flow.pop("node_name", None)
            line["node_name"] = "from-response"
        elif variant == 4:
            flow["source"] = {"namespace": "shop", "pod_name": "cart-7d9f8b6c5d-x2k9q", "identity": 300,
                              "workloads": [{"name": "cart-rollout", "kind": "Rollout"}]}
            flow["destination"] = {"namespace": "shop", "pod_name": "db-0", "identity": 301}
        elif variant == 5:
            flow["source"] = {"namespace": "shop", "pod_name": "agent-x2k9q", "identity": 302}
            flow["destination"] = {"namespace": "shop", "pod_name": "weird_name", "identity": 303}
        elif variant == 6:
            flow["source"] = {"identity": 304, "labels": ["k8s:team=a", "k8s:k8s-app=dns", "k8s:app=late"]}
            flow["destination"] = {"identity": 305, "labels": ["k8s:app.kubernetes.io/name=api", "k8s:app=x"]}
        elif variant == 7:
            ports = flow.pop("l4", {}).get("TCP") or flow.get("l4", {}).get("UDP") or {"source_port": 1}
            flow["l4"] = {"SCTP" if index % 2 else "UDP": ports}
            flow["is_reply"] = True
        elif variant == 8:
            flow.pop("is_reply", None)
            record = flow["l7"].get("http")
            if record:
                record["url"] = "https://user:secret@api.example.com:8443/v1/pay?token=abc&id=7"
                record["headers"] = [{"key": "Authorization", "value": "Bearer x"},
                                     {"key": "X-Custom", "value": "a"}, {"key": "X-Custom", "value": "b"},
                                     {"key": "Cookie", "value": "s=1"}, {"key": "Referer",
                                                                        "value": "https://u:p@shop/?password=1"}]
            else:
                flow["l7"]["type"], flow["l7"]["dns"]["rcode"] = "RESPONSE", 30
        elif variant == 9:
            flow["l7"]["type"] = 9
            if "dns" in flow["l7"]:  # a response, whose rcode is named
                flow["l7"]["type"], flow["l7"]["dns"]["rcode"] = "RESPONSE", 3
        out.append(line)
    return out


def _stored(client, database: str) -> dict[str, list[tuple]]:
    got = {}
    for table in TABLES:
        got[table] = client.query(f"SELECT * FROM `{database}`.`{table}` ORDER BY ALL").result_rows
    for rollup, columns in ROLLUPS.items():
        got[rollup] = client.query(f"SELECT {columns} FROM `{database}`.`{rollup}` GROUP BY ALL ORDER BY ALL"
                                   if "quantiles" in columns else
                                   f"SELECT {columns} FROM `{database}`.`{rollup}` ORDER BY ALL").result_rows
    got["ingest_ledger"] = client.query(
        f"SELECT node, source, sum(received), sum(filtered), sum(stored_http), sum(stored_dns), sum(stored_audit), "
        f"sum(stored_gaps), sum(duplicates), sum(quarantined), sum(lost) FROM `{database}`.ingest_ledger "
        "GROUP BY node, source ORDER BY ALL").result_rows
    return got


def _both_ways(config, client, tmp_path, paths: list[str], **settings) -> tuple[dict, dict, list]:
    summaries, stored = [], []
    for derive in ("ingester", "store"):
        database = f"{config.store.database}_{derive}"
        overrides = {"store.derive": derive, "metrics.l7": "false", **settings}
        each = dataclasses.replace(config_mod.load(env={}, overrides={
            **overrides, "store.dsn": config.store.dsn, "state_dir": str(tmp_path / derive),
            "store.database": database}))
        migrate(client, each.store)
        try:
            summaries.append(replay(each, client, paths))
            stored.append(_stored(client, database))
        finally:
            client.command(f"DROP DATABASE IF EXISTS `{database}`")
    return stored[0], stored[1], summaries


@pytest.mark.parametrize("inputs", ["hubble", "exporter", "edges"])
def test_the_store_derives_every_column_as_the_ingester_does(config, client, tmp_path, inputs):
    if inputs == "hubble":
        paths = [str(p) for p in ALL_FIXTURES]
    elif inputs == "exporter":
        paths = [str(EXPORTER_LINES)]
    else:
        path = tmp_path / "edges.json"
        path.write_text("".join(json.dumps(line) + "\n" for line in _edge_lines()))
        paths = [str(path)]
    by_ingester, by_store, (summary_ingester, summary_store) = _both_ways(config, client, tmp_path, paths)
    assert by_ingester["l7_audit"], "nothing stored"
    if inputs != "exporter":
        assert by_ingester["http_flows"] and by_ingester["dns_flows"]
    for table in by_ingester:
        assert by_store[table] == by_ingester[table], table
    if inputs == "edges":  # each change made is in what was compared
        shown = repr(by_ingester)
        for value in ("'99'", "'7'", "'9'", "'cart-rollout'", "'agent'", "'weird_name'", "'dns'", "'api'",
                      "'RCODE30'", "'NXDOMAIN'", "'from-response'", "'api.example.com:8443'"):
            assert value in shown, value
    assert summary_store.line().split(" in ")[1:] != [] and summary_store.stored == summary_ingester.stored
    assert summary_store.duplicates == summary_ingester.duplicates


def test_credentials_are_redacted_before_the_flow_is_sent(config, client, tmp_path):
    path = tmp_path / "edges.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in _edge_lines()))
    by_ingester, by_store, _ = _both_ways(config, client, tmp_path, [str(path)])
    everything = repr(by_store)
    assert "secret" not in everything and "Bearer x" not in everything and "password=1" not in everything
    assert "[REDACTED]" in everything


def test_a_flow_replayed_again_is_stored_once(config, client, tmp_path):
    each = config_mod.load(env={}, overrides={"store.dsn": config.store.dsn, "store.database": config.store.database,
                                              "state_dir": str(tmp_path / "state"), "store.derive": "store",
                                              "metrics.l7": "false"})
    def inserted(table):  # what the dashboards' throughput panels read
        return REGISTRY.get_sample_value("flowlog_rows_inserted_total", {"table": table}) or 0

    before = {table: inserted(table) for table in ("l7_audit", "http_flows", "flow_input")}
    first = replay(each, client, [str(HTTP_348)])
    assert {table: inserted(table) - before[table] for table in before} == \
        {"l7_audit": 348, "http_flows": 348, "flow_input": 0}
    again = replay(each, client, [str(HTTP_348)])
    assert first.stored == {"http_flows": 348, "l7_audit": 348}
    assert again.stored == {} and again.duplicates == 348
    db = config.store.database
    assert client.query(f"SELECT count(), uniqExact(flow_id) FROM `{db}`.http_flows").result_rows == [(348, 348)]
    assert client.query(f"SELECT sum(received), sum(duplicates), sum(stored_audit), sum(stored_http) "
                        f"FROM `{db}`.ingest_ledger").result_rows == [(696, 348, 348, 348)]


def test_an_insert_retried_with_its_token_is_stored_once_in_every_derived_table(config, client, tmp_path):
    from ingest.decode.decoder import Decoder
    from ingest.pipeline.records import SealedBatch
    from ingest.pipeline.sink import Sink
    from ingest.store.flow_input import FLOW_INPUT, protobuf_schema

    from .helpers import responses_of

    decoder = Decoder(derive_in_store=True)
    rows = [decoder.decode(response).row for response in responses_of(fixture_lines(HTTP_348))]
    schema = tmp_path / "flow_input.proto"
    schema.write_text(protobuf_schema())
    sink = Sink(client, config.store.database, schema_file=str(schema))
    for _ in range(3):  # the first attempt landed, and its answer was lost
        sink.insert(SealedBatch("batch-1", "test", {FLOW_INPUT.name: list(rows)}, {}, 0))
    db = config.store.database
    counts = client.query(f"SELECT (SELECT count() FROM `{db}`.l7_audit), (SELECT count() FROM `{db}`.http_flows), "
                          f"(SELECT sum(requests) FROM `{db}`.http_rollup_1m)").result_rows
    assert counts == [(348, 348, 173)]


def test_store_derived_columns_leave_the_l7_metrics_to_a_choice(config):
    with pytest.raises(config_mod.ConfigError, match=r"store.derive = store: the L7 metrics .* set metrics.l7 = false"):
        config_mod.load(env={}, overrides={"store.derive": "store"})
    with pytest.raises(config_mod.ConfigError, match="store.derive: expected ingester or store, got 'python'"):
        config_mod.load(env={}, overrides={"store.derive": "python", "metrics.l7": "false"})


@pytest.mark.parametrize("derive_in_store", [False, True])
def test_an_aggregate_count_no_column_holds_is_refused_by_the_ingester_in_both_modes(derive_in_store):
    """Three uint32 counts can add up past UInt32: as a dead letter, not a batch the store
    refuses (which, through the input table, would be retried forever)."""
    from ingest.decode.decoder import Decoder, DecodeError

    from .helpers import responses_of

    response = responses_of(fixture_lines(HTTP_348)[:1])[0]
    aggregate = response.flow.aggregate
    aggregate.ingress_flow_count = aggregate.egress_flow_count = aggregate.unknown_direction_flow_count = 2**32 - 1
    with pytest.raises(DecodeError, match=r"flow.aggregate: 12884901885 flows is more than aggregate_count holds"):
        Decoder(derive_in_store=derive_in_store).decode(response)


def test_a_replay_overlapping_an_earlier_one_stores_only_the_flows_it_lacked(config, client, tmp_path):
    """Lookups that drop some of a batch's input rows: the body made for the spool held
    them all, so what is sent is made again from the rows left."""
    each = config_mod.load(env={}, overrides={"store.dsn": config.store.dsn, "store.database": config.store.database,
                                              "state_dir": str(tmp_path / "state"), "store.derive": "store",
                                              "metrics.l7": "false"})
    first_half = tmp_path / "first-half.json"
    first_half.write_text("".join(json.dumps(line) + "\n" for line in fixture_lines(HTTP_348)[:150]))
    assert replay(each, client, [str(first_half)]).stored == {"http_flows": 150, "l7_audit": 150}
    whole = replay(each, client, [str(HTTP_348)])
    assert whole.stored == {"http_flows": 198, "l7_audit": 198} and whole.duplicates == 150
    db = config.store.database
    assert client.query(f"SELECT count(), uniqExact(flow_id) FROM `{db}`.http_flows").result_rows == [(348, 348)]
    assert client.query(f"SELECT count(), uniqExact(flow_id) FROM `{db}`.l7_audit").result_rows == [(348, 348)]
