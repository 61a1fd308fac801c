"""The layers of the code base and the check that keeps them (docs/architecture.md).

Every first-party module belongs to the package with the longest matching name below;
it may import its own package and the packages listed for it, nothing else of ours. No
set of modules may import each other in a cycle."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Mapping

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = {"tce": REPO_ROOT / "tce", "tce_backends": REPO_ROOT / "python_backends" / "tce_backends",
                "tce_sagemaker": REPO_ROOT / "sagemaker" / "tce_sagemaker",
                "tce_client": REPO_ROOT / "client" / "tce_client", "tce_gateway": REPO_ROOT / "gateway" / "tce_gateway"}
_SERVING = {"tce_backends", "tce_client"}
_TCE_BELOW_JOBS = {"tce.lib", "tce.models", "tce.trainer", "tce.repository", "tce.seed", "tce.serving"}
# package -> the other first-party packages it may import (top to bottom)
ALLOWED: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in {
    "tce.cli": {"tce.commands", "tce_backends"},
    "tce.commands": {"tce.jobs", *_TCE_BELOW_JOBS, *_SERVING, "tce_gateway"},
    "tce.jobs": {*_TCE_BELOW_JOBS, *_SERVING, "tce_gateway", "tce_sagemaker"},
    "tce.serving": {"tce.lib", *_SERVING, "tce_gateway"},
    "tce.seed": {"tce.models", "tce.lib", "tce_backends"},
    "tce.repository": {"tce.models", "tce.lib", *_SERVING},
    "tce.trainer": {"tce.models", "tce.lib", *_SERVING},
    "tce.models": {"tce_backends"},
    "tce.lib": {*_SERVING},
    "tce": set(),
    "tce_sagemaker": {*_SERVING},   # seed 003's handler: the pipeline in process, the client's formats
    "tce_client": {"tce_backends"},  # its errors and contract names only (pure Python)
    "tce_backends": set(),           # runs inside Triton: imports nothing else of ours
    "tce_gateway": {*_SERVING},      # the front door: the SDK's record rules for v1 callers, nothing else
}.items()}


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(roots: Mapping[str, Path] = SOURCE_ROOTS) -> dict[str, set[str]]:
    """module -> first-party modules it imports (at any depth of its code)."""
    files = {_module_name(package, root, path): path for package, root in roots.items()
             for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package_parts[:len(package_parts) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:  # `from pkg import module` names the module
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in files else target)
        graph[module] = {d for d in deps if d.split(".")[0] in roots and d != module}
    return graph


def package_of(module: str) -> str:
    return max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Imports that go against the layers, as 'module -> module (package may import: ...)'."""
    found = []
    for module, deps in sorted(graph.items()):
        package = package_of(module)
        for dep in sorted(deps):
            other = package_of(dep)
            if other != package and other not in ALLOWED[package]:
                allowed = ", ".join(sorted(ALLOWED[package])) or "nothing of ours"
                found.append(f"{module} -> {dep} ({package} may import: {allowed})")
    return found


def _reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or not (more than one module each)."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups: list[list[str]] = []
    placed: set[str] = set()
    for node in sorted(graph):
        if node in placed or node not in reach[node]:
            continue
        group = sorted(other for other in reach[node] if node in reach.get(other, ()))
        placed.update(group)
        groups.append(group)
    return groups
