"""Declared dependencies and imports agree: every runtime dependency is imported by the installed
packages (gateway, pki, device_sim), everything they import is declared (matplotlib in the `sim`
extra), and whatever only tests and benchmarks import is in the `dev` extra."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"gateway", "pki", "device_sim", "benchmarks", "tests"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imported(*folders: str) -> set[str]:
    """Distributions (lower-case, `-`) of the third-party modules imported under these folders."""
    distributions = packages_distributions()
    found: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top in OURS or top in sys.stdlib_module_names or top == "__future__":
                        continue
                    for dist in distributions.get(top, [top]):
                        found.add(dist.lower().replace("_", "-"))
    return found


def _brought_by_extras(requirements: list[str]) -> set[str]:
    """What the extras these requirements ask for bring in (nats-py[nkeys]: nkeys), as the installed
    distributions' metadata says: declared too, though through another package."""
    found: set[str] = set()
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)\[([^\]]+)\]", requirement)
        if not match:
            continue
        extras = {extra.strip() for extra in match.group(2).split(",")}
        for line in requires(match.group(1)) or []:
            marker = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
            if marker and marker.group(1) in extras:
                found |= _names([line])
    return found


RUNTIME = _names(PROJECT["dependencies"])
RUNTIME_EXTRAS = _brought_by_extras(PROJECT["dependencies"])
SIM = _names(PROJECT["optional-dependencies"]["sim"])
DEV = _names(PROJECT["optional-dependencies"]["dev"])


def test_every_runtime_dependency_is_imported_by_the_installed_code() -> None:
    assert sorted(RUNTIME - _imported("gateway", "pki", "device_sim")) == []


def test_the_installed_code_imports_only_what_is_declared() -> None:
    assert sorted(_imported("gateway", "pki", "device_sim") - RUNTIME - SIM) == []


def test_test_and_benchmark_imports_are_in_the_dev_extra() -> None:
    assert sorted(_imported("tests", "benchmarks") - RUNTIME - RUNTIME_EXTRAS - DEV) == []
    assert sorted(DEV & RUNTIME) == []  # nothing twice
    assert SIM <= DEV  # the tests draw charts
