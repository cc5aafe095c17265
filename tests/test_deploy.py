"""`deploy/`: every overlay builds with the real kustomize, every object validates, the config
in the ConfigMap loads with our own loader and fits the DaemonSet's mounts, the Grafana
ConfigMaps hold `grafana/` as it is, and the visibility RBAC grants exactly what the
commands send to a Kubernetes API.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from ingest.config import load

from .helpers import REPO, flowlog

DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.30.0"
OVERLAYS = ["trial", "external-clickhouse"]
VISIBILITY = DEPLOY / "components" / "visibility"


def kustomize(directory: Path) -> list[dict]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def with_visibility(tmp_path: Path, base: Path) -> Path:
    """A kustomization that adds components/visibility to `base`, as a user's overlay would."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes only relative paths
        "resources": [os.path.relpath(base, tmp_path)], "components": [os.path.relpath(VISIBILITY, tmp_path)]}))
    return tmp_path


def builds(tmp_path: Path) -> dict[str, list[dict]]:
    return {
        **{name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS},
        "base+visibility": kustomize(with_visibility(tmp_path, DEPLOY / "base")),
    }


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(objects: list[dict], name: str = "flowlog") -> dict:
    [c] = [c for c in one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, list[dict]]:
    return builds(tmp_path_factory.mktemp("kustomize"))


def test_every_object_of_every_build_validates(built):
    for build, objects in built.items():
        for obj in objects:
            where = f"{build}: {obj['kind']} {obj['metadata']['name']}"
            if obj["apiVersion"] == "monitoring.coreos.com/v1":
                assert obj["kind"] == "PodMonitor", where
                endpoints = obj["spec"]["podMetricsEndpoints"]
                assert obj["spec"]["selector"]["matchLabels"], where
                assert all(e["port"] and e["path"] == "/metrics" for e in endpoints), where
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{where}: {str(err).splitlines()[0]}")
            if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
                assert obj["metadata"]["namespace"] == "flowlog", where


