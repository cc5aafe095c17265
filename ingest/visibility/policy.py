"""Renders the Cilium policies that make Hubble see L7 traffic, from the `visibility` config.

Hubble shows HTTP and DNS flows only for traffic that an L7 CiliumNetworkPolicy sends
through Cilium's proxy, and an L7 policy also enforces. Two shapes are rendered:

- `observe`: `enableDefaultDeny: {egress: false, ingress: false}` (Cilium >= 1.16) with
  allow-all L7 rules, so the selected endpoints never fall into default deny and every
  port stays open; the L7 rules only redirect their ports to the proxy. For older Cilium,
  `legacy_allow_all` renders an explicit allow-all rule (`toEntities`/`fromEntities: all`)
  instead, since a proxy redirect takes precedence over a plain allow on the same port.
- `enforce`: the restrictive shape of the issue's reference scenario: the endpoints are put
  in default deny, and only DNS and HTTP to the peers stay allowed.

Pure: builds plain dicts and knows nothing of the Kubernetes API (`kube` applies them).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from ..config import ConfigError, VisibilityConfig

API_VERSION = "cilium.io/v2"
NAMESPACED_KIND = "CiliumNetworkPolicy"
CLUSTER_KIND = "CiliumClusterwideNetworkPolicy"
MANAGED_BY = {"app.kubernetes.io/managed-by": "flowlog"}
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
DNS_PORT = "53"

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
# Cilium label keys may carry a source ("k8s:app"); the rest is a Kubernetes label key.
_LABEL_KEY = re.compile(rf"([a-z0-9-]+:)?({_DNS1123_LABEL}(\.{_DNS1123_LABEL})*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def render(config: VisibilityConfig) -> tuple[list[dict], list[str]]:
    """The policy objects for this config, and warnings for the user (what enforce denies).

    Raises ConfigError, naming the key, for a config that cannot be rendered safely."""
    _check(config)
    endpoint_labels = _labels("visibility.endpoint_labels", config.endpoint_labels)
    peer_labels = _labels("visibility.peers", config.peers)
    ports = _http_ports(config)
    if config.cluster_wide:
        if endpoint_labels:
            scopes = [_Scope(None, [], endpoint_labels)]
        else:
            scopes = [_Scope(None, _namespaces(config), {})]
    else:
        scopes = [_Scope(ns, [ns], endpoint_labels) for ns in _namespaces(config)]
    objects, warnings = [], []
    for scope in scopes:
        peers = _peers(config, scope, peer_labels)
        policy = _policy(config, scope, peers, ports)
        objects.append(policy)
        if config.mode == "enforce":
            warnings.append(_enforce_warning(config, policy, scope, peers, ports))
    return objects, warnings


@dataclass
class _Scope:
    """Which endpoints one policy selects: its namespace (None: cluster-wide) and labels."""
    home: str | None
    namespaces: list[str]
    labels: dict[str, str]

    def selector(self) -> dict:
        return {"matchLabels": dict(self.labels)} if self.labels else self.namespace_selector()

    def namespace_selector(self) -> dict:
        """Every endpoint of this scope's namespaces (all, for a label-selecting cluster-wide policy)."""
        if self.home is not None:
            return {"matchLabels": {NAMESPACE_LABEL: self.home}}
        if self.namespaces:
            return {"matchExpressions": [{"key": NAMESPACE_LABEL, "operator": "In", "values": list(self.namespaces)}]}
        return {}

    def describe(self) -> str:
        where = (f"namespace {self.home}" if self.home is not None
                 else f"namespaces {', '.join(self.namespaces)}" if self.namespaces else "every namespace")
        if self.labels:
            return f"endpoints labelled {_label_text(self.labels)} in {where}"
        return f"endpoints in {where}"


def _check(config: VisibilityConfig) -> None:
    if not _NAME.fullmatch(config.name) or len(config.name) > 253:
        raise ConfigError(f"visibility.name: {config.name!r} is not a valid Kubernetes object name "
                          "(lower-case letters, digits, '-' and '.')")
    if config.mode not in ("observe", "enforce"):
        raise ConfigError(f"visibility.mode: expected observe or enforce, got {config.mode!r}")
    if config.legacy_allow_all and config.mode == "enforce":
        raise ConfigError("visibility.legacy_allow_all: only for mode observe; its allow-all rule "
                          "would undo the restriction that enforce is for")
    if not (config.dns or config.http_egress or config.http_ingress):
        raise ConfigError("visibility.dns, visibility.http_egress and visibility.http_ingress are all off: "
                          "there is nothing to make visible")


def _namespaces(config: VisibilityConfig) -> list[str]:
    if not config.namespaces:
        raise ConfigError("visibility.namespaces: empty; name at least one namespace "
                          "(or set visibility.cluster_wide with visibility.endpoint_labels)")
    for ns in config.namespaces:
        if not re.fullmatch(_DNS1123_LABEL, ns):
            raise ConfigError(f"visibility.namespaces: {ns!r} is not a valid namespace name")
    return list(dict.fromkeys(config.namespaces))


