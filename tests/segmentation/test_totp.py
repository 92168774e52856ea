"""Operator TOTP: RFC 4226/6238 vectors, provisioning URI, single use, lockout and recovery."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from gateway.admin.totp import (
    TotpResult,
    TotpVerifier,
    code_at,
    hotp,
    new_secret,
    provisioning_uri,
    secret_from_base32,
    secret_to_base32,
)
from gateway.admin.totp_store import TotpStore, TotpStoreError
from gateway.policy.second_factor import SecondFactorPolicy

RFC_SEED = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: time, then the 8-digit TOTP for SHA1, SHA256, SHA512 (X = 30, T0 = 0).
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]
# RFC 4226 Appendix D: HOTP values for counters 0-9 with the SHA1 seed.
RFC4226 = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]


@pytest.mark.parametrize(("t", "sha1", "sha256", "sha512"), RFC6238)
def test_rfc6238_appendix_b(t: int, sha1: str, sha256: str, sha512: str) -> None:
    assert code_at(RFC_SEED["sha1"], t, digits=8) == sha1
    assert code_at(RFC_SEED["sha256"], t, digits=8, algorithm="sha256") == sha256
    assert code_at(RFC_SEED["sha512"], t, digits=8, algorithm="sha512") == sha512


def test_rfc4226_appendix_d() -> None:
    assert [hotp(RFC_SEED["sha1"], c) for c in range(10)] == RFC4226


def test_six_digit_codes_are_the_last_six_of_eight() -> None:
    assert code_at(RFC_SEED["sha1"], 59) == "287082"
    assert code_at(RFC_SEED["sha1"], 1234567890) == "005924"  # leading zeros kept


class TestProvisioning:
    def test_secret_is_160_random_bits(self) -> None:
        a, b = new_secret(), new_secret()
        assert len(a) == 20 and a != b

    def test_base32(self) -> None:
        assert secret_to_base32(RFC_SEED["sha1"]) == "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        assert secret_from_base32("gezd gnbv-gy3t qojq gezd gnbv gy3t qojq") == RFC_SEED["sha1"]
        odd = bytes(range(7))  # a length that needs padding
        assert secret_from_base32(secret_to_base32(odd)) == odd

    def test_uri(self) -> None:
        uri = provisioning_uri(RFC_SEED["sha1"], "alice@ops", "Fleet Gate")
        parts = urlsplit(uri)
        assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
        assert unquote(parts.path) == "/Fleet Gate:alice@ops" and "%20" in parts.path
        assert parse_qs(parts.query) == {
            "secret": ["GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"],
            "issuer": ["Fleet Gate"],
            "algorithm": ["SHA1"],
            "digits": ["6"],
            "period": ["30"],
        }

    def test_uri_escapes_separators_in_names(self) -> None:
        uri = provisioning_uri(b"k" * 20, "a/b?c&d", "x:y")
        assert "a%2Fb%3Fc%26d" in uri and "issuer=x%3Ay" in uri


SECRET = b"operator-secret-0001"
T0 = 1_800_000_000.0  # a step boundary: 1.8e9 / 30 is whole


def verifier(**kw: float) -> TotpVerifier:
    return TotpVerifier(lambda op: SECRET if op == "ops1" else None, **kw)  # type: ignore[arg-type]


def at(t: float) -> str:
    return code_at(SECRET, t)


class TestVerify:
    def test_current_code(self) -> None:
        assert verifier().verify("ops1", at(T0), T0) == TotpResult(True, "ok")

    @pytest.mark.parametrize(
        ("offset", "ok"), [(-31, False), (-30, True), (0, True), (30, True), (60, False)]
    )
    def test_one_step_of_skew(self, offset: float, ok: bool) -> None:
        assert verifier().verify("ops1", at(T0 + offset), T0 + 5).ok is ok

    def test_a_code_is_single_use_even_inside_its_window(self) -> None:
        v = verifier()
        code = at(T0)
        assert v.verify("ops1", code, T0).ok
        assert v.verify("ops1", code, T0 + 1) == TotpResult(False, "replayed")
        assert v.verify("ops1", code, T0 + 31) == TotpResult(False, "replayed")  # still within skew

    def test_an_older_code_after_a_newer_one_is_refused(self) -> None:
        v = verifier()
        assert v.verify("ops1", at(T0 + 30), T0 + 1).ok  # clock skew: next step's code
        assert v.verify("ops1", at(T0), T0 + 2).reason == "replayed"
        assert v.verify("ops1", at(T0 + 60), T0 + 60).ok

    def test_used_step_survives_a_restart_when_persisted(self) -> None:
        v = verifier()
        code = at(T0)
        assert v.verify("ops1", code, T0).ok
        step = v.used_step("ops1")
        assert step == int(T0 // 30) and verifier().used_step("ops1") is None
        restarted = verifier()
        restarted.restore_used_step("ops1", step)
        assert restarted.verify("ops1", code, T0 + 10).reason == "replayed"

    def test_replay_state_is_per_operator(self) -> None:
        v = TotpVerifier(lambda op: SECRET)
        assert v.verify("ops1", at(T0), T0).ok and v.verify("ops2", at(T0), T0).ok

    @pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", " 12345", "000000"])
    def test_bad_codes(self, code: str) -> None:
        if code == at(T0):
            pytest.skip("the secret's code happens to be this one")
        assert verifier().verify("ops1", code, T0) == TotpResult(False, "bad_code")

    def test_not_enrolled(self) -> None:
        v = verifier()
        assert v.verify("ghost", "123456", T0) == TotpResult(False, "not_enrolled")
        assert v.failures("ghost", T0) == 0


class TestLockout:
    def test_five_failures_lock_out_until_the_window_passes(self) -> None:
        v = verifier()
        for i in range(5):
            assert v.verify("ops1", "000001", T0 + i * 10).reason == "bad_code"
        locked = v.verify("ops1", at(T0 + 45), T0 + 45)  # even the right code
        assert (locked.ok, locked.reason) == (False, "locked_out")
        assert locked.retry_after is not None and abs(locked.retry_after - 295.0) < 1e-6
        assert v.verify("ops1", "000001", T0 + 100).reason == "locked_out"  # not counted, no extension
        assert v.verify("ops1", at(T0 + 339), T0 + 339).reason == "locked_out"
        assert v.verify("ops1", at(T0 + 340), T0 + 340) == TotpResult(True, "ok")
        assert v.failures("ops1", T0 + 340) == 0

    def test_replays_count_as_failures(self) -> None:
        v = verifier(max_failures=3)
        code = at(T0)
        assert v.verify("ops1", code, T0).ok
        for i in range(3):
            assert v.verify("ops1", code, T0 + 1 + i).reason == "replayed"
        assert v.verify("ops1", at(T0 + 30), T0 + 30).reason == "locked_out"

    def test_failures_slide_out_of_the_window(self) -> None:
        v = verifier()
        for i in range(4):
            v.verify("ops1", "000001", T0 + i)
        assert v.failures("ops1", T0 + 10) == 4
        assert v.failures("ops1", T0 + 301) == 2
        assert v.verify("ops1", "000001", T0 + 304).reason == "bad_code"  # the first four are gone
        assert v.failures("ops1", T0 + 304) == 1
        assert v.verify("ops1", at(T0 + 305), T0 + 305).ok

    def test_success_clears_earlier_failures(self) -> None:
        v = verifier()
        for i in range(4):
            v.verify("ops1", "000001", T0 + i)
        assert v.verify("ops1", at(T0 + 5), T0 + 5).ok
        assert v.failures("ops1", T0 + 5) == 0
        assert v.verify("ops1", "000001", T0 + 6).reason == "bad_code"  # one failure, not five

    def test_lockout_is_per_operator_and_forget_resets(self) -> None:
        v = TotpVerifier(lambda op: SECRET)
        for i in range(5):
            v.verify("ops1", "000001", T0 + i)
        assert v.verify("ops2", at(T0 + 5), T0 + 5).ok
        v.forget("ops1")
        assert v.verify("ops1", at(T0 + 5), T0 + 5).ok


class TestStore:
    """TotpStore: the verifier's state on disk (security review finding 20), and who is enrolled."""

    @staticmethod
    def store(root: Path, **limits: int) -> TotpStore:
        return TotpStore(root, SecondFactorPolicy(max_failures=limits.get("max_failures", 5)))

    @staticmethod
    def enrolled(root: Path) -> None:
        (root / "totp").mkdir(mode=0o700, exist_ok=True)
        (root / "totp" / "ops1.secret").write_text(secret_to_base32(SECRET) + "\n")

    def test_a_lockout_survives_a_restart(self, tmp_path: Path) -> None:
        self.enrolled(tmp_path)
        first = self.store(tmp_path)
        for i in range(5):
            assert first.verify("ops1", "000001", T0 + i).reason == "bad_code"
        restarted = self.store(tmp_path)  # a new process: only the files are left
        assert restarted.verify("ops1", at(T0 + 10), T0 + 10).reason == "locked_out"
        assert restarted.verify("ops1", at(T0 + 305), T0 + 305).ok

    def test_failures_short_of_a_lockout_survive_a_restart(self, tmp_path: Path) -> None:
        self.enrolled(tmp_path)
        for i in range(4):
            self.store(tmp_path).verify("ops1", "000001", T0 + i)  # a restart between every guess
        assert self.store(tmp_path).verify("ops1", "000001", T0 + 5).reason == "bad_code"
        assert self.store(tmp_path).verify("ops1", at(T0 + 6), T0 + 6).reason == "locked_out"

    def test_a_used_code_stays_used_across_a_restart_and_a_reload(self, tmp_path: Path) -> None:
        self.enrolled(tmp_path)
        store = self.store(tmp_path)
        code = at(T0)
        assert store.verify("ops1", code, T0).ok
        assert self.store(tmp_path).verify("ops1", code, T0 + 1).reason == "replayed"
        store.reload(SecondFactorPolicy(max_failures=3))
        assert store.verify("ops1", code, T0 + 2).reason == "replayed"

    def test_a_policy_reload_keeps_a_lockout(self, tmp_path: Path) -> None:
        self.enrolled(tmp_path)
        store = self.store(tmp_path)
        for i in range(5):
            store.verify("ops1", "000001", T0 + i)
        store.reload(SecondFactorPolicy(max_failures=10, failure_window=600.0))
        assert store.verify("ops1", at(T0 + 10), T0 + 10).reason == "locked_out"

    def test_state_files_are_private(self, tmp_path: Path) -> None:
        self.enrolled(tmp_path)
        self.store(tmp_path).verify("ops1", "000001", T0)
        assert (tmp_path / "totp" / "ops1.state").stat().st_mode & 0o777 == 0o600

    def test_an_unreadable_state_is_an_error_not_a_fresh_start(self, tmp_path: Path) -> None:
        self.enrolled(tmp_path)
        (tmp_path / "totp" / "ops1.state").write_text("{not json")
        with pytest.raises(TotpStoreError, match=r"ops1\.state"):
            self.store(tmp_path).verify("ops1", at(T0), T0)

    def test_enrolment_follows_the_registry_mark_and_the_secret(self, tmp_path: Path) -> None:
        store = self.store(tmp_path)
        assert store.enrolment("ops1", marked=False) == "not_enrolled"
        assert store.enrolment("ops1", marked=True) == "secret_missing"  # an error, never a downgrade
        self.enrolled(tmp_path)
        assert store.enrolment("ops1", marked=True) == "enrolled"
        assert store.enrolment("ops1", marked=False) == "enrolled"  # a secret alone asks for codes too
