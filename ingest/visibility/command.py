"""`flowlog visibility render|apply|delete|status` and `flowlog run --ensure-visibility`.

The flags only override keys of the `visibility` config section (`visibility_overrides`),
so the config loader types and checks them like the file and the environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

import yaml

from ..config import Config, VisibilityConfig
from .kube import ApplyReport, apply, connect, delete
from .policy import render
from .status import status

log = logging.getLogger("flowlog.visibility")

# config key -> argparse dest; prefixed so they never collide with another command's flags
# (`run --namespace` sets source.namespaces).
_FLAGS = {
    "visibility.name": "visibility_name",
    "visibility.namespaces": "visibility_namespaces",
    "visibility.endpoint_labels": "visibility_endpoint_labels",
    "visibility.cluster_wide": "visibility_cluster_wide",
    "visibility.http_ports": "visibility_http_ports",
    "visibility.dns": "visibility_dns",
    "visibility.http_ingress": "visibility_http_ingress",
    "visibility.http_egress": "visibility_http_egress",
    "visibility.peers": "visibility_peers",
    "visibility.mode": "visibility_mode",
    "visibility.legacy_allow_all": "visibility_legacy_allow_all",
}

_ACTIONS = {
    "render": "print the policies as YAML (nothing is sent to the cluster)",
    "apply": "create or update the policies by server-side apply (field manager flowlog)",
    "delete": "delete the policies (only those labelled app.kubernetes.io/managed-by=flowlog)",
    "status": "is each policy in place as configured, and are its L7 flows reaching the store? "
              "(exit 0 when all are, else 1)",
}


def add_visibility_parser(subparsers, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `visibility ACTION` to the `flowlog` subcommands; `common` adds the shared flags."""
    parser = subparsers.add_parser(
        "visibility", help="render, apply, delete or check the L7 policy that makes Hubble see HTTP and DNS",
        description="Hubble shows HTTP and DNS flows only for endpoints selected by an L7 CiliumNetworkPolicy. "
                    "Mode observe (default) keeps all traffic allowed (Cilium >= 1.16, or --legacy-allow-all); "
                    "mode enforce denies what the policy does not allow.")
    actions = parser.add_subparsers(dest="visibility_command", required=True, metavar="ACTION")
    for action, text in _ACTIONS.items():
        sub = actions.add_parser(action, help=text, description=text)
        common(sub)
        _policy_flags(sub)
        if action != "render":
            sub.add_argument("--kubeconfig", metavar="FILE",
                             help="default: the pod's service account, else $KUBECONFIG, else ~/.kube/config")
            sub.add_argument("--context", help="kubeconfig context (default: its current context)")
        if action in ("apply", "delete"):
            sub.add_argument("--dry-run", action="store_true",
                             help="the API server computes the result (dryRun=All) and stores nothing")


def _policy_flags(parser: argparse.ArgumentParser) -> None:
    flag = parser.add_argument
    flag("--name", dest="visibility_name", metavar="NAME", help="policy name (default flowlog-l7-visibility)")
    flag("--namespace", dest="visibility_namespaces", action="append", metavar="NS",
         help="namespace whose endpoints get visibility, one policy each (repeatable; default: default)")
    flag("--endpoint-label", dest="visibility_endpoint_labels", action="append", metavar="KEY=VALUE",
         help="select the endpoints with these labels, not whole namespaces: within each --namespace, or "
              "with --cluster-wide in every namespace (repeatable; all must match)")
    flag("--cluster-wide", dest="visibility_cluster_wide", action="store_const", const=True,
         help="one CiliumClusterwideNetworkPolicy for all the namespaces (or labels) instead of one per namespace")
    flag("--http-port", dest="visibility_http_ports", action="append", metavar="PORT",
         help="port whose HTTP is made visible (repeatable; default 80 and 8080)")
    flag("--no-dns", dest="visibility_dns", action="store_const", const=False,
         help="no DNS visibility (DNS is seen on egress only, port 53)")
    flag("--http-ingress", dest="visibility_http_ingress", action="store_const", const=True,
         help="also see HTTP arriving at the endpoints")
    flag("--no-http-egress", dest="visibility_http_egress", action="store_const", const=False,
         help="do not see HTTP sent by the endpoints")
    flag("--peer", dest="visibility_peers", action="append", metavar="KEY=VALUE",
         help="only HTTP with peers carrying these labels (repeatable; all must match; a peer in another "
              "namespace needs k8s:io.kubernetes.pod.namespace=NS). Default: any peer in observe mode, "
              "the endpoints' own namespaces in enforce mode")
    flag("--mode", dest="visibility_mode", choices=["observe", "enforce"],
         help="observe (default): nothing is denied; enforce: everything else is denied")
    flag("--legacy-allow-all", dest="visibility_legacy_allow_all", action="store_const", const=True,
         help="observe on Cilium < 1.16 (no enableDefaultDeny): add explicit allow-all rules")


def visibility_overrides(args: argparse.Namespace) -> dict:
    """The `visibility.*` config overrides given by flags (none for other commands)."""
    return {key: getattr(args, dest) for key, dest in _FLAGS.items() if getattr(args, dest, None) is not None}


def run_visibility(args: argparse.Namespace, config: Config, open_store: Callable[[], object]) -> int:
    """Run `flowlog visibility ACTION`; open_store() gives a ClickHouse client, used by status only."""
    objects, warnings = render(config.visibility)
    action = args.visibility_command
    if action in ("render", "apply"):
        for warning in warnings:
            print(f"flowlog: warning: {warning}", file=sys.stderr)
    if action == "render":
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
        return 0
    client = connect(args.kubeconfig, args.context)
    try:
        if action == "apply":
            report = apply(objects, client, args.dry_run)
        elif action == "delete":
            report = delete(objects, client, args.dry_run)
        else:
            store = open_store()
            try:
                report = status(objects, client, store, config.store.database,
                                config.visibility.status_window_minutes)
            finally:
                store.close()
    finally:
        client.close()
    for line in report.lines():
        print(line)
    return 0 if action != "status" or report.ok else 1


def ensure_visibility(visibility: VisibilityConfig, kubeconfig: str | None = None,
                      context: str | None = None) -> ApplyReport:
    """`flowlog run --ensure-visibility`: apply the configured policies once, at start."""
    objects, warnings = render(visibility)
    for warning in warnings:
        log.warning(warning)
    client = connect(kubeconfig, context)
    try:
        report = apply(objects, client)
    finally:
        client.close()
    for line in report.lines():
        log.info("visibility: %s", line)
    return report
