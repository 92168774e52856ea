"""The certificate authority: a root and its issuing CAs, on disk in one directory.

Layout of the CA directory (created 0700)::

    root.crt       root certificate (PEM, 0644)
    root.key       root key (PKCS#8 PEM, 0600); absent once taken offline (`fleetgate ca remove-root-key`)
    ca.json        trust domain, CRL URL and which issuing CA issues; written last by create() and by
                   rotate(), so its presence means "creation finished" and its content is rotation's
                   commit point
    issuing.crt    the issuing CA that issues now (after a rotation a copy, for tools and people)
    issuing.key    the first issuing CA's key, until the first rotation names it issuing-1.key
    issuing-N.crt  issuing CA N and its key (0600), from the first rotation on; N counts up from 1,
    issuing-N.key  the one create() made, and is never reused

Generations. create() makes issuing CA 1. rotate() signs issuing CA N+1 with the root key, under a
name of its own (``<trust domain> issuing CA N+1``, so chains, CRLs and people never confuse two of
them), and from then on N+1 issues. The older ones stay *trusted*: their certificates still chain
(they are trust anchors of the gateway's TLS contexts) and their CRLs are still signed, each with its
own key, so revoking an old certificate still works. retire() deletes an older one's files; what it
issued is no longer trusted anywhere. Each certificate's issuing CA is recorded in the registry.

Rotation is crash-safe: the current CA is first kept under its generation's name, the new one is
written under its own (load() ignores generations newer than ca.json names), then ca.json switches
to it in one atomic write, and only then are issuing.crt refreshed and a first CA's issuing.key removed.

The root key's only job is signing issuing CAs: create() makes it and rotate() is handed it (from this
directory or from the operator's offline copy); nothing else loads it.

Keys of a loaded CA are read when first needed if load() is given a PassphraseSource (so a command
that signs nothing never asks for a passphrase), at once otherwise.

CRL numbers (RFC 5280 5.2.3) must grow with every CRL. build_crl takes an explicit ``crl_number``
(the service draws it from the registry, Registry.next_crl_number); when none is given it is the
Unix time of ``now`` in seconds, which grows as long as CRLs are built at least a second apart. The
registry's counter never goes below that same clock value, so the two schemes can be mixed safely.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pki import profiles
from pki.errors import CAError, CAExistsError, CSRError, KeyFileError, PkiError
from pki.keys import (
    Passphrase,
    PrivateKey,
    PublicKey,
    as_accepted_public_key,
    copy_private_key_file,
    generate_private_key,
    is_encrypted_key_file,
    load_private_key,
    write_private_key,
    write_public_file,
)
from pki.names import Identity, IdentityError, make_identity, validate_trust_domain

CA_FILES = ("root.crt", "root.key", "issuing.crt", "issuing.key", "ca.json")
_CA_JSON_FORMAT = 1

# RFC 5280 5.3.1 reason names. removeFromCRL is left out: it only has meaning in delta CRLs.
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag for flag in x509.ReasonFlags if flag is not x509.ReasonFlags.remove_from_crl
}


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags


@dataclass(frozen=True)
class IssuingCA:
    """One trusted issuing CA: its generation (1 = the one create() made) and its certificate."""

    generation: int
    certificate: x509.Certificate
    crl_url: str | None  # the CRL distribution point its certificates name

    @property
    def sha256(self) -> str:
        return sha256_fingerprint(self.certificate)


def parse_revocation_reason(text: str) -> x509.ReasonFlags:
    """``keyCompromise``, ``key-compromise``, ``key_compromise`` and ``KeyCompromise`` all parse."""
    wanted = text.replace("-", "").replace("_", "").strip().lower()
    for name, flag in REVOCATION_REASONS.items():
        if name.lower() == wanted:
            return flag
    raise PkiError(
        "unknown_revocation_reason",
        f"unknown revocation reason {text!r}; use one of {', '.join(REVOCATION_REASONS)}",
    )


def revocation_flag(reason: str) -> x509.ReasonFlags:
    """An RFC 5280 reason if the operator's text names one ("keyCompromise"), else unspecified."""
    try:
        return parse_revocation_reason(reason)
    except PkiError:
        return x509.ReasonFlags.unspecified


def _write_pem(path: Path, cert: x509.Certificate) -> None:
    write_public_file(path, cert.public_bytes(Encoding.PEM))


