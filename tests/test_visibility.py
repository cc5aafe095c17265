"""`flowlog visibility`: the rendered policies under Cilium's semantics, and their lifecycle
through a Kubernetes API stand-in and the real embedded ClickHouse engine.

The policies are validated against Cilium's own CRD schemas (`tests/fixtures/cilium/crds/`),
and what they allow is judged by a small evaluator of Cilium's policy semantics: an endpoint
selected by a policy with rules in a direction is in default deny in that direction unless
the policy sets `enableDefaultDeny` false for it (any policy asking for it wins); allow rules
add up; an L7 rule is an allow rule on its ports that also sends them through the proxy,
which is what makes Hubble see the traffic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from dataclasses import dataclass

import jsonschema
import pytest
import yaml

from ingest import cli
from ingest.config import ConfigError, VisibilityConfig, load
from ingest.store.schema import HTTP_FLOWS
from ingest.visibility import (KubeError, add_visibility_parser, apply, connect, delete, ensure_visibility, render,
                               status, visibility_overrides)

from .helpers import CILIUM, flowlog
from .kube_api import APPLY_TYPE, FakeKubeAPI

CRDS = CILIUM / "crds"
NS_LABEL = "k8s:io.kubernetes.pod.namespace"
MANAGED = {"app.kubernetes.io/managed-by": "flowlog"}

REFERENCE_SCENARIO = """
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "l7-visibility"
spec:
  endpointSelector:
    matchLabels:
      "k8s:io.kubernetes.pod.namespace": default
  egress:
  - toPorts:
    - ports:
      - port: "53"
        protocol: ANY
      rules:
        dns:
        - matchPattern: "*"
  - toEndpoints:
    - matchLabels:
        "k8s:io.kubernetes.pod.namespace": default
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      - port: "8080"
        protocol: TCP
      rules:
        http: [{}]
"""


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    name = {"CiliumNetworkPolicy": "ciliumnetworkpolicies",
            "CiliumClusterwideNetworkPolicy": "ciliumclusterwidenetworkpolicies"}[kind]
    crd = yaml.safe_load((CRDS / f"{name}.yaml").read_text())
    # Draft7Validator without check_schema: one pattern in the schema is RE2 (see the reference README).
    return jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def schema_errors(obj: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(obj["kind"]).iter_errors(obj)]


def agent_errors(obj: dict) -> list[str]:
    """What Cilium's agent refuses although the schema accepts it (reference README)."""
    spec, errors = obj["spec"], []
    if not any(spec.get(k) for k in ("ingress", "ingressDeny", "egress", "egressDeny")):
        errors.append("no rules")
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction, []):
            for port_rule in rule.get("toPorts", []):
                rules = port_rule.get("rules")
                if rules is not None and len(rules) != 1:
                    errors.append(f"{direction}: rules must hold exactly one of http or dns: {rules}")
                if direction == "ingress" and rules and "dns" in rules:
                    errors.append("DNS rules are not allowed on ingress")
    return errors


# --- A small evaluator of Cilium's policy semantics -------------------------------------------

@dataclass(frozen=True)
class Peer:
    """A pod (namespace and labels) or, with namespace None, the world outside the cluster."""
    namespace: str | None
    labels: tuple[tuple[str, str], ...] = ()

    def label_map(self) -> dict[str, str]:
        if self.namespace is None:
            return {"reserved:world": ""}
        return {NS_LABEL: self.namespace, **{f"k8s:{k}": v for k, v in self.labels}}


WORLD = Peer(None)


def _label_matches(key: str, value: str, labels: dict[str, str]) -> bool:
    # A selector key without a source ("app") matches that key from any source.
    if ":" in key:
        return labels.get(key) == value
    return any(k.split(":", 1)[1] == key and v == value for k, v in labels.items())


