"""The folders show the path of a flow, and the imports follow it: the stages share
`pipeline.records` and `store`, never import each other, and no module imports one of a
layer above its own. Read from the source, every import of every module in `ingest/`."""

from __future__ import annotations

import ast

from .helpers import REPO

PACKAGE = REPO / "ingest"

# Lowest first. Within a layer, modules may import each other, except in the stage layer,
# where each stage may import only its own modules.
LAYERS = {
    "foundation": ("ingest", "ingest.api", "ingest.config", "ingest.masking", "ingest.backoff", "ingest.times",
                   "ingest.statedir",
                   "ingest.logs", "ingest.metrics"),
    "store": ("ingest.store",),
    "records": ("ingest.pipeline.records",),
    "stages": (),  # STAGES
    "wiring": ("ingest.runner",),
    "commands": ("ingest.cli", "ingest.__main__", "ingest.demo", "ingest.visibility", "ingest.history"),
}
STAGES = {
    "sources": ("ingest.sources",),
    "decode": ("ingest.decode",),
    "batching": ("ingest.pipeline.batching",),
    "spool": ("ingest.pipeline.spool", "ingest.pipeline.spoolfile"),
    "sink": ("ingest.pipeline.sink",),
    "ledger": ("ingest.pipeline.ledger",),
    "checkpoint": ("ingest.pipeline.checkpoint",),
    "dead letters": ("ingest.pipeline.deadletters",),
    "L7 metrics": ("ingest.metrics.l7",),
    "metrics endpoint": ("ingest.metrics.endpoint",),
}
ORDER = list(LAYERS)


def _modules() -> dict[str, tuple[ast.Module, str]]:
    """Every module: its syntax tree and the package its relative imports start from."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        found[name] = (ast.parse(path.read_text(), str(path)), name if is_package else name.rpartition(".")[0])
    return found


MODULES = _modules()


def _place(module: str) -> tuple[str, str]:
    """(layer, group) of a module: the group is its stage, or its layer outside the stages."""
    best = ("", "", "")
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[0]):
                best = (prefix, layer, layer)
    for stage, prefixes in STAGES.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[0]):
                best = (prefix, "stages", stage)
    assert best[1], f"{module} is in no layer: add it to LAYERS or STAGES"
    return best[1], best[2]


def _imports(tree: ast.Module, package: str) -> set[str]:
    """The modules of ours that a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ingest"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "ingest":
                target = node.module
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    return found


EDGES = sorted((module, target) for module, (tree, package) in MODULES.items()
               for target in _imports(tree, package) if target != module)


def test_every_module_has_a_place_and_the_imports_were_read():
    for module in MODULES:
        _place(module)
    assert ("ingest.runner", "ingest.pipeline.spool") in EDGES
    assert ("ingest.decode.dispatch", "ingest.pipeline.records") in EDGES


def _violation(module: str, target: str) -> str | None:
    (layer, group), (target_layer, target_group) = _place(module), _place(target)
    if ORDER.index(target_layer) > ORDER.index(layer):
        return f"{module} ({layer}) imports {target}, of a higher layer ({target_layer})"
    if layer == target_layer == "stages" and group != target_group:
        return f"{module} (stage {group}) imports {target} (stage {target_group})"
    return None


def test_no_import_reaches_up_or_across_the_stages():
    assert [v for v in (_violation(module, target) for module, target in EDGES) if v] == []


def test_an_import_across_stages_or_up_a_layer_is_caught():
    assert _violation("ingest.pipeline.sink", "ingest.pipeline.spool") == (
        "ingest.pipeline.sink (stage sink) imports ingest.pipeline.spool (stage spool)")
    assert _violation("ingest.store.queries", "ingest.runner") == (
        "ingest.store.queries (store) imports ingest.runner, of a higher layer (wiring)")
    assert _violation("ingest.config", "ingest.store.schema") is not None
