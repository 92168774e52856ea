"""Operator second factor: TOTP (RFC 6238 over RFC 4226 HOTP), single-use and rate-limited.

Enrollment gives the operator a random secret as an `otpauth://totp/...` URI, which authenticator apps
scan from a QR code (`provisioning_qr` in gateway/admin/totp_store.py, drawn by segno) or accept by
manual entry of the base32 secret. Verification, per operator:

- a code is exactly `digits` ASCII digits; it is compared in constant time against the steps
  `now - 1 .. now + 1` (one step of clock skew either way, RFC 6238 §5.2);
- a step is used at most once: after a code of step s is accepted, any code of a step <= s is
  `replayed` (RFC 6238 §5.2: the verifier must not accept the second attempt of the same OTP), which
  also refuses an older code after a newer one was used;
- failures (bad and replayed codes) are counted in a sliding window; `max_failures` of them lock the
  operator out (`locked_out`, even for a correct code) until the newest of them is `window` seconds old.
  Attempts while locked out are not counted, so a locked-out operator is free again at a known time.

The verifier keeps the last used step, recent failure times and any lockout per operator as a small
value (`state_of` / `restore`) that gateway/admin/totp_store.py persists after every attempt, so a
restart or a policy reload neither re-opens a used code nor forgets a lockout. Secrets are read through
a lookup. `now` is always an argument. Which admin rights need
a code, and the skew and lockout limits, come from the policy's `second_factor` section
(gateway/policy/second_factor.py); `TotpVerifier.for_policy` builds a verifier with them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlencode

from gateway.policy.second_factor import SecondFactorPolicy

__all__ = [
    "OperatorState",
    "TotpResult",
    "TotpVerifier",
    "code_at",
    "hotp",
    "new_secret",
    "provisioning_uri",
    "secret_from_base32",
    "secret_to_base32",
]

Algorithm = Literal["sha1", "sha256", "sha512"]
Reason = Literal["ok", "bad_code", "replayed", "locked_out", "not_enrolled"]
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA1 output size RFC 4226 §4 recommends as the minimum


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def secret_to_base32(secret: bytes) -> str:
    """Base32 without padding: the form authenticator apps expect in URIs and for manual entry."""
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def secret_from_base32(text: str) -> bytes:
    """Accept what a person types: any case, spaces and dashes between groups, padding optional."""
    clean = text.replace(" ", "").replace("-", "").upper().rstrip("=")
    return base64.b32decode(clean + "=" * (-len(clean) % 8))


def provisioning_uri(
    secret: bytes,
    account: str,
    issuer: str,
    *,
    digits: int = 6,
    step: int = 30,
    algorithm: Algorithm = "sha1",
) -> str:
    """`otpauth://totp/Issuer:account?secret=...&issuer=...` (issuer twice, as the key URI format asks)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = {"secret": secret_to_base32(secret), "issuer": issuer, "algorithm": algorithm.upper()}
    query |= {"digits": str(digits), "period": str(step)}
    return f"otpauth://totp/{label}?{urlencode(query, quote_via=quote)}"


