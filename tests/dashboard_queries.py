"""The bundled Grafana dashboards and their queries, rendered as Grafana sends them.

PromQL: template variables at "All" and Grafana's range variables replaced, as the
Prometheus datasource does. SQL: `$__conditionalAll` and template variables replaced as
the ClickHouse plugin's frontend does, then its backend macros expanded. The macro
expander knows exactly these, with the plugin's own expansions (pkg/macros/macros.go
and src/data/CHDatasource.ts of grafana/clickhouse-datasource), and refuses any other
`$__` name so that a dashboard cannot use a macro this test does not check:

    $__conditionalAll(cond, $var)  cond, or 1=1 when $var is All or empty
    $__timeFilter(col)             col >= toDateTime(from) AND col <= toDateTime(to)
    $__timeInterval(col)           toStartOfInterval(toDateTime(col), INTERVAL n second)
    $__fromTime, $__toTime         toDateTime(from), toDateTime(to)
    $__interval_s                  n
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

import yaml

from .helpers import REPO

GRAFANA = REPO / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS = "prometheus"
CLICKHOUSE = "grafana-clickhouse-datasource"
# Grafana's own variables for the time range of a PromQL query.
RANGE_VARIABLES = ("__rate_interval", "__interval", "__range")

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_MACRO = re.compile(r"\$__(\w+)")


def load_dashboards() -> list[dict]:
    return [json.loads(path.read_text()) for path in DASHBOARD_FILES]


def provisioned_datasources() -> dict[str, str]:
    """uid -> plugin type of every provisioned datasource."""
    provisioning = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    return {datasource["uid"]: datasource["type"] for datasource in provisioning["datasources"]}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows included, and the panels folded inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def targets(dashboard: dict, datasource_type: str) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard sent to that kind of datasource."""
    return [(panel, target) for panel in panels(dashboard) for target in panel.get("targets", [])
            if target["datasource"]["type"] == datasource_type]


def variables(dashboard: dict) -> list[dict]:
    return dashboard["templating"]["list"]


def render_promql(expr: str, dashboard: dict, window: str) -> str:
    """The expression with every variable at "All" (its allValue, a regex for =~ matchers)
    and $__rate_interval, $__interval and $__range set to `window`."""
    values = {v["name"]: v["allValue"] for v in variables(dashboard) if "allValue" in v}
    values.update(dict.fromkeys(RANGE_VARIABLES, window))

    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"${name} is neither a dashboard variable with an allValue nor a range variable: {expr}")
        return values[name]

    return _VARIABLE.sub(substitute, expr)


_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*(\w+)\)$", re.DOTALL)


def label_values_query(variable: dict, dashboard: dict, window: str) -> tuple[str, str]:
    """(series selector, label name) of a Prometheus `label_values(selector, label)` variable."""
    match = _LABEL_VALUES.match(variable["query"]["query"])
    if match is None:
        raise ValueError(f"variable {variable['name']}: not a label_values(selector, label) query")
    return render_promql(match.group(1), dashboard, window), match.group(2)


@dataclass
class Selected:
    """A variable's current value as Grafana holds it: a list for multi-value variables."""
    value: str | list[str]
    is_all: bool = False


@dataclass
class QueryContext:
    """What Grafana sends with a query besides its text."""
    time_from: datetime
    time_to: datetime
    interval_s: int


def _call_arguments(text: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the call whose "(" is at open_paren, split at top-level commas, and
    the index after its ")"."""
    depth, start, arguments = 0, open_paren + 1, []
    for index in range(open_paren, len(text)):
        char = text[index]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                arguments.append(text[start:index].strip())
                return arguments, index + 1
        elif char == "," and depth == 1:
            arguments.append(text[start:index].strip())
            start = index + 1
    raise ValueError(f"unclosed macro call: {text[open_paren:open_paren + 80]!r}")


def _conditional_all(sql: str, selected: dict[str, Selected]) -> str:
    macro = "$__conditionalAll("
    while (at := sql.find(macro)) != -1:
        arguments, end = _call_arguments(sql, at + len(macro) - 1)
        if len(arguments) != 2:
            raise ValueError(f"$__conditionalAll takes a condition and a variable: {sql[at:end]}")
        condition, variable = arguments
        name = variable.strip("${}")
        if name not in selected:
            raise ValueError(f"$__conditionalAll names {variable}, not a dashboard variable")
        current = selected[name]
        text = ",".join(current.value) if isinstance(current.value, list) else current.value
        sql = sql[:at] + ("1=1" if current.is_all or text in ("", "$__all") else condition) + sql[end:]
    return sql


def _expand_macros(sql: str, context: QueryContext) -> str:
    start_s, end_s = int(context.time_from.timestamp()), int(context.time_to.timestamp())
    interval_s = max(context.interval_s, 1)
    expanded, position = [], 0
    while (match := _MACRO.search(sql, position)) is not None:
        name = match.group(1)
        expanded.append(sql[position:match.start()])
        position = match.end()
        if name in ("timeFilter", "timeInterval"):
            if not sql.startswith("(", position):
                raise ValueError(f"$__{name} needs a column argument")
            arguments, position = _call_arguments(sql, position)
            if len(arguments) != 1:
                raise ValueError(f"$__{name} takes one column, got {arguments}")
            column = arguments[0]
            if name == "timeFilter":
                expanded.append(f"{column} >= toDateTime({start_s}) AND {column} <= toDateTime({end_s})")
            else:
                expanded.append(f"toStartOfInterval(toDateTime({column}), INTERVAL {interval_s} second)")
        elif name == "fromTime":
            expanded.append(f"toDateTime({start_s})")
        elif name == "toTime":
            expanded.append(f"toDateTime({end_s})")
        elif name == "interval_s":
            expanded.append(str(interval_s))
        else:
            raise ValueError(f"unknown macro $__{name}: the expander supports the macros in its docstring")
    expanded.append(sql[position:])
    return "".join(expanded)


def render_clickhouse(sql: str, selected: dict[str, Selected], context: QueryContext) -> str:
    """The SQL the ClickHouse server receives for this panel query."""
    sql = _conditional_all(sql, selected)

    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name.startswith("__"):
            return match.group(0)  # a macro, expanded next
        if name not in selected:
            raise ValueError(f"${name} is not a dashboard variable")
        value = selected[name].value
        # The plugin's format(): multi-value variables become a quoted list, others stay bare.
        return "'" + "','".join(value) + "'" if isinstance(value, list) else value

    return _expand_macros(_VARIABLE.sub(substitute, sql), context)