def selector_matches(selector: dict, peer: Peer, policy_namespace: str | None) -> bool:
    if peer.namespace is None:
        return False
    labels = peer.label_map()
    # A namespaced policy's selectors see only its own namespace unless they name another.
    names_namespace = NS_LABEL in selector.get("matchLabels", {}) or any(
        e["key"] == NS_LABEL for e in selector.get("matchExpressions", []))
    if policy_namespace is not None and not names_namespace and peer.namespace != policy_namespace:
        return False
    if not all(_label_matches(k, v, labels) for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _entity_matches(entities: list[str], peer: Peer) -> bool:
    return "all" in entities or ("world" in entities if peer.namespace is None else "cluster" in entities)


def _port_matches(port_rules: list[dict], port: int, protocol: str) -> tuple[bool, bool]:
    """(allowed, proxied) by a rule's toPorts for this port."""
    for port_rule in port_rules:
        for p in port_rule["ports"]:
            if int(p["port"]) == port and p.get("protocol", "ANY") in ("ANY", protocol):
                return True, bool(port_rule.get("rules"))
    return False, False


def evaluate(policies: list[dict], endpoint: Peer, direction: str, peer: Peer, port: int,
             protocol: str = "TCP") -> tuple[bool, bool]:
    """(allowed, visible): is traffic of `endpoint` in `direction` with `peer` on port allowed,
    and does it pass the L7 proxy (so Hubble shows it)?"""
    peer_key, entity_key = ("toEndpoints", "toEntities") if direction == "egress" else ("fromEndpoints", "fromEntities")
    selecting = [p for p in policies
                 if selector_matches(p["spec"]["endpointSelector"], endpoint, p["metadata"].get("namespace"))]
    default_deny = any(p["spec"].get(direction) and p["spec"].get("enableDefaultDeny", {}).get(direction, True)
                       for p in selecting)
    allowed, visible = not default_deny, False
    for policy in selecting:
        for rule in policy["spec"].get(direction, []):
            if peer_key in rule:
                peer_ok = any(selector_matches(s, peer, policy["metadata"].get("namespace")) for s in rule[peer_key])
            elif entity_key in rule:
                peer_ok = _entity_matches(rule[entity_key], peer)
            else:
                peer_ok = True
            if not peer_ok:
                continue
            if "toPorts" not in rule:
                allowed = True
                continue
            port_ok, proxied = _port_matches(rule["toPorts"], port, protocol)
            allowed |= port_ok
            visible |= proxied
    return allowed, visible


CLIENT = Peer("default", (("app", "client"),))
SERVER = Peer("default", (("app", "server"),))
DATABASE = Peer("default", (("app", "db"),))
ELSEWHERE = Peer("shop", (("app", "api"),))
OUTSIDER = Peer("other", (("app", "x"),))

# (direction, peer, port, protocol): every kind of traffic of the `default` namespace's CLIENT.
TRAFFIC = [(d, peer, port, proto)
           for d in ("egress", "ingress")
           for peer in (SERVER, ELSEWHERE, WORLD)
           for port, proto in ((53, "UDP"), (53, "TCP"), (80, "TCP"), (8080, "TCP"), (443, "TCP"), (5432, "TCP"))]

OBSERVE_OPTION_SETS = [
    {},
    {"http_ingress": True},
    {"http_ingress": True, "peers": ["app=server"]},
    {"dns": False, "http_ports": ["80", "9000"]},
    {"http_egress": False, "http_ingress": True},
    {"namespaces": ["default", "shop"]},
    {"endpoint_labels": ["app=client"]},
    {"cluster_wide": True, "namespaces": ["default", "shop"], "http_ingress": True},
    {"cluster_wide": True, "endpoint_labels": ["app=client"]},
    {"legacy_allow_all": True},
    {"legacy_allow_all": True, "http_ingress": True, "peers": ["app=server"]},
]


def expected_visible(options: dict, direction: str, peer: Peer, port: int) -> bool:
    config = VisibilityConfig(**options)
    if direction == "egress" and port == 53:
        return config.dns
    if port not in [int(p) for p in config.http_ports]:
        return False
    if not (config.http_egress if direction == "egress" else config.http_ingress):
        return False
    return not config.peers or peer == SERVER


def _option_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


@pytest.mark.parametrize("options", OBSERVE_OPTION_SETS, ids=_option_id)
def test_observe_mode_keeps_every_flow_allowed_and_makes_l7_visible(options):
    policies, warnings = render(VisibilityConfig(**options))
    assert warnings == []
    for policy in policies:
        assert schema_errors(policy) == []
        assert agent_errors(policy) == []
        assert policy["metadata"]["labels"] == MANAGED
    for direction, peer, port, protocol in TRAFFIC:
        allowed, visible = evaluate(policies, CLIENT, direction, peer, port, protocol)
        case = f"{direction} {peer} {port}/{protocol}"
        assert allowed, case
        assert visible == expected_visible(options, direction, peer, port), case
    # Endpoints the config does not select are untouched.
    assert evaluate(policies, OUTSIDER, "egress", WORLD, 80) == (True, False)


def test_observe_mode_needs_cilium_1_16_or_the_legacy_variant():
    modern, _ = render(VisibilityConfig())
    legacy, _ = render(VisibilityConfig(legacy_allow_all=True))
    assert modern[0]["spec"]["enableDefaultDeny"] == {"egress": False, "ingress": False}
    assert "enableDefaultDeny" not in legacy[0]["spec"]
    assert legacy[0]["spec"]["egress"][0] == {"toEntities": ["all"]}
    # Without its allow-all rule the legacy shape would deny: the evaluator sees the difference.
    stripped = json.loads(json.dumps(legacy))
    del stripped[0]["spec"]["egress"][0]
    assert evaluate(stripped, CLIENT, "egress", WORLD, 443) == (False, False)
    assert evaluate(legacy, CLIENT, "egress", WORLD, 443) == (True, False)


def test_enforce_mode_allows_only_dns_and_http_to_the_namespace():
    policies, warnings = render(VisibilityConfig(mode="enforce", http_ingress=True))
    assert [schema_errors(p) + agent_errors(p) for p in policies] == [[]]
    cases = {
        ("egress", WORLD, 53, "UDP"): (True, True),
        ("egress", SERVER, 53, "TCP"): (True, True),
        ("egress", SERVER, 80, "TCP"): (True, True),
        ("egress", DATABASE, 8080, "TCP"): (True, True),
        ("egress", ELSEWHERE, 80, "TCP"): (False, False),
        ("egress", WORLD, 80, "TCP"): (False, False),
        ("egress", WORLD, 443, "TCP"): (False, False),
        ("egress", DATABASE, 5432, "TCP"): (False, False),
        ("ingress", SERVER, 80, "TCP"): (True, True),
        ("ingress", ELSEWHERE, 80, "TCP"): (False, False),
        ("ingress", SERVER, 5432, "TCP"): (False, False),
        ("ingress", WORLD, 53, "UDP"): (False, False),
    }
    for (direction, peer, port, protocol), expected in cases.items():
        assert evaluate(policies, CLIENT, direction, peer, port, protocol) == expected, (direction, peer, port)
    [warning] = warnings
    assert "all egress except DNS on port 53 and HTTP on ports 80, 8080 to endpoints in namespace default" in warning
    assert "all ingress except HTTP on ports 80, 8080 from endpoints in namespace default" in warning
    assert "DROPPED" in warning


def test_enforce_render_for_default_equals_the_reference_scenario(capsys):
    assert flowlog("visibility", "render", "--mode", "enforce", "--namespace", "default",
                   "--name", "l7-visibility") == 0
    out, err = capsys.readouterr()
    expected = yaml.safe_load(REFERENCE_SCENARIO)
    # What render adds to the scenario: the namespace it lives in and flowlog's label.
    expected["metadata"] |= {"namespace": "default", "labels": MANAGED}
    assert list(yaml.safe_load_all(out)) == [expected]
    assert err.startswith("flowlog: warning: mode enforce: CiliumNetworkPolicy default/l7-visibility puts "
                          "endpoints in namespace default in default deny")


def test_render_prints_one_policy_per_namespace_and_no_warning_in_observe(capsys):
    assert flowlog("visibility", "render", "--namespace", "a", "--namespace", "b", "--no-dns",
                   "--http-port", "9000") == 0
    out, err = capsys.readouterr()
    policies = list(yaml.safe_load_all(out))
    assert [(p["kind"], p["metadata"]["namespace"]) for p in policies] == [
        ("CiliumNetworkPolicy", "a"), ("CiliumNetworkPolicy", "b")]
    assert policies[0]["spec"]["egress"] == [
        {"toPorts": [{"ports": [{"port": "9000", "protocol": "TCP"}], "rules": {"http": [{}]}}]}]
    assert err == ""


def test_flags_become_visibility_config_overrides():
    parser = argparse.ArgumentParser()
    add_visibility_parser(parser.add_subparsers(dest="command"), cli._common)
    args = parser.parse_args(["visibility", "apply", "--namespace", "a", "--namespace", "b", "--endpoint-label",
                              "app=web", "--cluster-wide", "--http-port", "81", "--no-dns", "--http-ingress",
                              "--no-http-egress", "--peer", "role=api", "--mode", "enforce", "--dry-run",
                              "--name", "see-all", "--kubeconfig", "/k", "--context", "c"])
    overrides = visibility_overrides(args)
    assert overrides == {
        "visibility.name": "see-all", "visibility.namespaces": ["a", "b"], "visibility.endpoint_labels": ["app=web"],
        "visibility.cluster_wide": True, "visibility.http_ports": ["81"], "visibility.dns": False,
        "visibility.http_ingress": True, "visibility.http_egress": False, "visibility.peers": ["role=api"],
        "visibility.mode": "enforce"}
    # `visibility --namespace` is not `run --namespace` (source.namespaces).
    assert "source.namespaces" not in cli._overrides(args)
    assert load(env={}, overrides=overrides).visibility.http_ports == ["81"]
    assert visibility_overrides(parser.parse_args(["visibility", "render"])) == {}


@pytest.mark.parametrize("options, message", [
    ({"http_ingress": True, "http_ports": ["53"]}, "visibility.http_ports: port 53 carries DNS"),
    ({"http_ports": ["80", "53"]}, "it is egress-only: Cilium's agent rejects DNS rules on ingress"),
    ({"http_ports": ["http"]}, "visibility.http_ports: 'http' is not a port number"),
    ({"http_ports": ["70000"]}, "visibility.http_ports: '70000' is not a port number"),
    ({"http_ports": []}, "visibility.http_ports: empty"),
    ({"peers": ["app"]}, "visibility.peers: 'app' is not a label as key=value"),
    ({"endpoint_labels": ["app=a", "app=b"]}, "visibility.endpoint_labels: label app given twice"),
    ({"namespaces": ["Bad_NS"]}, "visibility.namespaces: 'Bad_NS' is not a valid namespace name"),
    ({"namespaces": []}, "visibility.namespaces: empty"),
    ({"name": "Not A Name"}, "visibility.name: 'Not A Name' is not a valid Kubernetes object name"),
    ({"mode": "audit"}, "visibility.mode: expected observe or enforce"),
    ({"mode": "enforce", "legacy_allow_all": True}, "visibility.legacy_allow_all: only for mode observe"),
    ({"dns": False, "http_egress": False}, "there is nothing to make visible"),
])
def test_bad_visibility_config_is_refused_naming_the_key(options, message):
    with pytest.raises(ConfigError) as err:
        render(VisibilityConfig(**options))
    assert message in str(err.value)


CNP_PATH = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies/flowlog-l7-visibility"
CNP_KEY = ("ciliumnetworkpolicies", "default", "flowlog-l7-visibility")


def test_apply_is_an_idempotent_server_side_apply(kube_api, capsys):
    assert flowlog("visibility", "apply", "--kubeconfig", kube_api.kubeconfig_path) == 0
    assert capsys.readouterr().out == "CiliumNetworkPolicy default/flowlog-l7-visibility: created\n"
    patches = [r for r in kube_api.requests if r.method == "PATCH"]
    assert [(p.path, p.content_type, p.query) for p in patches] == [
        (CNP_PATH, APPLY_TYPE, {"fieldManager": "flowlog", "force": "true"})]
    stored = kube_api.stored[CNP_KEY]
    assert json.loads(stored)["spec"] == render(VisibilityConfig())[0][0]["spec"]
    assert json.loads(stored)["metadata"]["labels"] == MANAGED

    assert flowlog("visibility", "apply", "--kubeconfig", kube_api.kubeconfig_path) == 0
    assert capsys.readouterr().out == "CiliumNetworkPolicy default/flowlog-l7-visibility: unchanged\n"
    assert kube_api.stored[CNP_KEY] == stored
    assert [r.method for r in kube_api.requests] == ["GET", "PATCH", "GET", "PATCH"]


def test_ensure_visibility_applies_the_configured_policy_at_start(kube_api, caplog):
    caplog.set_level("INFO", logger="flowlog.visibility")
    config = VisibilityConfig(mode="enforce")
    assert [c.action for c in ensure_visibility(config, kube_api.kubeconfig_path).changes] == ["created"]
    # Every DaemonSet pod applies the same object: the second changes nothing.
    assert [c.action for c in ensure_visibility(config, kube_api.kubeconfig_path).changes] == ["unchanged"]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "flowlog.visibility"]
    assert [m for m in messages if m[0] == "INFO"] == [
        ("INFO", "visibility: CiliumNetworkPolicy default/flowlog-l7-visibility: created"),
        ("INFO", "visibility: CiliumNetworkPolicy default/flowlog-l7-visibility: unchanged")]
    assert messages[0][0] == "WARNING" and "DROPPED" in messages[0][1]


