"""What every policy.yaml section parser shares: `PolicyError`, the `At` cursor and the small validators.

A parser walks the parsed YAML with an `At` (file name and key path, such as `roles.unit.publish[2]`)
and calls `At.fail` with the problem, so every error is one sentence naming file, key path and what is
wrong. `At.mapping` is the strictness about unknown keys that every section shares.

This module imports nothing from the gateway. rules.py and the section parsers (detector_rules.py,
data_classes.py, posture.py, second_factor.py) all import it, so no parser needs rules.py, and rules.py
imports the parsers without a cycle.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = ["At", "PolicyError", "boolean", "kind", "positive"]


class PolicyError(ValueError):
    """The policy cannot be used; the message is one sentence naming file, key path and problem."""

    def __init__(self, source: str, path: str, problem: str) -> None:
        super().__init__(f"{source}: {path}: {problem}" if path else f"{source}: {problem}")
        self.source = source
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class At:
    """A position in the file, so that every error can say where it is."""

    source: str
    path: str  # "" for the top of the file

    def key(self, name: object) -> At:
        return At(self.source, f"{self.path}.{name}" if self.path else f"{name}")

    def index(self, i: int) -> At:
        return At(self.source, f"{self.path}[{i}]")

    def fail(self, problem: str) -> NoReturn:
        raise PolicyError(self.source, self.path, problem)

    def mapping(
        self, value: Any, allowed: Collection[str] | None = None, required: tuple[str, ...] = ()
    ) -> dict[Any, Any]:
        """A mapping whose keys are among `allowed` (any key when None), with every `required` key."""
        if not isinstance(value, dict):
            self.fail(f"must be a mapping, not {kind(value)}")
        if allowed is not None:
            for key in value:
                if not isinstance(key, str) or key not in allowed:
                    self.fail(f"unknown key {key!r}; expected one of {', '.join(sorted(allowed))}")
        for key in required:
            if key not in value:
                self.fail(f"missing required key {key!r}")
        return value

    def names(self, value: Any) -> dict[str, Any]:
        """A mapping whose keys are names chosen by the author (service names, tiers); empty if absent."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(f"must be a mapping, not {kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(f"key {key!r} must be text (quote it)")
        return value

    def strings(self, value: Any, what: str) -> list[str]:
        """A list of strings; `what` names them in the error ("topic templates")."""
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(f"must be a list of {what}, not {kind(value)}")
        return value


def kind(value: Any) -> str:
    """A value as an error shows it: its type and the start of its text, or "nothing" for None."""
    return "nothing" if value is None else f"a {type(value).__name__} ({value!r:.40})"


def positive(at: At, value: Any, whole: bool) -> Any:
    """A finite number above zero (an int when `whole`); booleans are not numbers here."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (whole and not isinstance(value, int)):
        at.fail(f"must be a positive {'whole number' if whole else 'number'}, not {kind(value)}")
    return value


def boolean(at: At, value: Any) -> bool:
    """true or false, nothing else (not 1, not "yes")."""
    if not isinstance(value, bool):
        at.fail(f"must be true or false, not {kind(value)}")
    return value
