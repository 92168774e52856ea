"""The `second_factor` section of policy.yaml: which admin rights need an operator's TOTP code, and limits.

    second_factor:
      sensitive: [units.release, identities.revoke, partners.disconnect, policy.reload]
      max_failures: 5            # failed codes per operator within failure_window_seconds, then locked out
      failure_window_seconds: 300
      skew_steps: 1              # accepted 30 s steps either side of the gateway's clock

`sensitive` names admin API rights (gateway/admin/auth.py); the admin layer checks the names it knows at
startup via `unknown_rights`, because the policy layer does not import the admin layer. The codes
themselves are checked by gateway/admin/totp.py (`TotpVerifier.for_policy` takes these limits).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.policy.schema import At, PolicyError

__all__ = ["DEFAULT_SENSITIVE", "SecondFactorPolicy", "parse_second_factor"]

_RIGHT = re.compile(r"[a-z]+(?:\.[a-z_]+)+")  # fullmatch: no trailing newline
_KEYS = ("sensitive", "max_failures", "failure_window_seconds", "skew_steps")
DEFAULT_SENSITIVE = frozenset({"units.release", "identities.revoke", "partners.disconnect", "policy.reload"})


@dataclass(frozen=True, slots=True)
class SecondFactorPolicy:
    sensitive: frozenset[str] = DEFAULT_SENSITIVE
    max_failures: int = 5
    failure_window: float = 300.0
    skew_steps: int = 1

    def requires_totp(self, right: str) -> bool:
        return right in self.sensitive

    def unknown_rights(self, known: Iterable[str]) -> list[str]:
        return sorted(self.sensitive - set(known))


def parse_second_factor(value: Any, source: str, path: str = "second_factor") -> SecondFactorPolicy:
    """The `second_factor` section; absent means the defaults above (TOTP for the four sensitive rights)."""
    if value is None:
        return SecondFactorPolicy()
    if not isinstance(value, dict):
        raise PolicyError(source, path, f"must be a mapping, not {type(value).__name__}")
    At(source, path).mapping(value, allowed=_KEYS)
    sensitive = value.get("sensitive", sorted(DEFAULT_SENSITIVE))
    if not isinstance(sensitive, list) or not all(
        isinstance(r, str) and _RIGHT.fullmatch(r) for r in sensitive
    ):
        raise PolicyError(source, f"{path}.sensitive", "must be a list of admin rights such as policy.reload")
    limits = {"max_failures": (1, 100), "failure_window_seconds": (1, 86400), "skew_steps": (0, 10)}
    numbers: dict[str, int] = {}
    for key, (low, high) in limits.items():
        raw = value.get(key, {"max_failures": 5, "failure_window_seconds": 300, "skew_steps": 1}[key])
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            raise PolicyError(
                source, f"{path}.{key}", f"must be a whole number from {low} to {high}, not {raw!r}"
            )
        numbers[key] = raw
    return SecondFactorPolicy(
        frozenset(sensitive),
        numbers["max_failures"],
        float(numbers["failure_window_seconds"]),
        numbers["skew_steps"],
    )