class _CaKey:
    """A CA key given in memory, or read from its file the first time it is needed and then kept."""

    __slots__ = ("_certificate", "_key", "_passphrase", "_path")

    def __init__(
        self,
        certificate: x509.Certificate,
        *,
        key: PrivateKey | None = None,
        path: Path | None = None,
        passphrase: Passphrase = None,
    ) -> None:
        self._certificate = certificate
        self._key = key
        self._path = path
        self._passphrase = passphrase  # for a key in memory: what its file was encrypted with

    def get(self) -> PrivateKey:
        if self._key is None:
            assert self._path is not None
            self._key = _load_ca_key(self._path, self._passphrase, self._certificate)
        return self._key

    def file_passphrase(self) -> bytes | None:
        """The passphrase its file is encrypted with (None: not encrypted), for a successor's key."""
        if self._path is None or not is_encrypted_key_file(self._path):
            return self._passphrase if isinstance(self._passphrase, bytes) else None
        return self._passphrase(self._path) if callable(self._passphrase) else self._passphrase


def _load_ca_key(path: Path, passphrase: Passphrase, certificate: x509.Certificate) -> PrivateKey:
    try:
        key = load_private_key(path, passphrase)
    except KeyFileError as exc:
        # Passphrase and permission problems keep their precise reason; a key file that is not
        # a usable key is just one more way for the CA directory to be corrupt.
        reason = "ca_corrupt" if exc.reason in ("not_a_key", "unsupported_key_type") else exc.reason
        raise CAError(reason, exc.message) from exc
    if key.public_key() != certificate.public_key():
        crt = path.with_suffix(".crt").name
        raise CAError(
            "ca_corrupt", f"{path.name} in {path.parent} does not match {crt}; restore both from a backup"
        )
    return key


def load_root_key(path: Path, root: x509.Certificate, passphrase: Passphrase = None) -> PrivateKey:
    """The root key from ``path`` (this directory's root.key, or the operator's offline copy)."""
    key = load_private_key(path, passphrase)
    if key.public_key() != root.public_key():
        raise CAError(
            "root_key_mismatch",
            f"{path} does not hold this CA's root key; use the copy exported from this data directory",
        )
    return key


def _issuing_files(directory: Path, generation: int) -> tuple[Path, Path]:
    """Where issuing CA `generation` lives: its own name, or (the first, never rotated) issuing.*.

    After a rotation issuing.crt is only a copy of the current one, so generation 1 counts as never
    rotated only while it is the current one (ca.json names no other)."""
    named = directory / f"issuing-{generation}.crt"
    if generation == 1 and not named.exists():
        return directory / "issuing.crt", directory / "issuing.key"
    return named, named.with_suffix(".key")


