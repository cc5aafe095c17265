"""L7 visibility: the CiliumNetworkPolicy that makes Hubble see HTTP and DNS, and its lifecycle.

`policy` renders the objects from the config (pure), `kube` applies, deletes and reads them
through the Kubernetes API, `status` checks them and the store, `command` is the
`flowlog visibility` command line and `run --ensure-visibility`.
"""

from .command import add_visibility_parser, ensure_visibility, run_visibility, visibility_overrides
from .kube import ApplyReport, DeleteReport, KubeError, apply, connect, delete
from .policy import render
from .status import StatusReport, status

__all__ = ["render", "apply", "delete", "status", "connect", "KubeError", "ApplyReport", "DeleteReport",
           "StatusReport", "add_visibility_parser", "run_visibility", "visibility_overrides", "ensure_visibility"]
