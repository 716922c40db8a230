"""The package's plan, kept true as it grows: imports run one way, from the entry points down
through sweep and run to optim, losses and network; no cycles; no private names across modules;
no module over 300 lines. See docs/architecture.md."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from conftest import REPO

# Layers from the bottom up: a module imports from its own layer or from a lower rank only, so
# two layers of one rank (optim, eval) know nothing of each other.
RANKS = {
    "base": 0,  # nstexp.errors, nstexp.config and its sections' modules (*_options), nstexp.images
    "network": 1,
    "video": 1,
    "losses": 2,
    "optim": 3,
    "eval": 3,
    "tiling": 3,
    "validation": 4,
    "composition": 5,
    "run": 6,
    "sweep": 7,
    "bench": 8,
    "entry": 9,  # nstexp.cli, nstexp.api, the package itself, the batched launcher
}
TOP_LEVEL = {
    "nstexp.errors": "base", "nstexp.config": "base", "nstexp.loss_options": "base", "nstexp.images": "base",
    "nstexp.output_options": "base", "nstexp.video_options": "base",
    "nstexp.validation": "validation", "nstexp.loss_catalogue": "validation",
    "nstexp.input_sizes": "validation", "nstexp.composition": "composition",
    "nstexp": "entry", "nstexp.__main__": "entry", "nstexp.cli": "entry", "nstexp.api": "entry",
    "hydra_plugins.nstexp_batched_launcher": "entry",
    "hydra_plugins.nstexp_batched_launcher.batched_launcher": "entry",
    "hydra_plugins.nstexp_optuna_sweeper": "entry",
    "hydra_plugins.nstexp_optuna_sweeper.optuna_sweeper": "entry",
}
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    root = Path(REPO)
    found = {}
    for top in ("nstexp", "hydra_plugins"):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            if "samples" in parts:  # scripts that draw the bundled images; they import no nstexp
                continue
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    parts = module.split(".")
    assert parts[0] == "nstexp" and len(parts) >= 2 and parts[1] in RANKS, (
        f"{module} belongs to no layer: put it in a layer's folder, or name it in TOP_LEVEL here "
        "and in docs/architecture.md")
    return parts[1]


def _resolve(name: str) -> str | None:
    """The module of ours that a dotted import name refers to (the longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def _imports(module: str, tree: ast.AST) -> tuple[set[str], list[str], dict[str, str]]:
    """Modules imported (anywhere, lazy imports included), private names taken, local aliases."""
    deps, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _resolve(a.name)
                if target:
                    deps.add(target)
                    if a.asname:
                        aliases[a.asname] = target
                    else:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = _resolve(node.module)
            if base is None:
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES:  # `from nstexp.run import runner`: a module
                    deps.add(sub)
                    aliases[a.asname or a.name] = sub
                else:  # a name from a module
                    deps.add(base)
                    if a.name.startswith("_") and not a.name.startswith("__") and base != module:
                        private.append(f"{module} imports {base}.{a.name}")
    return deps, private, aliases


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _check(module: str, tree: ast.AST) -> tuple[set[str], list[str]]:
    """A module's imports of ours, and its uses of another module's private names."""
    deps, problems, aliases = _imports(module, tree)
    for node in ast.walk(tree):  # `runner._weighted_layers` after `from nstexp.run import runner`
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            head = _dotted(node.value)
            first, _, rest = (head or "").partition(".")
            if first not in aliases:
                continue
            target = ".".join(filter(None, [aliases[first], rest]))
            if target in MODULES and target != module:
                problems.append(f"{module} uses {target}.{node.attr}")
    return deps - {module}, problems


def _graph():
    graph, problems = {}, []
    for module, path in MODULES.items():
        graph[module], found = _check(module, ast.parse(path.read_text(), filename=str(path)))
        problems += found
    return graph, problems


GRAPH, PRIVATE = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checks_see_the_package():
    # The parse found the package's real imports: a check that reads nothing passes vacuously.
    assert len(MODULES) > 30
    assert "nstexp.run.runner" in GRAPH["nstexp.sweep.jobs"]
    assert "nstexp.optim.engine" in GRAPH["nstexp.run.coarse_to_fine"]
    assert "nstexp.network.backbone" in GRAPH["nstexp.losses.objective"]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_down_the_layers():
    upward = []
    for module, deps in GRAPH.items():
        here = layer(module)
        for dep in deps:
            there = layer(dep)
            if there != here and RANKS[there] >= RANKS[here]:
                upward.append(f"{module} ({here}) imports {dep} ({there})")
    assert upward == []


def test_no_private_names_across_modules():
    assert PRIVATE == []


def test_the_private_check_sees_both_forms():
    attribute = ast.parse("from nstexp.run import runner\nrunner._hidden(1)\nrunner.public(2)\n")
    assert _check("nstexp.sweep.jobs", attribute)[1] == ["nstexp.sweep.jobs uses nstexp.run.runner._hidden"]
    name = ast.parse("from nstexp.run.runner import _hidden\n")
    assert _check("nstexp.sweep.jobs", name)[1] == ["nstexp.sweep.jobs imports nstexp.run.runner._hidden"]
    assert _check("nstexp.run.runner", ast.parse("from nstexp.run.runner import _hidden\n"))[1] == []


def test_no_module_outgrows_one_sitting():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these by concept: {long}"


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)
    assert os.path.isdir(os.path.join(REPO, "nstexp", "network"))