def test_dry_run_shows_the_change_and_stores_nothing(kube_api, capsys):
    assert flowlog("visibility", "apply", "--dry-run", "--kubeconfig", kube_api.kubeconfig_path) == 0
    out = capsys.readouterr().out
    assert out.startswith("CiliumNetworkPolicy default/flowlog-l7-visibility: would be created (server dry run)\n")
    assert "+  endpointSelector:" in out
    assert kube_api.stored == {}

    assert flowlog("visibility", "apply", "--kubeconfig", kube_api.kubeconfig_path) == 0
    stored = kube_api.stored[CNP_KEY]
    capsys.readouterr()
    assert flowlog("visibility", "apply", "--dry-run", "--http-port", "9000",
                   "--kubeconfig", kube_api.kubeconfig_path) == 0
    out = capsys.readouterr().out
    assert "would be configured (server dry run)" in out
    assert "-      - port: '80'" in out and "+      - port: '9000'" in out
    assert kube_api.stored[CNP_KEY] == stored
    dry = [r for r in kube_api.requests if r.query.get("dryRun") == "All"]
    assert [r.method for r in dry] == ["PATCH", "PATCH"]


def test_objects_not_managed_by_flowlog_are_never_touched(kube_api):
    foreign = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": "flowlog-l7-visibility", "namespace": "default"},
               "spec": {"endpointSelector": {}, "egress": [{"toEntities": ["world"]}]}}
    kube_api.stored[CNP_KEY] = json.dumps(foreign).encode()
    objects, _ = render(VisibilityConfig())
    client = connect(kube_api.kubeconfig_path)
    with pytest.raises(KubeError, match="exists and is not managed by flowlog"):
        apply(objects, client)
    with pytest.raises(KubeError, match="exists and is not managed by flowlog"):
        delete(objects, client)
    assert {r.method for r in kube_api.requests} == {"GET"}
    assert json.loads(kube_api.stored[CNP_KEY]) == foreign


