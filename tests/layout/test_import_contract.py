"""The layout's contract, enforced: no import cycles (lazy and TYPE_CHECKING imports included), and
each layer imports only what sits below it.

    mqtt, pki  ←  policy  ←  broker  ←  stores, edge  ←  ops, context, detection  ←  admin  ←  app  ←  cli

Also: asyncio only in the edge, the HTTPS edge (admin), the process root (app) and the CLI entry
points; the clock read only in the edge, app and cli (everything else is given `now`).
Read with `ast`, so a violation fails here with the file and line, before anything runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "pki", "device_sim", "benchmarks")

# Which gateway layers each gateway layer may import (itself always allowed); pki is open to all.
LAYERS = (
    "mqtt",
    "policy",
    "broker",
    "stores",
    "edge",
    "ops",
    "context",
    "detection",
    "admin",
    "render",
    "app",
    "cli",
    "config",
)
MAY_IMPORT: dict[str, set[str]] = {
    "mqtt": set(),
    "config": set(),
    "render": {"context"},  # renderers draw the context's values (the flow map)
    "policy": {"mqtt"},
    "broker": {"mqtt", "policy"},
    "stores": {"mqtt", "policy", "broker", "config", "render"},
    "edge": {"mqtt", "policy", "broker", "config"},
    "ops": {"mqtt", "policy", "broker", "stores", "edge", "config"},
    "context": {"mqtt", "policy", "broker", "stores", "edge"},
    "detection": {"mqtt", "policy", "broker", "edge"},
    "admin": {"mqtt", "policy", "broker", "stores", "edge", "ops", "context", "render"},
    "app": set(LAYERS) - {"cli", "app"},
    "cli": set(LAYERS) - {"cli"},
}
ASYNCIO_ALLOWED = {"edge", "admin", "app", "cli"}
CLOCK_ALLOWED = {"edge", "app", "cli"}
CLOCK_CALLS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (the longest prefix that is a module of ours)
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _our_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            modules[_module_name(path)] = path
    return modules


MODULES = _our_modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, tree: ast.AST) -> Iterator[Import]:
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):  # every import: top level, in functions, under TYPE_CHECKING
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    yield Import(module, target, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
                base = base.strip(".")
            for alias in node.names:
                target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                if target:
                    yield Import(module, target, node.lineno)


def _trees() -> dict[str, ast.AST]:
    return {module: ast.parse(path.read_text(encoding="utf-8")) for module, path in MODULES.items()}


TREES = _trees()
EDGES = [edge for module, tree in TREES.items() for edge in _imports(module, tree)]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycles() -> None:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in EDGES:
        if edge.target != edge.source and MODULES[edge.target].name != "__init__.py":
            graph[edge.source].add(edge.target)
    assert _strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_downwards() -> None:
    wrong = []
    for edge in EDGES:
        source, target = _layer(edge.source), _layer(edge.target)
        if source is None or target is None or source == target:
            continue
        if target not in MAY_IMPORT[source]:
            wrong.append(f"{MODULES[edge.source].relative_to(ROOT)}:{edge.line} imports {edge.target}")
    assert wrong == []


def _package(module: str) -> str:
    return module.split(".")[0]


# pki is the CA as a library; the product never imports the simulator; nothing installed imports the
# benchmarks (they are not in the wheel).
ALLOWED_PACKAGES = {
    "pki": {"pki"},
    "gateway": {"gateway", "pki"},
    "device_sim": {"device_sim", "gateway", "pki"},
    "benchmarks": {"benchmarks", "device_sim", "gateway", "pki"},
}


def test_packages_import_only_what_they_may() -> None:
    wrong = [
        f"{MODULES[e.source].relative_to(ROOT)}:{e.line} imports {e.target}"
        for e in EDGES
        if _package(e.target) not in ALLOWED_PACKAGES[_package(e.source)]
    ]
    assert wrong == []


def _stdlib_uses(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """('asyncio', line) for an asyncio import; ('clock', line) for a clock read."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "asyncio" for a in node.names)) or (
            isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "asyncio"
        ):
            yield "asyncio", node.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else ""
            )
            if (name, node.func.attr) in CLOCK_CALLS:
                yield "clock", node.lineno


@pytest.mark.parametrize(("what", "allowed"), [("asyncio", ASYNCIO_ALLOWED), ("clock", CLOCK_ALLOWED)])
def test_asyncio_and_the_clock_stay_at_the_edge(what: str, allowed: set[str]) -> None:
    wrong = []
    for module, tree in TREES.items():
        if not module.startswith("gateway.") or _layer(module) in allowed:
            continue
        wrong += [
            f"{MODULES[module].relative_to(ROOT)}:{line}" for use, line in _stdlib_uses(tree) if use == what
        ]
    assert wrong == []


def test_the_mqtt_core_imports_nothing_else_of_ours() -> None:
    wrong = [
        e for e in EDGES if e.source.startswith("gateway.mqtt") and not e.target.startswith("gateway.mqtt")
    ]
    assert wrong == []


def test_the_gateway_top_level_holds_only_role_folders() -> None:
    loose = sorted(p.name for p in (ROOT / "gateway").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "config.py"]
    assert {p.name for p in (ROOT / "gateway").iterdir() if p.is_dir() and p.name != "__pycache__"} <= {
        *LAYERS,
        "defaults",
    }


def test_no_two_gateway_modules_share_a_name() -> None:
    names: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        if module.startswith("gateway.") and path.name != "__init__.py":
            names.setdefault(path.name, []).append(module)
    assert {name: where for name, where in names.items() if len(where) > 1} == {}


def test_only_the_driver_and_the_hub_apply_broker_actions() -> None:
    wrong = []
    for module, path in MODULES.items():
        if module in ("gateway.edge.driver", "gateway.edge.hub") or not module.startswith("gateway."):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ".apply(" in line and "hub" in line:
                wrong.append(f"{path.relative_to(ROOT)}:{number}")
    assert wrong == []


def test_the_architecture_page_names_only_modules_that_exist() -> None:
    """docs/architecture.md is kept true to the code: every `folder/module` it names exists."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    folders = "|".join(sorted({*LAYERS} - {"config"}))
    named = set(re.findall(rf"(?<![\w/])((?:{folders})/[a-z_]+)(?:\.py)?\b", text))
    missing = sorted(n for n in named if not (ROOT / "gateway" / f"{n}.py").exists())
    assert named and missing == []
