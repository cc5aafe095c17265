"""`deploy/`: every overlay builds with the real kustomize, every object validates, the config
in the ConfigMap loads with our own loader and fits the DaemonSet's mounts, the Grafana
ConfigMaps hold `grafana/` as it is, the visibility RBAC grants exactly what the
commands send to a Kubernetes API, and the history server (and Hubble UI over it) reads the
store the DaemonSet writes.
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
HISTORY = DEPLOY / "components" / "history"
HUBBLE_UI = DEPLOY / "components" / "hubble-ui"
EXPORTER_FILES = DEPLOY / "components" / "exporter-files"
# Built on top of an overlay, as the components' kustomization.yaml says: the history server
# copies the store's DSN from the DaemonSet, which the overlay's own patches set.
LAYERED = {
    "base+visibility": (DEPLOY / "base", [VISIBILITY]),
    "trial+history": (DEPLOY / "overlays" / "trial", [HISTORY]),
    "external-clickhouse+history+hubble-ui": (DEPLOY / "overlays" / "external-clickhouse", [HISTORY, HUBBLE_UI]),
    "trial+exporter-files": (DEPLOY / "overlays" / "trial", [EXPORTER_FILES]),
}
HUBBLE_HEALTH = {"port": 4245, "service": "hubble.server.Observer"}


def kustomize(directory: Path) -> list[dict]:
    done = kustomize_run(directory)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def kustomize_run(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)


def with_components(tmp_path: Path, base: Path, components: list[Path]) -> Path:
    """A kustomization that adds `components` to `base`, as a user's overlay would."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes only relative paths
        "resources": [os.path.relpath(base, tmp_path)],
        "components": [os.path.relpath(c, tmp_path) for c in components]}))
    return tmp_path


