"""The `second_factor` section of policy.yaml: which admin rights need an operator's TOTP code, and limits.

    second_factor:
      sensitive: [units.release, identities.revoke, partners.disconnect, policy.reload]
      max_failures: 5            # failed codes per operator within failure_window_seconds, then locked out
      failure_window_seconds: 300
      skew_steps: 1              # accepted 30 s steps either side of the gateway's clock

`sensitive` names admin API rights (gateway/admin/auth.py); the admin layer checks the names it knows at
startup via `unknown_rights`, because the policy layer does not import the admin layer. The codes
themselves are checked by gateway/admin/totp.py (`TotpVerifier.for_policy` takes these limits).

A second factor is a property of the right, not of the operator: an operator without one is refused a
sensitive right (gateway/admin/api.py). Weak settings are refused when the policy loads, each with one
sentence: the four rights in DEFAULT_SENSITIVE are always sensitive (a policy may add rights, never drop
these), at most 10 failed codes per window, a window of at least 60 s, at most 2 steps of skew (each
step widens the accepted codes by 30 s both ways). Codes are 6 digits, RFC 6238's minimum, and not a
setting, so there is no shorter code to configure.
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
_DEFAULTS = {"max_failures": 5, "failure_window_seconds": 300, "skew_steps": 1}
_LIMITS = {  # (lowest, highest, why the bound) for each number
    "max_failures": (1, 10, "more failed codes per window make guessing one easier"),
    "failure_window_seconds": (60, 86400, "a shorter window lets guesses come faster"),
    "skew_steps": (0, 2, "each step accepts 30 s more codes either way"),
}


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
    dropped = sorted(DEFAULT_SENSITIVE - set(sensitive))
    if dropped:
        raise PolicyError(
            source,
            f"{path}.sensitive",
            f"must keep {', '.join(sorted(DEFAULT_SENSITIVE))} (always sensitive; it lacks {dropped[0]}); "
            "add other rights if you like",
        )
    numbers: dict[str, int] = {}
    for key, (low, high, why) in _LIMITS.items():
        raw = value.get(key, _DEFAULTS[key])
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            raise PolicyError(
                source, f"{path}.{key}", f"must be a whole number from {low} to {high} ({why}), not {raw!r}"
            )
        numbers[key] = raw
    return SecondFactorPolicy(
        frozenset(sensitive),
        numbers["max_failures"],
        float(numbers["failure_window_seconds"]),
        numbers["skew_steps"],
    )