def hotp(secret: bytes, counter: int, digits: int = 6, algorithm: Algorithm = "sha1") -> str:
    """RFC 4226 §5.3: HMAC over the 8-byte big-endian counter, dynamic truncation, modulo 10^digits."""
    mac = hmac.new(secret, struct.pack(">Q", counter), getattr(hashlib, algorithm)).digest()
    offset = mac[-1] & 0x0F
    number = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def code_at(secret: bytes, t: float, step: int = 30, digits: int = 6, algorithm: Algorithm = "sha1") -> str:
    """RFC 6238 §4.2 with T0 = 0: the code shown at Unix time `t`."""
    return hotp(secret, int(t // step), digits, algorithm)


@dataclass(frozen=True, slots=True)
class TotpResult:
    ok: bool
    reason: Reason  # for the audit record; "ok" when accepted
    retry_after: float | None = None  # seconds until a locked-out operator may try again


@dataclass(frozen=True, slots=True)
class OperatorState:
    """One operator's verifier state as a value: to persist, and to take up again."""

    last_step: int | None
    failures: tuple[float, ...]  # times of recent failed attempts (Unix seconds)
    locked_until: float | None


@dataclass
class _OperatorState:
    last_step: int | None = None
    failures: deque[float] = field(default_factory=deque)
    locked_until: float | None = None


@dataclass
class TotpVerifier:
    """Verifies operator codes; `secret_for(operator_id)` returns the enrolled secret or None."""

    secret_for: Callable[[str], bytes | None]
    step: int = 30
    digits: int = 6
    algorithm: Algorithm = "sha1"
    skew: int = 1  # accepted steps either side of now
    max_failures: int = 5
    window: float = 300.0
    _state: dict[str, _OperatorState] = field(default_factory=dict, repr=False)

    @classmethod
    def for_policy(
        cls, policy: SecondFactorPolicy, secret_for: Callable[[str], bytes | None]
    ) -> TotpVerifier:
        """A verifier with the policy's skew, lockout threshold and failure window."""
        return cls(
            secret_for, skew=policy.skew_steps, max_failures=policy.max_failures, window=policy.failure_window
        )

    def verify(self, operator_id: str, code: str, now: float) -> TotpResult:
        state = self._state.setdefault(operator_id, _OperatorState())
        if state.locked_until is not None:
            if now < state.locked_until:
                return TotpResult(False, "locked_out", state.locked_until - now)
            state.locked_until = None
            state.failures.clear()
        secret = self.secret_for(operator_id)
        if secret is None:
            return TotpResult(False, "not_enrolled")
        matched = self._matching_step(secret, code, now)
        if matched is None:
            return self._fail(state, "bad_code", now)
        if state.last_step is not None and matched <= state.last_step:
            return self._fail(state, "replayed", now)
        state.last_step = matched
        state.failures.clear()  # earlier typos by the person who now proved the factor do not linger
        return TotpResult(True, "ok")

    def _matching_step(self, secret: bytes, code: str, now: float) -> int | None:
        if len(code) != self.digits or not (code.isascii() and code.isdigit()):
            return None
        current = int(now // self.step)
        found = None
        for candidate in range(current - self.skew, current + self.skew + 1):
            # Every candidate is computed and compared, so timing does not tell which step matched.
            if hmac.compare_digest(hotp(secret, candidate, self.digits, self.algorithm), code):
                found = candidate
        return found

    def _fail(self, state: _OperatorState, reason: Reason, now: float) -> TotpResult:
        failures = state.failures
        failures.append(now)
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.max_failures:
            state.locked_until = now + self.window
        return TotpResult(False, reason)

    def failures(self, operator_id: str, now: float) -> int:
        """Failures counting towards a lockout at `now` (for the admin API and tests)."""
        state = self._state.get(operator_id)
        if state is None:
            return 0
        return sum(1 for t in state.failures if t > now - self.window)

    def used_step(self, operator_id: str) -> int | None:
        """The last accepted step, to persist: a restart must not make a just-used code valid again."""
        state = self._state.get(operator_id)
        return state.last_step if state is not None else None

    def restore_used_step(self, operator_id: str, step: int) -> None:
        self._state.setdefault(operator_id, _OperatorState()).last_step = step

    def state_of(self, operator_id: str) -> OperatorState:
        """What must outlive this process for one operator: last used step, failures, lockout."""
        state = self._state.get(operator_id)
        if state is None:
            return OperatorState(None, (), None)
        return OperatorState(state.last_step, tuple(state.failures), state.locked_until)

    def restore(self, operator_id: str, saved: OperatorState) -> None:
        """Take up a saved state (at start, or with a new policy's limits)."""
        self._state[operator_id] = _OperatorState(saved.last_step, deque(saved.failures), saved.locked_until)

    def forget(self, operator_id: str) -> None:
        """Drop an operator's state (re-enrollment with a new secret starts clean)."""
        self._state.pop(operator_id, None)