def builds(tmp_path: Path) -> dict[str, list[dict]]:
    return {
        **{name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS},
        **{name: kustomize(with_components(tmp_path / name, base, components))
           for name, (base, components) in LAYERED.items()},
    }


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(objects: list[dict], name: str = "flowlog", kind: str = "DaemonSet", workload: str | None = None) -> dict:
    [c] = [c for c in one(objects, kind, workload)["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def pod_spec(objects: list[dict], kind: str, name: str) -> dict:
    return one(objects, kind, name)["spec"]["template"]["spec"]


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


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", quantity).groups()
    return float(number) * units[unit]


def test_the_daemonsets_resources_cover_what_the_bench_measured(built):
    """Requests and limits come from the bench's node phase, committed in
    bench/results/latest.json: a pod whose limit is below what the ingester was measured
    to hold would be OOM-killed exactly when the store is away."""
    import json

    node = json.loads((REPO / "bench" / "results" / "latest.json").read_text())["node"]
    resources = container(built["trial"])["resources"]
    mib = 2**20  # the bench's "MB" are VmHWM kB / 1024
    # The margins the DaemonSet's comment and the README state.
    assert _bytes(resources["limits"]["memory"]) >= 1.5 * node["outage"]["peak_rss_mb"] * mib
    assert _bytes(resources["requests"]["memory"]) >= 1.25 * node["rates"]["1000"]["peak_rss_mb"] * mib
    assert _bytes(resources["requests"]["cpu"]) >= 1.1 * node["rates"]["1000"]["cores_busy"]
    # The byte budgets bound what a store outage adds to an idle ingester, at any rate.
    batch = load(None, env={}).batch
    bound = (node["rss_at_start_mb"] + batch.queue_mb + 2 * batch.max_mb + 20) * mib
    assert _bytes(resources["limits"]["memory"]) >= 1.2 * bound
    # What one ingester uses flat out must fit under the CPU limit, or its receiving threads are throttled.
    most = max([node["cores_busy"]] + [run["cores_busy"] for run in node["rates"].values()])
    assert _bytes(resources["limits"]["cpu"]) >= 1.2 * most


def test_the_history_servers_resources_cover_what_the_bench_measured(built):
    """From bench/history.py's resources phase, committed in bench/results/history.json:
    `flowlog serve` with the store over HTTP and 1 to serve.max_streams clients at once.
    With the most clients it allows, it must not be OOM-killed."""
    import json

    measured = json.loads((REPO / "bench" / "results" / "history.json").read_text())["resources"]
    resources = container(built["trial+history"], kind="Deployment", workload="flowlog-history")["resources"]
    mib = 2**20
    most = measured[str(load(None, env={}).serve.max_streams)]
    assert _bytes(resources["limits"]["memory"]) >= 1.5 * most["peak_rss_mb"] * mib
    assert _bytes(resources["requests"]["memory"]) >= 1.25 * measured["1"]["peak_rss_mb"] * mib


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


def entrypoint() -> list[str]:
    [line] = re.findall(r"^ENTRYPOINT (.+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return yaml.safe_load(line)


@pytest.mark.parametrize("build", ["trial+history", "external-clickhouse+history+hubble-ui"])
def test_the_history_server_reads_the_store_the_daemonset_writes(built, build, tmp_path):
    objects = built[build]
    path = tmp_path / "config.yaml"
    path.write_text(one(objects, "ConfigMap", "flowlog-config")["data"]["config.yaml"])
    ingester, ingester_pod = container(objects), pod_spec(objects, "DaemonSet", "flowlog")
    server = container(objects, kind="Deployment", workload="flowlog-history")
    pod = pod_spec(objects, "Deployment", "flowlog-history")
    assert one(objects, "Deployment", "flowlog-history")["spec"]["replicas"] == 1

    # `flowlog serve --listen 0.0.0.0:4245`, the same image and config file as `flowlog run`.
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert server["image"] == ingester["image"]
    assert "command" not in server and "command" not in ingester
    assert entrypoint() + server["args"] == ["flowlog", "serve", "--listen", "0.0.0.0:4245",
                                             "--config", f"{mounts['config']['mountPath']}/config.yaml"]
    assert server["args"][-2:] == ingester["args"][-2:]
    # The same store, from the same ConfigMap, Secret and environment (the DSN copied from the
    # DaemonSet's); /metrics of its own, where its annotations and PodMonitor say.
    run = load(str(path), env={e["name"]: e["value"] for e in ingester["env"]})
    serve = load(str(path), env={e["name"]: e["value"] for e in server["env"]})
    assert serve.store == run.store
    assert serve.store.dsn.startswith("http")  # the DaemonSet's, not the component's placeholder
    metrics_port = int(serve.serve.metrics_address.rpartition(":")[2])
    assert [p["containerPort"] for p in server["ports"] if p["name"] == "metrics"] == [metrics_port]
    annotations = one(objects, "Deployment", "flowlog-history")["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(metrics_port), "/metrics")
    monitor = one(objects, "PodMonitor", "flowlog-history")
    assert monitor["spec"]["selector"]["matchLabels"] == one(objects, "Deployment", "flowlog-history")[
        "spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    ingester_mounts = {m["name"]: m for m in ingester["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    ingester_volumes = {v["name"]: v for v in ingester_pod["volumes"]}
    for name in ("config", "clickhouse-password"):
        assert mounts[name] == ingester_mounts[name]
        assert volumes[name] == ingester_volumes[name]
    assert serve.store.password_file == f"{mounts['clickhouse-password']['mountPath']}/password"

    # No host paths, no Kubernetes API, and the DaemonSet's restrictions.
    assert set(volumes) == {"config", "clickhouse-password"}
    assert not any("hostPath" in v for v in pod["volumes"])
    assert pod["automountServiceAccountToken"] is False
    assert one(objects, "ServiceAccount", "flowlog-history")["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "flowlog-history"
    assert server["securityContext"] == ingester["securityContext"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": dockerfile_uid(),
                                      "runAsGroup": dockerfile_uid(), "seccompProfile": {"type": "RuntimeDefault"}}
    assert set(server["resources"]) == {"requests", "limits"} and "cpu" not in server["resources"]["limits"]

    # Ready: gRPC health of hubble.server.Observer (what `hubble status` asks; not serving while
    # the store does not answer). Alive: the server itself, so a store outage restarts nothing.
    assert [p["containerPort"] for p in server["ports"] if p["name"] == "grpc"] == [4245]
    assert server["readinessProbe"]["grpc"] == HUBBLE_HEALTH
    assert server["livenessProbe"]["grpc"] == {"port": 4245, "service": ""}


def test_the_history_service_answers_on_4245_and_scrapes_only_the_ingesters(built):
    objects = built["external-clickhouse+history+hubble-ui"]
    service = one(objects, "Service", "flowlog-history")
    assert service["metadata"]["namespace"] == "flowlog"  # hubble observe --server flowlog-history.flowlog:4245
    assert service["spec"]["ports"] == [{"name": "grpc", "port": 4245, "targetPort": "grpc", "protocol": "TCP"}]
    history = one(objects, "Deployment", "flowlog-history")
    labels = history["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == history["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ingester_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= ingester_labels.items()
    # The ingesters' metrics Service and PodMonitor do not pick up the history server.
    assert not one(objects, "Service", "flowlog-metrics")["spec"]["selector"].items() <= labels.items()
    [ingesters] = [o for o in objects if o["kind"] == "PodMonitor" and o["metadata"]["name"] == "flowlog"]
    assert not ingesters["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_hubble_ui_reads_the_history_server_and_lists_namespaces_only(built):
    objects = built["external-clickhouse+history+hubble-ui"]
    history = one(objects, "Service", "flowlog-history")
    backend = container(objects, "backend", "Deployment", "hubble-ui")
    frontend = container(objects, "frontend", "Deployment", "hubble-ui")
    env = {e["name"]: e["value"] for e in backend["env"]}
    # Same namespace, so the Service's short name resolves; plaintext, as flowlog serve listens.
    assert env["FLOWS_API_ADDR"] == f"{history['metadata']['name']}:{history['spec']['ports'][0]['port']}"
    assert one(objects, "Deployment", "hubble-ui")["metadata"]["namespace"] == history["metadata"]["namespace"]
    assert not any(name.startswith("TLS_") for name in env)
    for c in (frontend, backend):
        assert re.fullmatch(r"quay\.io/cilium/hubble-ui(-backend)?:v[\d.]+@sha256:[0-9a-f]{64}", c["image"]), c["image"]
        assert c["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}
    assert frontend["image"].split("@")[0].split(":")[1] == backend["image"].split("@")[0].split(":")[1]

    # Upstream's Service: port 80 to the frontend's 8081, whose nginx passes /api to the backend.
    service = one(objects, "Service", "hubble-ui")
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert [p["containerPort"] for p in frontend["ports"] if p["name"] == "http"] == [8081]
    pod = pod_spec(objects, "Deployment", "hubble-ui")
    assert service["spec"]["selector"].items() <= one(objects, "Deployment", "hubble-ui")[
        "spec"]["template"]["metadata"]["labels"].items()
    nginx = one(objects, "ConfigMap", "hubble-ui-nginx")
    assert {v["name"]: v for v in pod["volumes"]}["nginx-conf"]["configMap"]["name"] == nginx["metadata"]["name"]
    assert f"proxy_pass http://127.0.0.1:{env['EVENTS_SERVER_PORT']};" in nginx["data"]["nginx.conf"]
    assert "listen 8081;" in nginx["data"]["nginx.conf"]

    # The backend watches namespaces through the Kubernetes API: that, and nothing else.
    [role] = [o for o in objects if o["kind"] == "ClusterRole"]
    [binding] = [o for o in objects if o["kind"] == "ClusterRoleBinding"]
    assert role["metadata"]["name"] != "hubble-ui", "Cilium's own hubble-ui ClusterRole may exist"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": "flowlog"}]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_history_component_inside_the_overlay_that_sets_the_dsn_fails_loudly(tmp_path):
    """An overlay's patches run after its components: the DSN is not there yet to copy, and the
    build stops instead of deploying a server without a store (the README says to layer it)."""
    overlay = DEPLOY / "overlays" / "external-clickhouse"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["resources"] = [os.path.relpath(DEPLOY / "base", tmp_path)]
    kustomization["components"] = [os.path.relpath(HISTORY, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    done = kustomize_run(tmp_path)
    assert done.returncode != 0
    assert "is missing for replacement source" in done.stderr


def test_the_exporter_files_component_reads_the_exporters_directory_only_read_only(built, tmp_path):
    objects = built["trial+exporter-files"]
    path = tmp_path / "config.yaml"
    path.write_text(one(objects, "ConfigMap", "flowlog-config")["data"]["config.yaml"])
    main = container(objects)
    config = load(str(path), env={e["name"]: e["value"] for e in main["env"]})
    assert config.store.dsn == "http://flowlog@clickhouse.flowlog.svc:8123"  # the overlay's own env kept
    [events] = config.source.files
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(objects, "DaemonSet", "flowlog")["volumes"]}
    directory = os.path.dirname(events)
    assert events == "/var/run/cilium/hubble/events.log"
    assert mounts[directory]["readOnly"] and volumes[mounts[directory]["name"]]["hostPath"] == {
        "path": directory, "type": "Directory"}
    # hubble.sock, one directory up, is not reachable from the pod.
    assert not any(m == "/var/run/cilium" or "/var/run/cilium/".startswith(m + "/") for m in mounts)