class CertificateAuthority:
    """The root and the issuing CAs it trusts; the newest (``generation``) issues, signs its CRL and
    the server certificate, the older ones only sign their own CRLs until they are retired."""

    def __init__(
        self,
        root: x509.Certificate,
        issuing: x509.Certificate,
        issuing_key: PrivateKey,
        trust_domain: str,
        crl_url: str | None = None,
    ) -> None:
        self._setup(root, trust_domain, crl_url, {1: (issuing, _CaKey(issuing, key=issuing_key))})

    def _setup(
        self,
        root: x509.Certificate,
        trust_domain: str,
        crl_url: str | None,
        generations: dict[int, tuple[x509.Certificate, _CaKey]],
    ) -> None:
        self.root = root
        self.trust_domain = trust_domain
        self.crl_url = crl_url
        self._generations = dict(sorted(generations.items()))
        self.generation = max(self._generations)
        self.issuing = self._generations[self.generation][0]

    @classmethod
    def _assemble(
        cls,
        root: x509.Certificate,
        trust_domain: str,
        crl_url: str | None,
        generations: dict[int, tuple[x509.Certificate, _CaKey]],
    ) -> CertificateAuthority:
        authority = cls.__new__(cls)
        authority._setup(root, trust_domain, crl_url, generations)
        return authority

    # ----------------------------------------------------------------------------------- on disk

    @classmethod
    def create(
        cls,
        directory: Path,
        trust_domain: str,
        now: datetime,
        *,
        passphrase: bytes | None = None,
        crl_url: str | None = None,
    ) -> CertificateAuthority:
        validate_trust_domain(trust_domain)
        existing = [name for name in CA_FILES if (directory / name).exists()]
        if existing or any(directory.glob("issuing-*.crt")):
            raise CAExistsError("ca_exists", f"a CA already exists in {directory}; refusing to overwrite it")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        root_key, issuing_key = generate_private_key("p256"), generate_private_key("p256")
        root = _build_root(root_key, trust_domain, now)
        issuing = _build_issuing(issuing_key, root, root_key, trust_domain, now, generation=1)
        write_private_key(directory / "root.key", root_key, passphrase)
        write_private_key(directory / "issuing.key", issuing_key, passphrase)
        _write_pem(directory / "root.crt", root)
        _write_pem(directory / "issuing.crt", issuing)
        _write_settings(directory, trust_domain, crl_url, 1)
        held = _CaKey(issuing, key=issuing_key, passphrase=passphrase)
        return cls._assemble(root, trust_domain, crl_url, {1: (issuing, held)})

    @classmethod
    def load(cls, directory: Path, passphrase: Passphrase = None) -> CertificateAuthority:
        """The CA in ``directory``. With a passphrase (or None) every key is read and checked now;
        with a PassphraseSource each is read when first used (see `unlock`)."""
        needed = ("ca.json", "root.crt", "issuing.crt", "issuing.key")
        if not any((directory / name).is_file() for name in needed) and not any(
            directory.glob("issuing-*.crt")
        ):
            raise CAError("ca_missing", f"there is no CA in {directory}; run `fleetgate init` to create one")
        _require(directory, ["ca.json", "root.crt"])
        trust_domain, crl_url, current = _read_settings(directory / "ca.json")
        root = _read_certificate(directory / "root.crt")
        generations: dict[int, tuple[x509.Certificate, _CaKey]] = {}
        for generation in range(1, current + 1):
            if generation < current:
                crt = directory / f"issuing-{generation}.crt"
                key_file = crt.with_suffix(".key")
                if not crt.is_file():
                    continue  # retired
            else:
                crt, key_file = _issuing_files(directory, generation)
            _require(directory, [crt.name, key_file.name])
            cert = _read_certificate(crt)
            _check_signed_by_root(cert, root, crt)
            generations[generation] = (cert, _CaKey(cert, path=key_file, passphrase=passphrase))
        authority = cls._assemble(root, trust_domain, crl_url, generations)
        if not callable(passphrase):
            authority.unlock()
        return authority

    def unlock(self) -> None:
        """Read every issuing CA key now (a gateway does it at start: better fail then than later)."""
        for _, key in self._generations.values():
            key.get()

    def rotate(
        self, directory: Path, root_key: PrivateKey, now: datetime, *, passphrase: bytes | None = None
    ) -> CertificateAuthority:
        """Make issuing CA ``generation + 1`` (a new key, signed by ``root_key``) the one that issues.

        The current one stays trusted. The new key is encrypted with ``passphrase``, or when none is
        given, as the current one is (with its passphrase, or not at all): one passphrase opens every
        CA key of a directory.
        """
        if root_key.public_key() != self.root.public_key():
            raise CAError(
                "root_key_mismatch",
                "that key is not this CA's root key; use the copy exported from this data directory",
            )
        current, new = self.generation, self.generation + 1
        if passphrase is None:
            passphrase = self._generations[current][1].file_passphrase()
        key = generate_private_key("p256")
        cert = _build_issuing(key, self.root, root_key, self.trust_domain, now, generation=new)
        # 1. the current CA under its generation's name (a byte copy: an encrypted key stays so)
        crt, key_file = _issuing_files(directory, current)
        named = directory / f"issuing-{current}.crt"
        if crt != named:
            copy_private_key_file(key_file, named.with_suffix(".key"))
            _write_pem(named, self.issuing)
        # 2. the new one under its own name: load() ignores it until ca.json names it
        write_private_key(directory / f"issuing-{new}.key", key, passphrase)
        _write_pem(directory / f"issuing-{new}.crt", cert)
        # 3. the commit point
        _write_settings(directory, self.trust_domain, self.crl_url, new)
        # 4. tidying: issuing.crt shows the CA that issues; the first CA's key has its own name now
        _write_pem(directory / "issuing.crt", cert)
        (directory / "issuing.key").unlink(missing_ok=True)
        generations = {**self._generations, new: (cert, _CaKey(cert, key=key, passphrase=passphrase))}
        return self._assemble(self.root, self.trust_domain, self.crl_url, generations)

    def retire(self, directory: Path, generation: int) -> CertificateAuthority:
        """Stop trusting an older issuing CA: its certificate and key are deleted."""
        if generation == self.generation:
            raise CAError(
                "issuing_ca_current",
                f"issuing CA {generation} is the one that issues; rotate first (`fleetgate ca rotate`)",
            )
        if generation not in self._generations:
            raise CAError(
                "issuing_ca_unknown",
                f"no issuing CA {generation} is trusted here; `fleetgate ca status` lists them",
            )
        crt = directory / f"issuing-{generation}.crt"  # an older one always has its own name
        key_file = crt.with_suffix(".key")
        crt.unlink(missing_ok=True)  # the certificate first: without it the key is ignored
        key_file.unlink(missing_ok=True)
        if generation == 1:
            (directory / "issuing.key").unlink(missing_ok=True)
        generations = {g: pair for g, pair in self._generations.items() if g != generation}
        return self._assemble(self.root, self.trust_domain, self.crl_url, generations)

    # ------------------------------------------------------------------------------- what it is

    @property
    def issuing_key(self) -> PrivateKey:
        return self._generations[self.generation][1].get()

    @property
    def issuing_cas(self) -> tuple[IssuingCA, ...]:
        """Every trusted issuing CA, oldest first (the last one issues)."""
        return tuple(
            IssuingCA(generation, cert, self.crl_url_for(generation))
            for generation, (cert, _) in self._generations.items()
        )

    def issuing_ca(self, generation: int) -> IssuingCA | None:
        pair = self._generations.get(generation)
        return None if pair is None else IssuingCA(generation, pair[0], self.crl_url_for(generation))

    def crl_url_for(self, generation: int) -> str | None:
        """Issuing CA 1's certificates name the configured CRL URL; later ones ``<that URL>/N``."""
        if self.crl_url is None or generation == 1:
            return self.crl_url
        return f"{self.crl_url.rstrip('/')}/{generation}"

    def trust_anchors(self) -> list[x509.Certificate]:
        """What client certificates are verified against: the root and every trusted issuing CA."""
        return [self.root, *(cert for cert, _ in reversed(self._generations.values()))]

    def issued_by(self, cert: x509.Certificate) -> IssuingCA | None:
        """The trusted issuing CA that signed ``cert``, if any."""
        for generation, (issuer, _) in self._generations.items():
            if cert.issuer != issuer.subject:
                continue
            try:
                cert.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return self.issuing_ca(generation)
        return None

    # ------------------------------------------------------------------------------------ issuing

    def chain(self) -> list[x509.Certificate]:
        """What a leaf presents above itself: the issuing CA (the root is the trust anchor)."""
        return [self.issuing]

    def issue(
        self, csr: x509.CertificateSigningRequest, identity: Identity, now: datetime, lifetime: timedelta
    ) -> x509.Certificate:
        """Certify the CSR's key for ``identity``; the CSR's subject and extensions are ignored."""
        public_key = csr_public_key(csr)
        self._check_identity(identity)
        crl_url = self.crl_url_for(self.generation)
        extensions = profiles.client_extensions(identity, public_key, self.issuing, crl_url)
        return self._sign_leaf(identity.common_name, public_key, now, lifetime, extensions)

    def issue_server_certificate(
        self,
        name: str,
        hostnames: Sequence[str],
        public_key: object,
        now: datetime,
        lifetime: timedelta,
    ) -> x509.Certificate:
        identity = make_identity("gateway", name, self.trust_domain)
        key = as_accepted_public_key(public_key)
        crl_url = self.crl_url_for(self.generation)
        extensions = profiles.server_extensions(identity, hostnames, key, self.issuing, crl_url)
        return self._sign_leaf(name, key, now, lifetime, extensions)

    def _check_identity(self, identity: Identity) -> None:
        if identity.trust_domain != self.trust_domain:
            raise IdentityError(
                "foreign_trust_domain",
                f"{identity} is in trust domain {identity.trust_domain}, this CA serves {self.trust_domain}",
            )

    def _sign_leaf(
        self,
        common_name: str,
        public_key: PublicKey,
        now: datetime,
        lifetime: timedelta,
        extensions: Sequence[profiles.Extension],
    ) -> x509.Certificate:
        window = profiles.validity(now, lifetime, self.issuing)
        subject = profiles.leaf_subject(common_name)
        return profiles.build_certificate(
            subject, public_key, self.issuing.subject, self.issuing_key, window, extensions
        )

    # -------------------------------------------------------------------------------- revocation

    def build_crl(
        self,
        revoked: Iterable[RevokedEntry],
        now: datetime,
        next_update: timedelta = timedelta(days=1),
        *,
        crl_number: int | None = None,
        generation: int | None = None,
    ) -> x509.CertificateRevocationList:
        """The CRL of issuing CA ``generation`` (default: the current one), signed with its own key;
        ``revoked`` must be what that CA issued."""
        issuer, key_holder = self._generations[self.generation if generation is None else generation]
        key = key_holder.get()
        number = int(now.timestamp()) if crl_number is None else crl_number
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        )
        for entry in revoked:
            builder = builder.add_revoked_certificate(_revoked_certificate(entry))
        return builder.sign(key, profiles.signature_hash(key))


