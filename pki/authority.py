"""The certificate authority: a root and one issuing CA, on disk in one directory.

Layout of the CA directory (created 0700)::

    root.crt     root certificate (PEM, 0644)       issuing.crt  issuing CA certificate (PEM, 0644)
    root.key     root key (PKCS#8 PEM, 0600)        issuing.key  issuing CA key (PKCS#8 PEM, 0600)
    ca.json      trust domain and CRL URL; written last, so its presence means "creation finished"

The root key's only job is signing the issuing CA. It stays on disk (0600) so an operator can take it
offline or use it to sign a successor; nothing in fleetgate loads it after create().

CRL numbers (RFC 5280 5.2.3) must grow with every CRL. build_crl takes an explicit ``crl_number``
(the service draws it from the registry, Registry.next_crl_number); when none is given it is the
Unix time of ``now`` in seconds, which grows as long as CRLs are built at least a second apart. The
registry's counter never goes below that same clock value, so the two schemes can be mixed safely.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pki import profiles
from pki.errors import CAError, CAExistsError, CSRError, KeyFileError, PkiError
from pki.keys import (
    PrivateKey,
    PublicKey,
    as_accepted_public_key,
    generate_private_key,
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


def _write_pem(path: Path, cert: x509.Certificate) -> None:
    write_public_file(path, cert.public_bytes(Encoding.PEM))


@dataclass(frozen=True)
class CertificateAuthority:
    root: x509.Certificate
    issuing: x509.Certificate
    issuing_key: PrivateKey = field(repr=False)
    trust_domain: str
    crl_url: str | None = None

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
        if existing:
            raise CAExistsError("ca_exists", f"a CA already exists in {directory}; refusing to overwrite it")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        root_key, issuing_key = generate_private_key("p256"), generate_private_key("p256")
        root = _build_root(root_key, trust_domain, now)
        issuing = _build_issuing(issuing_key, root, root_key, trust_domain, now)
        write_private_key(directory / "root.key", root_key, passphrase)
        write_private_key(directory / "issuing.key", issuing_key, passphrase)
        _write_pem(directory / "root.crt", root)
        _write_pem(directory / "issuing.crt", issuing)
        settings = {"format": _CA_JSON_FORMAT, "trust_domain": trust_domain, "crl_url": crl_url}
        write_public_file(directory / "ca.json", json.dumps(settings, indent=2).encode() + b"\n")
        return cls(root, issuing, issuing_key, trust_domain, crl_url)

    @classmethod
    def load(cls, directory: Path, passphrase: bytes | None = None) -> CertificateAuthority:
        needed = ("ca.json", "root.crt", "issuing.crt", "issuing.key")
        missing = [name for name in needed if not (directory / name).is_file()]
        if len(missing) == len(needed):
            raise CAError("ca_missing", f"there is no CA in {directory}; run `fleetgate init` to create one")
        if missing:
            raise CAError(
                "ca_incomplete",
                f"the CA in {directory} is incomplete (missing {', '.join(missing)}); "
                "restore it from a backup",
            )
        trust_domain, crl_url = _read_settings(directory / "ca.json")
        root = _read_certificate(directory / "root.crt")
        issuing = _read_certificate(directory / "issuing.crt")
        try:
            key = load_private_key(directory / "issuing.key", passphrase)
        except KeyFileError as exc:
            # Passphrase and permission problems keep their precise reason; a key file that is not
            # a usable key is just one more way for the CA directory to be corrupt.
            reason = "ca_corrupt" if exc.reason in ("not_a_key", "unsupported_key_type") else exc.reason
            raise CAError(reason, exc.message) from exc
        authority = cls(root, issuing, key, trust_domain, crl_url)
        authority._check_consistent(directory)
        return authority

    def _check_consistent(self, directory: Path) -> None:
        try:
            self.issuing.verify_directly_issued_by(self.root)
        except (InvalidSignature, ValueError, TypeError):
            raise CAError(
                "ca_corrupt",
                f"issuing.crt in {directory} was not signed by root.crt; restore both from a backup",
            ) from None
        if self.issuing.public_key() != self.issuing_key.public_key():
            raise CAError(
                "ca_corrupt",
                f"issuing.key in {directory} does not match issuing.crt; restore both from a backup",
            )

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
        extensions = profiles.client_extensions(identity, public_key, self.issuing, self.crl_url)
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
        extensions = profiles.server_extensions(identity, hostnames, key, self.issuing, self.crl_url)
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
    ) -> x509.CertificateRevocationList:
        number = int(now.timestamp()) if crl_number is None else crl_number
        ski = self.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuing.subject)
            .last_update(now)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
        )
        for entry in revoked:
            builder = builder.add_revoked_certificate(_revoked_certificate(entry))
        return builder.sign(self.issuing_key, profiles.signature_hash(self.issuing_key))


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
    key: PrivateKey, root: x509.Certificate, root_key: PrivateKey, trust_domain: str, now: datetime
) -> x509.Certificate:
    name = profiles.ca_name(f"{trust_domain} issuing CA")
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


def _read_settings(path: Path) -> tuple[str, str | None]:
    try:
        settings = json.loads(path.read_text())
        trust_domain = validate_trust_domain(settings["trust_domain"])
        crl_url = settings.get("crl_url")
        if crl_url is not None and not isinstance(crl_url, str):
            raise TypeError("crl_url")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CAError(
            "ca_corrupt", f"{path} is not a valid CA settings file; restore it from a backup"
        ) from None
    return trust_domain, crl_url


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
