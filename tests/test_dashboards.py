"""The bundled Grafana dashboards and provisioning: stable uids, every reference wired to a
provisioned datasource, a title, unit and query on every panel, every PromQL expression
accepted by promql-parser, and every ClickHouse query returning rows from the embedded
ClickHouse holding the fixture flows, as opened and with every variable narrowed."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ingest import metrics  # noqa: F401  (defines the ingester's own metrics in REGISTRY)
from ingest.config import StoreConfig
from ingest.metrics.history import HISTORY
from ingest.metrics.l7 import L7Metrics
from ingest.runner import replay

from .helpers import ALL_FIXTURES
from .dashboard_queries import (CLICKHOUSE, DASHBOARD_FILES, GRAFANA, PROMETHEUS, QueryContext, Selected,
                                label_values_query, load_dashboards, panels, provisioned_datasources,
                                render_clickhouse, render_promql, targets, variables)

DASHBOARDS = load_dashboards()
PROMETHEUS_DASHBOARDS = [d for d in DASHBOARDS if targets(d, PROMETHEUS)]
CLICKHOUSE_DASHBOARDS = [d for d in DASHBOARDS if targets(d, CLICKHOUSE)]
# The fixtures were captured that day; Grafana picks about a minute per point for a day.
FIXTURE_DAY = QueryContext(datetime(2021, 10, 4, tzinfo=timezone.utc), datetime(2021, 10, 5, tzinfo=timezone.utc),
                           interval_s=60)
# What a user types into the DNS audit's boxes: a name from the DNS fixture, without its
# trailing dot, and one of the addresses it resolved to.
TYPED = {"name": "istio-telemetry.istio-system.svc.cluster.local", "ip": "10.160.7.217"}


def uid(dashboard: dict) -> str:
    return dashboard["uid"]


def query_text(target: dict) -> str:
    return target["expr"] if target["datasource"]["type"] == PROMETHEUS else target["rawSql"]


def datasource_references(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from datasource_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_references(item)


def test_the_five_dashboards_are_bundled_each_in_a_file_named_after_its_uid():
    assert [path.stem for path in DASHBOARD_FILES] == [uid(d) for d in DASHBOARDS]
    assert sorted(uid(d) for d in DASHBOARDS) == ["flowlog-dns", "flowlog-dns-audit", "flowlog-http-by-workload",
                                                  "flowlog-http-latency-history", "flowlog-ingester-health"]
    assert all(len(uid(d)) <= 40 for d in DASHBOARDS)  # Grafana's limit


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=uid)
def test_panel_ids_are_unique(dashboard):
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=uid)
def test_schema_is_current(dashboard):
    assert dashboard["schemaVersion"] >= 39


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=uid)
def test_every_datasource_reference_is_a_provisioned_datasource(dashboard):
    provisioned = provisioned_datasources()
    references = list(datasource_references(dashboard))
    assert references
    for reference in references:
        assert isinstance(reference, dict), f"datasource by name, not by uid: {reference!r}"
        assert provisioned.get(reference["uid"]) == reference["type"], reference


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=uid)
def test_every_panel_has_a_title_a_unit_and_a_query(dashboard):
    for panel in panels(dashboard):
        assert panel.get("title"), panel["id"]
        if panel["type"] == "row":
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel["targets"], panel["title"]
        assert all(query_text(target).strip() for target in panel["targets"]), panel["title"]


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=uid)
def test_every_variable_is_used(dashboard):
    texts = [query_text(target) for panel in panels(dashboard) for target in panel.get("targets", [])]
    texts += [variable["definition"] for variable in variables(dashboard) if "definition" in variable]
    for variable in variables(dashboard):
        used = re.compile(r"\$\{?" + variable["name"] + r"\b")
        assert any(used.search(text) for text in texts), f"${variable['name']} is used by no query"


@pytest.mark.parametrize("dashboard", PROMETHEUS_DASHBOARDS, ids=uid)
def test_every_promql_expression_parses(dashboard):
    expressions = [render_promql(target["expr"], dashboard, "1m") for _, target in targets(dashboard, PROMETHEUS)]
    expressions += [label_values_query(variable, dashboard, "1m")[0] for variable in variables(dashboard)
                    if variable["type"] == "query"]
    for expression in expressions:
        try:
            promql_parser.parse(expression)
        except ValueError as err:
            pytest.fail(f"{err}\n{expression}")


def exported_series_names() -> set[str]:
    """Every series name the ingester exports, from the definitions of its metrics."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
    families = list(REGISTRY.collect()) + list(HISTORY.collect()) + list(
        text_string_to_metric_families(L7Metrics().page().decode()))
    return {f.name + suffix for f in families if f.name.startswith("flowlog_") for suffix in suffixes[f.type]}