def csr_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    """The CSR's key, after proof of possession and the key-strength policy."""
    try:
        valid = csr.is_signature_valid
    except Exception:  # unsupported signature algorithms surface as assorted exceptions
        valid = False
    if not valid:
        raise CSRError(
            "bad_csr_signature", "the CSR's signature does not verify; sign it with the key it carries"
        )
    try:
        public_key = csr.public_key()
    except Exception:
        raise CSRError(
            "unsupported_key", "the CSR's public key type is not supported; use ECDSA P-256"
        ) from None
    return as_accepted_public_key(public_key)


def _revoked_certificate(entry: RevokedEntry) -> x509.RevokedCertificate:
    builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
    # RFC 5280 5.3.1: omit the reason extension rather than say "unspecified".
    if entry.reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()


def _build_root(key: PrivateKey, trust_domain: str, now: datetime) -> x509.Certificate:
    name = profiles.ca_name(f"{trust_domain} root CA")
    public = as_accepted_public_key(key.public_key())
    extensions = profiles.ca_extensions(public, None, path_length=1)
    window = profiles.validity(now, profiles.ROOT_LIFETIME, None)
    return profiles.build_certificate(name, public, name, key, window, extensions)


def _build_issuing(
    key: PrivateKey,
    root: x509.Certificate,
    root_key: PrivateKey,
    trust_domain: str,
    now: datetime,
    *,
    generation: int,
) -> x509.Certificate:
    # A name per generation: OpenSSL, CRL matching and people tell two issuing CAs apart by name.
    suffix = "" if generation == 1 else f" {generation}"
    name = profiles.ca_name(f"{trust_domain} issuing CA{suffix}")
    public = as_accepted_public_key(key.public_key())
    root_public = as_accepted_public_key(root.public_key())
    extensions = profiles.ca_extensions(public, root_public, path_length=0)
    window = profiles.validity(now, profiles.ISSUING_LIFETIME, root)
    return profiles.build_certificate(name, public, root.subject, root_key, window, extensions)


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        raise CAError(
            "ca_corrupt", f"{path} is not a readable PEM certificate; restore it from a backup"
        ) from None


