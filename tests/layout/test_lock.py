"""The lock files (requirements/*.txt) the README's set-up installs from agree with pyproject.toml:
every dependency pinned to one version that its range allows, every pin with hashes, the build
backend locked too. They are made by scripts/lock; this fails when pyproject.toml changed since."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (ROOT / "requirements" / lock).read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            current = _key(match.group(1))
            pins[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def _wanted(requirements: list[str]) -> dict[str, str]:
    """name -> the lowest version allowed (every range in pyproject.toml is `>=`, or none; extras
    such as `nats-py[nkeys]` are skipped over, so the range after them is still checked)."""
    out = {}
    for requirement in requirements:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?(?:>=([0-9.]+))?", requirement)
        assert match, requirement
        out[_key(match.group(1))] = match.group(2) or "0"
    return out


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


RUNTIME = _wanted(PROJECT["dependencies"])
EXTRAS = {name: _wanted(reqs) for name, reqs in PROJECT["optional-dependencies"].items()}


@pytest.mark.parametrize(
    ("lock", "wanted"),
    [("base.txt", RUNTIME), ("dev.txt", {**RUNTIME, **EXTRAS["sim"], **EXTRAS["dev"]})],
    ids=["base", "dev"],
)
def test_the_lock_pins_every_dependency_in_its_range_with_hashes(lock: str, wanted: dict[str, str]) -> None:
    pins = _pins(lock)
    missing = sorted(set(wanted) - set(pins))
    assert missing == [], f"{missing} not in requirements/{lock}: run scripts/lock"
    for name, lowest in wanted.items():
        assert _release(pins[name][0]) >= _release(lowest), (
            f"{name} {pins[name][0]} < {lowest}: run scripts/lock"
        )
    assert all(hashes for _, hashes in pins.values())
    assert "setuptools" in pins  # the build backend: the project is installed without build isolation


def test_the_base_lock_holds_no_test_tool() -> None:
    assert not set(_pins("base.txt")) & {"pytest", "mypy", "ruff", "matplotlib", "zxing-cpp"}


def test_the_set_up_installs_from_the_lock_with_hashes_required() -> None:
    env = (ROOT / "scripts" / "_env.sh").read_text(encoding="utf-8")
    assert "--require-hashes" in env and "requirements/base.txt" in env and "requirements/dev.txt" in env
    assert "--no-deps --no-build-isolation -e ." in env