@pytest.mark.parametrize("dashboard", PROMETHEUS_DASHBOARDS, ids=uid)
def test_every_metric_read_is_exported_by_the_ingester(dashboard):
    # Also where a query falls back to 0 for a counter that has no series yet: a misspelt
    # name there would show 0 instead of no data.
    texts = [target["expr"] for _, target in targets(dashboard, PROMETHEUS)]
    texts += [variable["definition"] for variable in variables(dashboard) if variable["type"] == "query"]
    read = {name for text in texts for name in re.findall(r"\bflowlog_\w+", text)}
    assert read and read <= exported_series_names(), read - exported_series_names()


def test_provisioning_wires_both_datasources_and_loads_the_dashboards_from_files():
    datasources = {d["uid"]: d for d in yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())["datasources"]}
    assert {uid: d["type"] for uid, d in datasources.items()} == {"prometheus": PROMETHEUS, "clickhouse": CLICKHOUSE}
    clickhouse = datasources["clickhouse"]
    assert clickhouse["jsonData"]["protocol"] == "http"
    assert clickhouse["jsonData"]["defaultDatabase"] == StoreConfig().database
    assert re.fullmatch(r"\$\{?[A-Z_]+\}?", clickhouse["secureJsonData"]["password"]), "a secret in the repository"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "flowlog.yaml").read_text())["providers"]
    assert [(p["type"], p["allowUiUpdates"]) for p in providers] == [("file", False)]


def select_variables(dashboard: dict, client, narrowed: bool) -> dict[str, Selected]:
    """The variables as Grafana resolves them, in order, each query variable's SQL run with
    the ones before it: as opened (All; the text boxes empty), or narrowed to the first
    option of each query variable and the TYPED text."""
    selected = {}
    for variable in variables(dashboard):
        name = variable["name"]
        if variable.get("datasource", {}).get("type") == PROMETHEUS:
            continue  # read by the Prometheus panels of a dashboard that has both
        if variable["type"] == "textbox":
            selected[name] = Selected(TYPED[name] if narrowed else variable["query"])
            continue
        assert variable["type"] == "query" and variable["current"]["value"] == ["$__all"], name
        sql = render_clickhouse(variable["query"], selected, FIXTURE_DAY)
        options = [str(row[0]) for row in client.query(sql).result_rows]
        assert options, f"variable {name} offers nothing:\n{sql}"
        selected[name] = Selected([options[0]]) if narrowed else Selected(options, is_all=True)
    return selected


@pytest.mark.parametrize("narrowed", [False, True], ids=["as-opened", "narrowed"])
@pytest.mark.parametrize("dashboard", CLICKHOUSE_DASHBOARDS, ids=uid)
def test_every_clickhouse_query_returns_rows_from_the_fixtures(config, client, dashboard, narrowed):
    replay(config, client, [str(path) for path in ALL_FIXTURES])
    # The datasource's defaultDatabase: the dashboards' SQL names tables without one.
    client.database = config.store.database
    selected = select_variables(dashboard, client, narrowed)
    failures = []
    for panel, target in targets(dashboard, CLICKHOUSE):
        sql = render_clickhouse(target["rawSql"], selected, FIXTURE_DAY)
        result = client.query(sql)
        if not result.result_rows:
            failures.append(f"{panel['title']}: no rows from\n{sql}")
        elif target["format"] == 0 and not result.column_types[0].name.startswith("DateTime"):
            failures.append(f"{panel['title']}: a time series whose first column is not a time")
    assert not failures, "\n\n".join(failures)
