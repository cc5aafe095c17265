"""A Kubernetes API server stand-in for `flowlog visibility`: just enough kube-apiserver, on
loopback, for named Cilium custom objects (the `kube_api` fixture in conftest.py serves it)."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

import yaml

APPLY_TYPE = "application/apply-patch+yaml"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: bytes
    status: int = 0
    resource: str = ""
    name: str | None = None


@dataclass
class FakeKubeAPI:
    """Just enough kube-apiserver for named custom objects: server-side apply (create, or replace
    labels and spec; a no-op leaves the stored bytes alone), get, list, delete, and dryRun=All."""
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    stored: dict[tuple[str, str | None, str], bytes] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=lambda: {"default", "shop"})
    # (HTTP method, resource) pairs the caller is not allowed, as RBAC would refuse them
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    _revision: int = 0

    PATH = re.compile(r"^/apis/cilium\.io/v2(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$")

    def serve(self, request: Request) -> tuple[int, dict | bytes]:
        match = self.PATH.match(request.path)
        if not match:
            # As kube-apiserver answers for an API group it does not serve (no Cilium CRDs).
            return 404, b"404 page not found\n"
        namespace, request.resource, request.name = match["ns"], match["resource"], match["name"]
        if (request.method, request.resource) in self.forbidden:
            return 403, _status(403, "Forbidden", f'{request.resource}.cilium.io "{request.name}" is forbidden: '
                                f'User "system:serviceaccount:flowlog:flowlog" cannot {request.method.lower()} '
                                f'resource "{request.resource}"')
        if namespace is not None and namespace not in self.namespaces:
            return 404, _status(404, "NotFound", f'namespaces "{namespace}" not found')
        dry_run = request.query.get("dryRun") == "All"
        key = (request.resource, namespace, request.name)
        if request.method == "GET" and request.name is None:
            items = [json.loads(v) for (resource, ns, _), v in self.stored.items()
                     if (resource, ns) == (request.resource, namespace)]
            return 200, {"kind": "List", "apiVersion": "v1", "items": items}
        if request.method == "GET":
            return (200, self.stored[key]) if key in self.stored else (404, _status(404, "NotFound", "not found"))
        if request.method == "DELETE":
            if key not in self.stored:
                return 404, _status(404, "NotFound", "not found")
            if not dry_run:
                del self.stored[key]
            return 200, _status(200, "", "deleted")
        if request.method == "PATCH":
            if request.content_type != APPLY_TYPE:
                return 415, _status(415, "UnsupportedMediaType", request.content_type or "")
            if not request.query.get("fieldManager"):
                return 422, _status(422, "Invalid", "fieldManager is required for apply patch")
            applied = yaml.safe_load(request.body)
            old = json.loads(self.stored[key]) if key in self.stored else None
            if old is not None and (old["metadata"].get("labels"), old["spec"]) == (
                    applied["metadata"].get("labels"), applied["spec"]):
                return 200, self.stored[key]
            self._revision += 1
            meta = {"name": request.name, **({"namespace": namespace} if namespace else {}),
                    "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
                    "resourceVersion": str(self._revision), "labels": applied["metadata"].get("labels", {})}
            new = json.dumps({"apiVersion": applied["apiVersion"], "kind": applied["kind"], "metadata": meta,
                              "spec": applied["spec"]}).encode()
            if not dry_run:
                self.stored[key] = new
            return (201 if old is None else 200), new
        return 405, _status(405, "MethodNotAllowed", request.method)

    def kubeconfig(self, path) -> str:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "nobody"}}]}))
        return str(path)

    def authorizations(self) -> set[tuple[str, str]]:
        """(verb, resource) as the API server's authorizer sees each recorded request. An apply
        that creates the object is authorized as create too."""
        verbs = set()
        for r in self.requests:
            if r.method == "PATCH":
                verbs.add(("patch", r.resource))
                if r.status == 201:
                    verbs.add(("create", r.resource))
            elif r.method == "GET":
                verbs.add(("get" if r.name else "list", r.resource))
            elif r.method == "DELETE":
                verbs.add(("delete", r.resource))
        return verbs


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Success" if code < 400 else "Failure",
            "reason": reason, "message": message, "code": code}