def _read_settings(path: Path) -> tuple[str, str | None, int]:
    try:
        settings = json.loads(path.read_text())
        trust_domain = validate_trust_domain(settings["trust_domain"])
        crl_url = settings.get("crl_url")
        if crl_url is not None and not isinstance(crl_url, str):
            raise TypeError("crl_url")
        generation = settings.get("issuing_generation", 1)  # written by rotate(); absent: never rotated
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
            raise TypeError("issuing_generation")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CAError(
            "ca_corrupt", f"{path} is not a valid CA settings file; restore it from a backup"
        ) from None
    return trust_domain, crl_url, generation


def _write_settings(directory: Path, trust_domain: str, crl_url: str | None, generation: int) -> None:
    settings = {
        "format": _CA_JSON_FORMAT,
        "trust_domain": trust_domain,
        "crl_url": crl_url,
        "issuing_generation": generation,
    }
    write_public_file(directory / "ca.json", json.dumps(settings, indent=2).encode() + b"\n")


def _require(directory: Path, names: Sequence[str]) -> None:
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise CAError(
            "ca_incomplete",
            f"the CA in {directory} is incomplete (missing {', '.join(missing)}); restore it from a backup",
        )


def _check_signed_by_root(cert: x509.Certificate, root: x509.Certificate, path: Path) -> None:
    try:
        cert.verify_directly_issued_by(root)
    except (InvalidSignature, ValueError, TypeError):
        raise CAError(
            "ca_corrupt",
            f"{path.name} in {path.parent} was not signed by root.crt; restore both from a backup",
        ) from None


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