def test_delete_removes_only_what_exists(kube_api, capsys):
    args = ("--namespace", "default", "--namespace", "shop", "--kubeconfig", kube_api.kubeconfig_path)
    assert flowlog("visibility", "apply", *args) == 0
    assert len(kube_api.stored) == 2
    capsys.readouterr()
    assert flowlog("visibility", "delete", "--dry-run", *args) == 0
    assert capsys.readouterr().out.count("would be deleted (server dry run)") == 2
    assert len(kube_api.stored) == 2
    assert flowlog("visibility", "delete", "--namespace", "shop", "--kubeconfig", kube_api.kubeconfig_path) == 0
    assert capsys.readouterr().out == "CiliumNetworkPolicy shop/flowlog-l7-visibility: deleted\n"
    assert list(kube_api.stored) == [CNP_KEY]
    assert flowlog("visibility", "delete", *args) == 0
    assert capsys.readouterr().out == ("CiliumNetworkPolicy default/flowlog-l7-visibility: deleted\n"
                                       "CiliumNetworkPolicy shop/flowlog-l7-visibility: absent\n")
    assert kube_api.stored == {}


def test_cluster_wide_policy_is_applied_at_the_cluster_scope(kube_api, capsys):
    assert flowlog("visibility", "apply", "--cluster-wide", "--namespace", "a", "--namespace", "b",
                   "--kubeconfig", kube_api.kubeconfig_path) == 0
    [patch] = [r for r in kube_api.requests if r.method == "PATCH"]
    assert patch.path == "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/flowlog-l7-visibility"
    assert schema_errors(json.loads(kube_api.stored[("ciliumclusterwidenetworkpolicies", None,
                                                     "flowlog-l7-visibility")])) == []


