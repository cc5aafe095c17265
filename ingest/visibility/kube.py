"""Applies and deletes the visibility policies, and reads them back, through the Kubernetes API.

Every request names one object: GET to see what is there, PATCH (server-side apply) to
create or update it, DELETE to remove it; nothing is listed or watched. An apply that
creates the object is also authorized by the API server as `create`, so those four verbs
are what `deploy/components/visibility` grants. Objects that exist without the label
`app.kubernetes.io/managed-by: flowlog` are never changed or deleted.

Server-side apply is forced: the config is the one declaration of these objects, and
every DaemonSet pod applies the same object under the same field manager, so a conflict
can only come from a hand edit, which `flowlog visibility status` reports as drift.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import httpx2
import yaml
from lightkube import ApiError, Client, KubeConfig
from lightkube.core.exceptions import ConfigError as KubeConfigError
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from ..config import ConfigError
from .policy import API_VERSION, CLUSTER_KIND, MANAGED_BY, NAMESPACED_KIND, object_ref

FIELD_MANAGER = "flowlog"

_GROUP, _VERSION = API_VERSION.split("/")
RESOURCES = {
    NAMESPACED_KIND: create_namespaced_resource(_GROUP, _VERSION, NAMESPACED_KIND, "ciliumnetworkpolicies"),
    CLUSTER_KIND: create_global_resource(_GROUP, _VERSION, CLUSTER_KIND, "ciliumclusterwidenetworkpolicies"),
}


class KubeError(RuntimeError):
    """The Kubernetes API could not be reached, refused a request, or holds an object not ours."""


def connect(kubeconfig: str | None = None, context: str | None = None) -> Client:
    """A client from this kubeconfig file, else the pod's service account, $KUBECONFIG or ~/.kube/config."""
    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        return Client(config.get(context_name=context))
    except KubeConfigError as err:
        raise ConfigError(f"kubeconfig: {err}") from None
    except KeyError as err:
        raise ConfigError(f"kubeconfig: missing {err}") from None


@dataclass
class Change:
    ref: str
    # created, configured or unchanged
    action: str
    # unified diff of labels and spec, before -> after
    diff: str


@dataclass
class ApplyReport:
    dry_run: bool
    changes: list[Change]

    def lines(self) -> list[str]:
        lines = []
        for change in self.changes:
            action = f"would be {change.action} (server dry run)" if self.dry_run else change.action
            lines.append(f"{change.ref}: {action}")
            if self.dry_run and change.diff:
                lines += ["  " + line for line in change.diff.splitlines()]
        return lines


@dataclass
class DeleteReport:
    dry_run: bool
    # (object reference, "deleted" or "absent")
    results: list[tuple[str, str]]

    def lines(self) -> list[str]:
        return [f"{ref}: {'would be deleted (server dry run)' if self.dry_run and what == 'deleted' else what}"
                for ref, what in self.results]


def apply(objects: list[dict], client: Client, dry_run: bool = False) -> ApplyReport:
    """Server-side apply each object; with dry_run the API server computes the result and stores nothing."""
    before = [get_owned(client, obj) for obj in objects]
    changes = []
    for obj, old in zip(objects, before, strict=True):
        new = dict(_call("apply", obj, client.apply, RESOURCES[obj["kind"]](obj), field_manager=FIELD_MANAGER,
                         force=True, dry_run=dry_run))
        old_view, new_view = _view(old), _view(new)
        action = "created" if old is None else "unchanged" if old_view == new_view else "configured"
        changes.append(Change(object_ref(obj), action, _diff(old_view, new_view, object_ref(obj))))
    return ApplyReport(dry_run, changes)


def delete(objects: list[dict], client: Client, dry_run: bool = False) -> DeleteReport:
    """Delete each object that exists; refuses, before deleting anything, if one is not ours."""
    before = [get_owned(client, obj) for obj in objects]
    return DeleteReport(dry_run, [
        (object_ref(obj), "deleted" if old is not None and _delete(client, obj, dry_run) else "absent")
        for obj, old in zip(objects, before, strict=True)])


def _delete(client: Client, obj: dict, dry_run: bool) -> bool:
    """False when the object was gone already: deleted by someone else since we read it."""
    try:
        _call("delete", obj, client.delete, RESOURCES[obj["kind"]], obj["metadata"]["name"],
              namespace=obj["metadata"].get("namespace"), dry_run=dry_run)
    except _NotFound:
        return False
    return True


def get(client: Client, obj: dict) -> dict | None:
    """The live object of this name and kind, or None when there is none."""
    try:
        return dict(_call("get", obj, client.get, RESOURCES[obj["kind"]], obj["metadata"]["name"],
                          namespace=obj["metadata"].get("namespace")))
    except _NotFound:
        return None


def is_managed(live: dict) -> bool:
    labels = (live.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in MANAGED_BY.items())


def get_owned(client: Client, obj: dict) -> dict | None:
    """The live object, or None; a live object without our label stops the operation."""
    live = get(client, obj)
    if live is not None and not is_managed(live):
        label = ", ".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        raise KubeError(f"{object_ref(obj)} exists and is not managed by flowlog (no label {label}): "
                        "refusing to change or delete it; choose another visibility.name")
    return live


class _NotFound(Exception):
    pass


def _call(action: str, obj: dict, request, *args, **kwargs):
    """request(*args, **kwargs), with every failure turned into a KubeError naming the object."""
    try:
        return request(*args, **kwargs)
    except ApiError as err:
        if err.status.code == 404 and action in ("get", "delete"):
            raise _NotFound() from None
        raise KubeError(f"{object_ref(obj)}: {action} refused ({err.status.code} {err.status.reason}): "
                        f"{err.status.message}") from None
    except httpx2.HTTPStatusError as err:
        # An error without a Status body: what the API server answers for a group it does not serve.
        if err.response.status_code == 404:
            raise KubeError(f"{object_ref(obj)}: {action}: the API server does not serve {API_VERSION}: "
                            "is Cilium installed?") from None
        raise KubeError(f"{object_ref(obj)}: {action} refused ({err.response.status_code}): "
                        f"{err.response.text[:200]}") from None
    except httpx2.HTTPError as err:
        raise KubeError(f"{object_ref(obj)}: {action}: cannot reach the Kubernetes API: {err}") from None


def _view(obj: dict | None) -> dict:
    """What apply decides: labels and spec (metadata such as resourceVersion changes on its own)."""
    if obj is None:
        return {}
    return {"metadata": {"labels": (obj.get("metadata") or {}).get("labels") or {}}, "spec": obj.get("spec")}


def _diff(old: dict, new: dict, ref: str) -> str:
    def text(view: dict) -> list[str]:
        return yaml.safe_dump(view, sort_keys=False).splitlines(keepends=True) if view else []
    return "".join(difflib.unified_diff(text(old), text(new), f"{ref} (live)", f"{ref} (applied)"))
