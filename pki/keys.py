"""Private keys: generation, key-strength policy, and files that are never world-readable.

Device keys are made on the device and never leave it; the CA's keys live in its directory. Either
way a key file is created 0600 from its first byte (no chmod after the fact, so there is no window in
which another user could open it) and replaced atomically, so a crash leaves the old key or the new
key, never half of one.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.errors import KeyFileError, WeakKeyError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KEY_ALGORITHMS = ("p256", "p384", "rsa2048", "rsa3072", "rsa4096")
ACCEPTED_CURVES = ("secp256r1", "secp384r1")
MIN_RSA_BITS = 2048

_CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
_RSA_BITS = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
_ADVICE = "use ECDSA P-256 or RSA of 2048 bits or more"

# Asked for the passphrase of one encrypted key file, only when that file is encrypted; raises a
# KeyFileError (say, "passphrase_required") when it has no answer. Lets a caller that does not know
# beforehand whether a key is encrypted (or whether it will need the key at all) ask lazily.
PassphraseSource = Callable[[Path], bytes]
Passphrase = bytes | None | PassphraseSource


def generate_private_key(algorithm: str = "p256") -> PrivateKey:
    if algorithm in _CURVES:
        return ec.generate_private_key(_CURVES[algorithm])
    if algorithm in _RSA_BITS:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS[algorithm])
    raise WeakKeyError(
        "unknown_key_algorithm",
        f"key algorithm {algorithm!r} is not supported; use one of {', '.join(KEY_ALGORITHMS)}",
    )


def check_public_key(public_key: object) -> None:
    """Accept EC P-256/P-384 and RSA >= 2048 bits; raise WeakKeyError for anything else."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise WeakKeyError("weak_key", f"RSA key of {public_key.key_size} bits is too weak; {_ADVICE}")
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ACCEPTED_CURVES:
            raise WeakKeyError(
                "weak_key", f"EC curve {public_key.curve.name} is not accepted; use P-256 or P-384"
            )
        return
    # Ed25519, DSA and friends are not weak as such, but MQTT clients and our verifier policy are
    # built around ECDSA and RSA, so one stable refusal code covers them.
    raise WeakKeyError("weak_key", f"{type(public_key).__name__} keys are not accepted; {_ADVICE}")


def as_accepted_public_key(public_key: object) -> PublicKey:
    """Narrow a parsed public key to the types we sign, raising WeakKeyError otherwise."""
    check_public_key(public_key)
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):  # pragma: no cover
        raise AssertionError("check_public_key let an unsupported key through")
    return public_key


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL on a fresh random name: we never follow or reuse a file someone else prepared, and the
    # mode is applied at creation (subject to umask, which can only make it stricter).
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM, mode 0600, encrypted if a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_atomically(path, data, 0o600)


def copy_private_key_file(source: Path, destination: Path) -> None:
    """Copy a key file byte for byte (encrypted stays encrypted), 0600 from its first byte."""
    _write_atomically(destination, _read_key_file(source), 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a certificate, chain or CRL atomically, mode 0644."""
    _write_atomically(path, data, 0o644)


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError("key_file_missing", f"key file {path} does not exist; check the path") from None
    except OSError as exc:
        raise KeyFileError("key_file_unreadable", f"cannot read key file {path} ({exc.strerror})") from None
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(
            "key_file_permissions",
            f"key file {path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`",
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError("key_file_unreadable", f"cannot read key file {path} ({exc.strerror})") from None


def _is_encrypted(data: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def is_encrypted_key_file(path: Path) -> bool:
    """Whether the key file is passphrase-protected (its permissions are checked as for loading)."""
    return _is_encrypted(_read_key_file(path))


def load_private_key(path: Path, passphrase: Passphrase = None) -> PrivateKey:
    """Load a PEM private key, refusing files that other users can read.

    ``passphrase`` is the passphrase itself (strict: given for a key that is not encrypted, it is an
    error) or a PassphraseSource, asked only if the file turns out to be encrypted.
    """
    data = _read_key_file(path)
    encrypted = _is_encrypted(data)
    if callable(passphrase):
        passphrase = passphrase(path) if encrypted else None
    if encrypted and not passphrase:
        raise KeyFileError("passphrase_required", f"key file {path} is encrypted; supply its passphrase")
    if not encrypted and passphrase:
        # Strict on purpose: someone who believes a key is encrypted when it is not should find out.
        raise KeyFileError(
            "key_not_encrypted",
            f"key file {path} is not encrypted but a passphrase was given; drop the passphrase",
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase or None)
    except (ValueError, TypeError):
        if encrypted:
            raise KeyFileError(
                "wrong_passphrase", f"cannot decrypt key file {path}; check the passphrase"
            ) from None
        raise KeyFileError("not_a_key", f"{path} does not contain a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(
            "unsupported_key_type", f"{path} holds a {type(key).__name__}; fleetgate uses ECDSA or RSA keys"
        )
    return key
