from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki.errors import KeyFileError, PkiError, WeakKeyError
from pki.keys import (
    check_public_key,
    generate_private_key,
    load_private_key,
    write_private_key,
    write_public_file,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0, so the modes we see are the ones the code asked for, not the umask's doing."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.mark.parametrize(
    ("algorithm", "kind", "size"),
    [
        ("p256", ec.EllipticCurvePrivateKey, 256),
        ("p384", ec.EllipticCurvePrivateKey, 384),
        ("rsa2048", rsa.RSAPrivateKey, 2048),
    ],
)
def test_generate_private_key(algorithm: str, kind: type, size: int) -> None:
    key = generate_private_key(algorithm)
    assert isinstance(key, kind)
    assert key.key_size == size


def test_generate_unknown_algorithm_names_the_choices() -> None:
    with pytest.raises(PkiError) as info:
        generate_private_key("dsa1024")
    assert info.value.reason == "unknown_key_algorithm"
    assert "p256" in info.value.message


def test_private_key_file_is_0600_and_loads_back(tmp_path: Path, permissive_umask: None) -> None:
    key = generate_private_key()
    path = tmp_path / "unit.key"
    write_private_key(path, key)
    assert mode_of(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert load_private_key(path).private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert [p.name for p in tmp_path.iterdir()] == ["unit.key"]  # no temp files left behind


def test_key_file_is_created_0600_not_chmodded_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            opened.append((flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    write_private_key(tmp_path / "k.key", generate_private_key())
    assert opened, "the key file was not created with os.open"
    flags, mode = opened[0]
    assert flags & os.O_EXCL and mode == 0o600


def test_write_replaces_existing_key_atomically(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    first, second = generate_private_key(), generate_private_key()
    write_private_key(path, first)
    write_private_key(path, second)
    assert load_private_key(path).public_key() == second.public_key()


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    write_private_key(path, generate_private_key(), b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert isinstance(load_private_key(path, b"correct horse"), ec.EllipticCurvePrivateKey)
    with pytest.raises(KeyFileError) as wrong:
        load_private_key(path, b"battery staple")
    assert wrong.value.reason == "wrong_passphrase"
    with pytest.raises(KeyFileError) as missing:
        load_private_key(path)
    assert missing.value.reason == "passphrase_required"


def test_passphrase_for_plain_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key())
    with pytest.raises(KeyFileError) as info:
        load_private_key(path, b"secret")
    assert info.value.reason == "key_not_encrypted"


def test_loose_permissions_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, generate_private_key())
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert info.value.reason == "key_file_permissions"
    assert f"chmod 600 {path}" in info.value.message


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "key_file_missing"),
        (b"not a key\n", "not_a_key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not_a_key"),
    ],
)
def test_unusable_key_files(tmp_path: Path, content: bytes | None, reason: str) -> None:
    path = tmp_path / "k.key"
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    assert info.value.reason == reason
    assert str(path) in info.value.message


def test_public_file_is_0644(tmp_path: Path, permissive_umask: None) -> None:
    path = tmp_path / "ca.crt"
    write_public_file(path, b"data")
    assert mode_of(path) == 0o644
    assert path.read_bytes() == b"data"


def test_rsa_1024_is_too_weak() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(WeakKeyError) as info:
        check_public_key(weak)
    assert info.value.reason == "weak_key"
    assert info.value.message == (
        "RSA key of 1024 bits is too weak; use ECDSA P-256 or RSA of 2048 bits or more"
    )


@pytest.mark.parametrize(
    "public_key",
    [
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["p521", "secp256k1", "ed25519"],
)
def test_other_key_types_are_refused(public_key: object) -> None:
    with pytest.raises(WeakKeyError) as info:
        check_public_key(public_key)
    assert info.value.reason == "weak_key"


@pytest.mark.parametrize("algorithm", ["p256", "p384", "rsa2048"])
def test_accepted_keys(algorithm: str) -> None:
    check_public_key(generate_private_key(algorithm).public_key())