def test_unreachable_api_and_missing_crd_are_named(kube_api, tmp_path):
    objects, _ = render(VisibilityConfig())
    with pytest.raises(ConfigError, match="kubeconfig: .*not found"):
        connect(str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(ConfigError, match="kubeconfig: Context 'elsewhere' not found"):
        connect(kube_api.kubeconfig_path, "elsewhere")
    kube_api.PATH = re.compile(r"^/nothing-is-served$")
    with pytest.raises(KubeError, match="get: the API server does not serve cilium.io/v2: is Cilium installed"):
        apply(objects, connect(kube_api.kubeconfig_path))
    dead = FakeKubeAPI(port=1)
    with pytest.raises(KubeError, match="get: cannot reach the Kubernetes API"):
        apply(objects, connect(dead.kubeconfig(tmp_path / "dead")))


def test_refusals_of_the_api_server_are_named(kube_api):
    client = connect(kube_api.kubeconfig_path)
    with pytest.raises(KubeError, match=r'CiliumNetworkPolicy nowhere/flowlog-l7-visibility: apply refused '
                                        r'\(404 NotFound\): namespaces "nowhere" not found'):
        apply(render(VisibilityConfig(namespaces=["nowhere"]))[0], client)
    kube_api.forbidden.add(("PATCH", "ciliumnetworkpolicies"))
    with pytest.raises(KubeError, match=r"apply refused \(403 Forbidden\): .* cannot patch resource"):
        apply(render(VisibilityConfig())[0], client)
    assert kube_api.stored == {}


# --- status: the API stand-in and the real embedded ClickHouse --------------------------------

def http_row(**values) -> list:
    """One http_flows row with every column set: these values, else the column type's zero."""
    def zero(column_type: str):
        if column_type.startswith("DateTime64"):
            return dt.datetime.now(dt.timezone.utc)
        for prefix, value in (("Array", []), ("Map", {}), ("Nullable", None), ("UInt", 0)):
            if column_type.startswith(prefix):
                return value
        return ""
    row = {name: zero(c.type) for c in HTTP_FLOWS.columns if (name := c.name) in HTTP_FLOWS.column_names} | values
    assert set(row) == set(HTTP_FLOWS.column_names), "unknown column"
    return [row[name] for name in HTTP_FLOWS.column_names]


def test_status_reports_policies_and_whether_their_flows_arrive(kube_api, config, client, capsys):
    now = dt.datetime.now(dt.timezone.utc)
    client.insert("http_flows", [
        http_row(time=now - dt.timedelta(minutes=2), src_namespace="default", src_labels=["k8s:app=web"]),
        http_row(time=now - dt.timedelta(minutes=1), dst_namespace="default", flow_id="f2"),
        http_row(time=now - dt.timedelta(hours=2), src_namespace="quiet"),
    ], column_names=list(HTTP_FLOWS.column_names), database=config.store.database)
    store = ("--store", config.store.dsn, "--database", config.store.database, "--kubeconfig", kube_api.kubeconfig_path)
    both = ("--namespace", "default", "--namespace", "quiet")

    assert flowlog("visibility", "apply", "--namespace", "default", *store) == 0
    capsys.readouterr()
    assert flowlog("visibility", "status", *both, *store) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CiliumNetworkPolicy default/flowlog-l7-visibility: in place; "
                               "flows arriving: yes (2 http_flows, 0 dns_flows in the last 15 min, newest ")
    assert lines[1] == ("CiliumNetworkPolicy quiet/flowlog-l7-visibility: missing; "
                        "flows arriving: no (no HTTP or DNS flow in the last 15 min)")

    assert flowlog("visibility", "status", "--namespace", "default", *store) == 0
    capsys.readouterr()
    assert flowlog("visibility", "status", "--namespace", "quiet", "--set", "visibility.status_window_minutes=180",
                   *store) == 1
    assert "flows arriving: yes (1 http_flows" in capsys.readouterr().out

    # A hand edit of the live object is drift, and so is a config that changed since apply.
    live = json.loads(kube_api.stored[CNP_KEY])
    live["spec"]["egress"].pop()
    kube_api.stored[CNP_KEY] = json.dumps(live).encode()
    assert flowlog("visibility", "status", "--namespace", "default", *store) == 1
    assert "differs from the config in spec.egress" in capsys.readouterr().out

    # Policies that select by label count only the flows of endpoints with that label.
    objects = render(VisibilityConfig(endpoint_labels=["app=web"]))[0] + render(VisibilityConfig(
        cluster_wide=True, endpoint_labels=["app=db"]))[0]
    report = status(objects, connect(kube_api.kubeconfig_path), client, config.store.database, 15)
    assert [(p.flows["http_flows"], p.arriving) for p in report.policies] == [(1, True), (0, False)]