@pytest.mark.parametrize("overlay, dsn", [
    ("trial", "http://flowlog@clickhouse.flowlog.svc:8123"),
    ("external-clickhouse", "https://flowlog@clickhouse.example.com:8443"),
])
def test_the_configmap_config_loads_and_fits_the_daemonset(built, overlay, dsn, tmp_path):
    objects = built[overlay]
    path = tmp_path / "config.yaml"
    config_map = one(objects, "ConfigMap", "flowlog-config")
    path.write_text(config_map["data"]["config.yaml"])
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    main = container(objects)
    # The pod's environment and nothing from this machine.
    config = load(str(path), env={e["name"]: e["value"] for e in main.get("env", [])})
    assert config.store.dsn == dsn
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert main["args"] == ["run", "--config", f"{mounts['config']['mountPath']}/config.yaml"]
    assert config.source.address == f"unix://{mounts['hubble']['mountPath']}/hubble.sock"
    assert mounts["hubble"]["readOnly"] and volumes["hubble"]["hostPath"]["path"] == "/var/run/cilium"
    assert config.state_dir == mounts["state"]["mountPath"] == volumes["state"]["hostPath"]["path"]
    secret_dir = mounts["clickhouse-password"]["mountPath"]
    assert config.store.password_file == f"{secret_dir}/password"
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_timeout_s
    assert config.metrics.address.endswith(":9970")
    assert [p["containerPort"] for p in main["ports"] if p["name"] == "metrics"] == [9970]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = one(objects, "Service", "flowlog-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == one(objects, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()


def test_trial_clickhouse_shares_the_generated_password_secret(built):
    objects = built["trial"]
    secret = one(objects, "Secret", "flowlog-clickhouse")
    assert secret["metadata"]["name"] != "flowlog-clickhouse", "expected a hash-suffixed generated Secret"
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == [secret["metadata"]["name"]]
    clickhouse = one(objects, "StatefulSet", "clickhouse")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in clickhouse["env"]}
    assert env["CLICKHOUSE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                                       "key": "password"}
    # The DSN's user and host are the ones the trial's ClickHouse creates and serves.
    user, host = re.match(r"http://([^@]+)@([^:.]+)", container(objects)["env"][0]["value"]).groups()
    assert (user, host) == (env["CLICKHOUSE_USER"]["value"], one(objects, "Service", "clickhouse")["metadata"]["name"])


def test_the_daemonset_runs_unprivileged_on_every_node(built):
    pod = one(built["trial"], "DaemonSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["terminationGracePeriodSeconds"] == 60
    for c in pod["containers"]:
        assert c["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}
    # The one root step: owning the state directory, with CAP_CHOWN alone.
    [init] = pod["initContainers"]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["command"] == ["chown", f"{dockerfile_uid()}:{dockerfile_uid()}", "/var/lib/flowlog"]
    assert pod["automountServiceAccountToken"] is False


def test_base_grants_nothing_and_the_component_adds_visibility(built):
    for overlay in OVERLAYS:
        assert not [o for o in built[overlay] if o["apiVersion"].startswith("rbac.authorization.k8s.io")]
        assert one(built[overlay], "ServiceAccount")["automountServiceAccountToken"] is False
    objects = built["base+visibility"]
    assert container(objects)["args"][-1] == "--ensure-visibility"
    assert one(objects, "DaemonSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "flowlog", "namespace": "flowlog"}]
    assert one(objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "flowlog"
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]


def test_visibility_rbac_grants_exactly_what_the_commands_send(built, kube_api, config, client, tmp_path, capsys):
    objects = built["base+visibility"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(one(objects, "ConfigMap", "flowlog-config")["data"]["config.yaml"])
    # The deployed config, with the tests' embedded store (no password) for status.
    common = ("--config", str(config_file), "--kubeconfig", kube_api.kubeconfig_path, "--store", config.store.dsn,
              "--database", config.store.database, "--set", "store.password_file=")
    # Every request the commands can make: create, re-apply, dry runs, status, delete, delete again.
    assert flowlog("visibility", "apply", "--dry-run", *common) == 0
    assert flowlog("visibility", "apply", *common) == 0
    assert flowlog("visibility", "apply", *common) == 0
    assert flowlog("visibility", "delete", "--dry-run", *common) == 0
    assert flowlog("visibility", "delete", *common) == 0
    assert flowlog("visibility", "delete", *common) == 0
    assert flowlog("visibility", "status", *common) == 1
    capsys.readouterr()

    rules = one(objects, "ClusterRole")["rules"]
    granted = {(verb, resource) for rule in rules for verb in rule["verbs"] for resource in rule["resources"]}
    assert granted == kube_api.authorizations()
    assert {g for rule in rules for g in rule["apiGroups"]} == {"cilium.io"}
    config = load(str(config_file), env={})
    assert [rule["resourceNames"] for rule in rules] == [[config.visibility.name]]
    assert {r.name for r in kube_api.requests} == {config.visibility.name}


def test_grafana_configmaps_hold_the_files_in_grafana(built):
    dashboards = {p.name: p.read_text() for p in sorted((REPO / "grafana" / "dashboards").glob("*.json"))}
    datasources = {p.name: p.read_text()
                   for p in sorted((REPO / "grafana" / "provisioning" / "datasources").glob("*.yaml"))}
    assert dashboards and datasources
    for build, objects in built.items():
        dashboard_map = one(objects, "ConfigMap", "flowlog-grafana-dashboards")
        assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard_map["data"] == dashboards, build
        datasource_map = one(objects, "ConfigMap", "flowlog-grafana-datasources")
        assert datasource_map["metadata"]["labels"]["grafana_datasource"] == "1"
        assert datasource_map["data"] == datasources, build


def dockerfile_uid() -> int:
    """The image's user, which the DaemonSet's runAsUser and the state directory's owner must match."""
    [user] = re.findall(r"^USER (\d+):\d+$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


def test_the_image_has_no_embedded_engine_and_runs_what_the_daemonset_expects(built):
    text = (REPO / "Dockerfile").read_text()
    installs = re.findall(r"pip install (\S+)", text)
    assert installs == ["."], "the package alone: the embedded extra (chdb) is for the demo and tests"
    assert 'ENTRYPOINT ["flowlog"]' in text
    [cmd] = re.findall(r"^CMD (.+)$", text, re.MULTILINE)
    assert yaml.safe_load(cmd) == container(built["trial"])["args"]