def _labels(key: str, items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.fullmatch(name) or not _LABEL_VALUE.fullmatch(value):
            raise ConfigError(f"{key}: {item!r} is not a label as key=value (e.g. app=frontend)")
        if labels.get(name, value) != value:
            raise ConfigError(f"{key}: label {name} given twice with different values")
        labels[name] = value
    return labels


def _http_ports(config: VisibilityConfig) -> list[str]:
    if not (config.http_egress or config.http_ingress):
        return []
    if not config.http_ports:
        raise ConfigError("visibility.http_ports: empty while visibility.http_egress or http_ingress is on")
    for port in config.http_ports:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"visibility.http_ports: {port!r} is not a port number (1-65535)")
        if int(port) == int(DNS_PORT):
            # The only way a config can ask for DNS on ingress, so the refusal says why there is none.
            raise ConfigError(
                "visibility.http_ports: port 53 carries DNS, and an HTTP rule would break it. DNS "
                "visibility is visibility.dns, and it is egress-only: Cilium's agent rejects DNS rules on "
                "ingress, so a DNS server's traffic is seen on its clients' egress (turn visibility.dns "
                "on for the clients' namespaces)")
    return [str(int(p)) for p in dict.fromkeys(config.http_ports)]


def _peers(config: VisibilityConfig, scope: _Scope, peer_labels: dict[str, str]) -> list[dict] | None:
    """The HTTP rules' peer selectors; None means any peer (no L3 restriction)."""
    if peer_labels:
        return [{"matchLabels": dict(peer_labels)}]
    if config.mode == "enforce":
        return [scope.namespace_selector()]
    return None


def _policy(config: VisibilityConfig, scope: _Scope, peers: list[dict] | None, ports: list[str]) -> dict:
    egress, ingress = [], []
    if config.dns:
        egress.append({"toPorts": [{"ports": [{"port": DNS_PORT, "protocol": "ANY"}],
                                    "rules": {"dns": [{"matchPattern": "*"}]}}]})
    if config.http_egress:
        egress.append(_http_rule("toEndpoints", peers, ports))
    if config.http_ingress:
        ingress.append(_http_rule("fromEndpoints", peers, ports))
    if config.legacy_allow_all:
        if egress:
            egress.insert(0, {"toEntities": ["all"]})
        if ingress:
            ingress.insert(0, {"fromEntities": ["all"]})
    spec: dict = {"endpointSelector": scope.selector()}
    if config.mode == "observe" and not config.legacy_allow_all:
        spec["enableDefaultDeny"] = {"egress": False, "ingress": False}
    if egress:
        spec["egress"] = egress
    if ingress:
        spec["ingress"] = ingress
    metadata = {"name": config.name}
    if scope.home is not None:
        metadata["namespace"] = scope.home
    metadata["labels"] = dict(MANAGED_BY)
    kind = NAMESPACED_KIND if scope.home is not None else CLUSTER_KIND
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def _http_rule(peer_key: str, peers: list[dict] | None, ports: list[str]) -> dict:
    """An allow-all HTTP rule on these ports; fresh dicts each time, so the YAML has no anchors."""
    rule = {peer_key: copy.deepcopy(peers)} if peers is not None else {}
    rule["toPorts"] = [{"ports": [{"port": p, "protocol": "TCP"} for p in ports], "rules": {"http": [{}]}}]
    return rule


def _enforce_warning(config: VisibilityConfig, policy: dict, scope: _Scope, peers: list[dict],
                     ports: list[str]) -> str:
    to_peers = _peer_text(peers, scope)
    on_ports = f"port {ports[0]}" if len(ports) == 1 else f"ports {', '.join(ports)}"
    parts = []
    if config.dns or config.http_egress:
        allowed = []
        if config.dns:
            allowed.append("DNS on port 53")
        if config.http_egress:
            allowed.append(f"HTTP on {on_ports} to {to_peers}")
        lost = "" if config.dns else " (DNS lookups included)"
        parts.append(f"all egress{lost} except {' and '.join(allowed)}")
    if config.http_ingress:
        parts.append(f"all ingress except HTTP on {on_ports} from {to_peers}")
    return (f"mode enforce: {object_ref(policy)} puts {scope.describe()} in "
            f"default deny: {' and '.join(parts)} will be DROPPED (mode observe keeps all traffic allowed)")


def _peer_text(peers: list[dict], scope: _Scope) -> str:
    selector = peers[0]
    if "matchLabels" in selector:
        labels = dict(selector["matchLabels"])
        # A namespaced policy's peer selector only matches its own namespace unless it names one.
        namespace = labels.pop(NAMESPACE_LABEL, scope.home)
        if not labels:
            return f"endpoints in namespace {namespace}"
        return f"endpoints labelled {_label_text(labels)}" + (f" in namespace {namespace}" if namespace else "")
    if "matchExpressions" in selector:
        return f"endpoints in namespaces {', '.join(selector['matchExpressions'][0]['values'])}"
    return "endpoints of the cluster"


def _label_text(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def object_ref(obj: dict) -> str:
    """'CiliumNetworkPolicy default/name' or 'CiliumClusterwideNetworkPolicy name', for messages."""
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"
