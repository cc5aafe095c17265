"""`flowlog visibility status`: is each policy in place, as configured, and are its L7 flows stored?

A policy is in place when the live object exists, carries our label, and has exactly the
rendered spec. Its flows are those of `http_flows` and `dns_flows` from or to the
endpoints it selects (its namespaces, and its labels when it selects by label) within
the last `window_minutes`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .kube import get, is_managed
from .policy import NAMESPACE_LABEL, object_ref

_FLOW_TABLES = ("http_flows", "dns_flows")

_FLOWS_SQL = """
SELECT count(), max(time) FROM {db:Identifier}.{table:Identifier}
WHERE time > now() - INTERVAL {minutes:UInt32} MINUTE
  AND (((empty({namespaces:Array(String)}) OR src_namespace IN {namespaces:Array(String)})
        AND hasAll(src_labels, {labels:Array(String)}))
    OR ((empty({namespaces:Array(String)}) OR dst_namespace IN {namespaces:Array(String)})
        AND hasAll(dst_labels, {labels:Array(String)})))
"""


@dataclass
class PolicyStatus:
    ref: str
    exists: bool
    managed: bool
    # what differs from the rendered object, e.g. "spec.egress"
    differences: list[str]
    flows: dict[str, int]
    last_flow: dt.datetime | None

    @property
    def matches(self) -> bool:
        return self.exists and self.managed and not self.differences

    @property
    def arriving(self) -> bool:
        return sum(self.flows.values()) > 0


@dataclass
class StatusReport:
    window_minutes: int
    policies: list[PolicyStatus]

    @property
    def ok(self) -> bool:
        return all(p.matches and p.arriving for p in self.policies)

    def lines(self) -> list[str]:
        lines = []
        for p in self.policies:
            if not p.exists:
                state = "missing"
            elif not p.managed:
                state = "exists but is not managed by flowlog"
            elif p.differences:
                state = f"differs from the config in {', '.join(p.differences)} (run `flowlog visibility apply`)"
            else:
                state = "in place"
            counts = ", ".join(f"{n} {table}" for table, n in p.flows.items())
            if p.arriving:
                flows = (f"flows arriving: yes ({counts} in the last {self.window_minutes} min, "
                         f"newest {p.last_flow:%Y-%m-%d %H:%M:%S} UTC)")
            else:
                flows = f"flows arriving: no (no HTTP or DNS flow in the last {self.window_minutes} min)"
            lines.append(f"{p.ref}: {state}; {flows}")
        return lines


def status(objects: list[dict], client, store_client, database: str, window_minutes: int) -> StatusReport:
    """Compare each rendered object with the live one, and count its recent flows in the store."""
    policies = []
    for obj in objects:
        live = get(client, obj)
        namespaces, labels = flow_scope(obj)
        flows, newest = {}, []
        for table in _FLOW_TABLES:
            count, last = store_client.query(_FLOWS_SQL, parameters={
                "db": database, "table": table, "minutes": window_minutes,
                "namespaces": namespaces, "labels": labels}).result_rows[0]
            flows[table] = count
            if count:
                newest.append(last)
        policies.append(PolicyStatus(
            ref=object_ref(obj), exists=live is not None, managed=live is not None and is_managed(live),
            differences=_differences(obj, live) if live is not None else [],
            flows=flows, last_flow=max(newest) if newest else None))
    return StatusReport(window_minutes, policies)


def flow_scope(obj: dict) -> tuple[list[str], list[str]]:
    """The namespaces (empty: all) and Hubble labels ("k8s:app=web") of the endpoints a policy selects."""
    selector = obj["spec"]["endpointSelector"]
    match_labels = dict(selector.get("matchLabels") or {})
    namespace = match_labels.pop(NAMESPACE_LABEL, None) or obj["metadata"].get("namespace")
    namespaces = [namespace] if namespace else []
    for expression in selector.get("matchExpressions") or []:
        if expression["key"] == NAMESPACE_LABEL and expression["operator"] == "In":
            namespaces = list(expression["values"])
    # Hubble reports each label with its source; a selector key without one means a pod label.
    labels = [f"{k if ':' in k else 'k8s:' + k}={v}" for k, v in match_labels.items()]
    return namespaces, labels


def _differences(obj: dict, live: dict) -> list[str]:
    wanted, found = obj.get("spec") or {}, live.get("spec") or {}
    differences = [f"spec.{key}" for key in sorted(set(wanted) | set(found)) if wanted.get(key) != found.get(key)]
    live_labels = (live.get("metadata") or {}).get("labels") or {}
    differences += [f"metadata.labels.{k}" for k, v in obj["metadata"].get("labels", {}).items()
                    if live_labels.get(k) != v]
    return differences
