"""FleetCA: the CA's operations as the CLI and the EST handlers use them.

Each operation reads what it needs, decides (pki.enrollment), signs (pki.authority) and records
(pki.store) inside one registry transaction, so a concurrent enrollment, revocation or second
process sees either all of it or none of it, and a refusal changes nothing. Revocations rewrite the
CRL files before returning. No HTTP, no audit: callers audit the values returned.

An operation that will sign unlocks the CA's keys before it changes anything (`_unlock`), so a
missing passphrase refuses it whole instead of after a revocation was recorded.

Issuing CA lifecycle: `rotate_issuing_ca` makes a new issuing CA (pki/authority.py) the one that
issues; every trusted issuing CA keeps its own CRL (`write_crl`), listing what it signed (the
registry records each certificate's issuing CA). `retire_issuing_ca` refuses while certificates of
the old one are still in use (pki.store: the newest valid certificate of their identity), then
records every certificate it signed as revoked (superseded: it says nothing against their keys, and
does not reach what was renewed from them) and deletes its files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pki.authority import CertificateAuthority, IssuingCA, sha256_fingerprint
from pki.enrollment import (
    Refusal,
    RefusalReason,
    TokenRecord,
    check_csr,
    check_enrollment,
    check_reenrollment,
    hash_token,
    new_token,
)
from pki.errors import AlreadyExistsError, CSRError, NotFoundError, PkiError, WeakKeyError
from pki.keys import PrivateKey, generate_private_key, write_private_key, write_public_file
from pki.names import Identity, IdentityError, identity_from_certificate, make_identity
from pki.store import CertificateRecord, IdentityRecord, Registry

DIRECT_ISSUE_KINDS = ("operator", "service", "partner")  # units get certificates only by enrolling

# May the holder of an operator, service or partner certificate renew it over EST?
#   refuse   no: an operator issues a new one (`fleetgate KIND add NAME`), audited with its actor;
#   bounded  yes, with a key of its own, but no renewal outlives the first certificate of its lineage —
#            the one an operator issued, whose expiry the registry holds — so letting it lapse still
#            cuts the identity off.
# Units always renew (at 2/3 of their life): nobody re-issues a fleet by hand.
SELF_RENEWAL_MODES = ("refuse", "bounded")
STRICT_SELF_RENEWAL: Mapping[str, str] = {kind: "refuse" for kind in DIRECT_ISSUE_KINDS}
DEFAULT_TOKEN_TTL = timedelta(hours=24)
DEFAULT_CRL_VALIDITY = timedelta(days=1)


@dataclass(frozen=True)
class EnrollmentResult:
    certificate: x509.Certificate | None
    refusal: Refusal | None

    @property
    def ok(self) -> bool:
        return self.certificate is not None


@dataclass(frozen=True)
class Revocation:
    """What revoking one serial did: the certificate itself, and the ones renewed from it."""

    serial: int
    changed: bool  # this call revoked `serial` (False: unknown, or revoked before)
    descendants: tuple[int, ...] = ()  # renewed from it, directly or not, revoked by this call

    @property
    def serials(self) -> tuple[int, ...]:
        return ((self.serial,) if self.changed else ()) + self.descendants


@dataclass(frozen=True)
class Retirement:
    """What retiring an issuing CA did."""

    generation: int
    revoked: int  # unexpired certificates it signed, now recorded as revoked (superseded)
    forced_in_use: int  # of those, how many were still in use (only with force)


def follows_lineage(reason: x509.ReasonFlags) -> bool:
    """Does revoking a certificate for `reason` revoke every certificate renewed from it too?

    A renewal (EST simplereenroll) is granted to whoever presents the certificate and its key, so
    what a revocation says about that credential or its holder holds for everything renewed with
    it: a compromised key may already have renewed itself into an attacker's key (keyCompromise), a
    retired unit's or departed partner's renewals are retired too (cessationOfOperation,
    affiliationChanged, privilegeWithdrawn), and a revocation that gives no reason (unspecified,
    certificateHold) is read the safe way. Only ``superseded`` says nothing against the credential —
    a successor took over — so revoking a predecessor as superseded leaves its successors alone.
    """
    return reason is not x509.ReasonFlags.superseded


def _refused(reason: RefusalReason, detail: str = "") -> EnrollmentResult:
    return EnrollmentResult(None, Refusal(reason, detail))


class FleetCA:
    def __init__(
        self,
        authority: CertificateAuthority,
        registry: Registry,
        crl_dir: Path,
        *,
        crl_validity: timedelta = DEFAULT_CRL_VALIDITY,
    ) -> None:
        self.authority = authority
        self.registry = registry
        self.crl_dir = crl_dir
        self.crl_validity = crl_validity
        self._crls: dict[int, x509.CertificateRevocationList] = {}  # per issuing CA generation

    @property
    def trust_domain(self) -> str:
        return self.authority.trust_domain

    def use_authority(self, authority: CertificateAuthority) -> None:
        """Work with the CA as it is on disk now (after a rotation or a retirement)."""
        self.authority = authority
        self._crls = {}

    def _unlock(self) -> None:
        self.authority.unlock()

    # ----------------------------------------------------------------------------- registration

    def register_unit(
        self,
        unit_id: str,
        now: datetime,
        token_ttl: timedelta = DEFAULT_TOKEN_TTL,
        metadata: dict[str, str] | None = None,
        *,
        reissue: bool = False,
    ) -> str:
        """Create the unit (state ``registered``) and return its one-time token (stored as a hash).

        A unit that already exists is refused (``already_exists``): adding twice is usually a typo
        or a retried script, and silently replacing a token already handed to a device would break
        its enrollment. ``reissue=True`` instead gives a unit that is still ``registered`` without a
        certificate (first token lost) a fresh token; new_token() does that for any unit.
        """
        make_identity("unit", unit_id, self.trust_domain)
        with self.registry.transaction():
            record = self.registry.get_identity("unit", unit_id)
            if record is None:
                self.registry.add_identity("unit", unit_id, now, metadata)
            elif not (reissue and self._never_enrolled(record)):
                raise AlreadyExistsError(
                    "already_exists",
                    f"unit {unit_id} already exists ({record.state}); "
                    "give it a new token instead of adding it again",
                )
            return self._issue_token("unit", unit_id, now, token_ttl)

    def _never_enrolled(self, record: IdentityRecord) -> bool:
        return (
            record.state == "registered" and self.registry.latest_certificate(record.kind, record.id) is None
        )

    def new_token(self, unit_id: str, now: datetime, ttl: timedelta = DEFAULT_TOKEN_TTL) -> str:
        """A fresh token for an existing, non-revoked unit (new device, lost token); older ones expire."""
        with self.registry.transaction():
            record = self._require("unit", unit_id)
            if record.state == "revoked":
                raise PkiError(
                    "identity_revoked",
                    f"unit {unit_id} is revoked; remove it and add it again to re-enroll it",
                )
            return self._issue_token("unit", unit_id, now, ttl)

    def _issue_token(self, kind: str, ident: str, now: datetime, ttl: timedelta) -> str:
        if ttl <= timedelta(0):
            raise PkiError("invalid_lifetime", f"token lifetime {ttl} must be positive")
        self.registry.revoke_tokens(kind, ident, now)
        token = new_token()
        self.registry.add_token(TokenRecord(hash_token(token), ident, now, now + ttl, None, kind))
        return token

    def _require(self, kind: str, ident: str) -> IdentityRecord:
        record = self.registry.get_identity(kind, ident)
        if record is None:
            raise NotFoundError("unknown_identity", f"there is no {kind} {ident}; check the id")
        return record

    # -------------------------------------------------------------------------------- enrollment

    def enroll(
        self,
        unit_id: str,
        token: str,
        csr: x509.CertificateSigningRequest,
        now: datetime,
        lifetime: timedelta,
    ) -> EnrollmentResult:
        """First certificate of a unit, authorised by its one-time token."""
        self._unlock()
        with self.registry.transaction():
            record = self.registry.get_token(hash_token(token))
            unit = self.registry.get_identity("unit", unit_id)
            state = unit.state if unit else None
            refusal = check_enrollment(unit_id, token, record, state, csr, self.trust_domain, now)
            if refusal is not None:
                return EnrollmentResult(None, refusal)
            assert record is not None and state is not None  # check_enrollment refuses otherwise
            # Within the transaction nobody else can have used it, but the single conditional UPDATE
            # is what guarantees "exactly once" even if this code is ever called outside one.
            if not self.registry.consume_token(record.token_hash, now):
                return _refused(RefusalReason.TOKEN_USED, "used by a concurrent enrollment")
            identity = make_identity("unit", unit_id, self.trust_domain)
            return EnrollmentResult(self._issue_and_record(csr, identity, state, now, lifetime), None)

    def reenroll(
        self,
        current_cert: x509.Certificate,
        csr: x509.CertificateSigningRequest,
        now: datetime,
        lifetime: timedelta,
        *,
        self_renewal: Mapping[str, str] = STRICT_SELF_RENEWAL,
    ) -> EnrollmentResult:
        """A new certificate for the holder of a current one; the old one stays valid until it expires.

        The new certificate is recorded as renewed from the current one, so revoking the current one
        (or any it was renewed from) reaches it too (`revoke_certificate`). Operators, services and
        partners renew only as `self_renewal` allows their kind (SELF_RENEWAL_MODES; refused when
        not named).
        """
        try:
            identity = identity_from_certificate(current_cert, self.trust_domain)
        except IdentityError as exc:
            return _refused(RefusalReason.UNKNOWN_CERTIFICATE, exc.reason)
        if identity.kind not in (*DIRECT_ISSUE_KINDS, "unit"):
            return _refused(RefusalReason.UNKNOWN_CERTIFICATE, "server certificates are not renewed over EST")
        self._unlock()
        with self.registry.transaction():
            known = self.registry.get_certificate(current_cert.serial_number)
            if known is None or known.fingerprint != sha256_fingerprint(current_cert):
                return _refused(RefusalReason.UNKNOWN_CERTIFICATE, f"serial {current_cert.serial_number:x}")
            holder = self.registry.get_identity(identity.kind, identity.id)
            state = holder.state if holder else None
            refusal = check_reenrollment(
                identity,
                known.status == "revoked",
                state,
                csr,
                self.trust_domain,
                now,
                not_after=known.not_after,
            )
            if refusal is not None:
                return EnrollmentResult(None, refusal)
            assert state is not None
            if identity.kind != "unit":
                bounded = self._self_renewal_lifetime(identity, known, self_renewal, now, lifetime)
                if isinstance(bounded, Refusal):
                    return EnrollmentResult(None, bounded)
                lifetime = bounded
            cert = self._issue_and_record(
                csr, identity, state, now, lifetime, renewed_from=current_cert.serial_number
            )
            return EnrollmentResult(cert, None)

    def _self_renewal_lifetime(
        self,
        identity: Identity,
        current: CertificateRecord,
        self_renewal: Mapping[str, str],
        now: datetime,
        lifetime: timedelta,
    ) -> timedelta | Refusal:
        """How long an operator's, service's or partner's renewal may live, or why it may not."""
        mode = self_renewal.get(identity.kind, "refuse")
        if mode != "bounded":
            return Refusal(
                RefusalReason.SELF_RENEWAL_REFUSED,
                f"{identity.kind} certificates come from `fleetgate {identity.kind} add {identity.id}`; "
                f"certificates.self_renewal.{identity.kind} is {mode}",
            )
        first = (self.registry.ancestors(current.serial) or [current])[0]  # what an operator issued
        remaining = first.not_after - now
        if remaining <= timedelta(0):
            return Refusal(
                RefusalReason.CERTIFICATE_EXPIRED, f"its lineage ended {first.not_after:%Y-%m-%d %H:%M} UTC"
            )
        return min(lifetime, remaining)

    def issue_identity(
        self,
        kind: str,
        ident: str,
        csr: x509.CertificateSigningRequest,
        now: datetime,
        lifetime: timedelta,
        metadata: dict[str, str] | None = None,
    ) -> x509.Certificate:
        """Certificate for an operator, service or partner, issued on an operator's say-so."""
        if kind not in DIRECT_ISSUE_KINDS:
            raise PkiError(
                "wrong_kind", f"{kind} certificates are not issued directly; units enroll with a token"
            )
        identity = make_identity(kind, ident, self.trust_domain)
        _raise_for(check_csr(csr, identity, RefusalReason.CSR_IDENTITY_MISMATCH))
        self._unlock()
        with self.registry.transaction():
            record = self.registry.get_identity(kind, ident)
            if record is None:
                record = self.registry.add_identity(kind, ident, now, metadata, state="enrolled")
            elif record.state == "revoked":
                raise PkiError("identity_revoked", f"{kind} {ident} is revoked; remove it and add it again")
            return self._issue_and_record(csr, identity, record.state, now, lifetime)

    def _issue_and_record(
        self,
        csr: x509.CertificateSigningRequest,
        identity: Identity,
        state: str,
        now: datetime,
        lifetime: timedelta,
        *,
        renewed_from: int | None = None,
    ) -> x509.Certificate:
        # Called inside a registry transaction: if signing or recording fails, nothing is kept.
        cert = self.authority.issue(csr, identity, now, lifetime)
        self.registry.add_certificate(
            cert, identity, now, renewed_from=renewed_from, issuing_ca=self.authority.generation
        )
        if state == "registered":  # quarantine survives renewal; enrolled stays enrolled
            self.registry.set_state(identity.kind, identity.id, "enrolled", now)
        return cert

    # -------------------------------------------------------------------------------- revocation

    def revoke_certificate(self, serial: int, reason: x509.ReasonFlags, now: datetime) -> Revocation:
        """Revoke a certificate and, unless the reason is ``superseded`` (`follows_lineage`), every
        certificate renewed from it, transitively, with the same reason — in one transaction, so a
        renewal racing the revocation is either revoked with it or refused for its revoked parent.

        Descendants are revoked even when `serial` itself was revoked before (say as superseded,
        before its key turned out to be compromised). The CRL files are rewritten before returning.
        """
        descendants: list[int] = []
        self._unlock()
        with self.registry.transaction():
            changed = self.registry.revoke_certificate(serial, reason, now)
            if follows_lineage(reason):
                descendants = [
                    child
                    for child in self.registry.descendants(serial)
                    if self.registry.revoke_certificate(child, reason, now)
                ]
        revocation = Revocation(serial, changed, tuple(descendants))
        if revocation.serials:
            self.write_crl(now)
        return revocation

    def revoke_identity(self, kind: str, ident: str, reason: x509.ReasonFlags, now: datetime) -> list[int]:
        """Revoke every valid certificate and pending token of an identity and mark it ``revoked``."""
        self._unlock()
        with self.registry.transaction():
            self._require(kind, ident)
            serials = self.revoke_identity_certificates(kind, ident, reason, now)
            self.registry.revoke_tokens(kind, ident, now)
            self.registry.set_state(kind, ident, "revoked", now)
        self.write_crl(now)
        return serials

    def remove_identity(self, kind: str, ident: str, now: datetime, *, force: bool = False) -> list[int]:
        """Delete an identity. With ``force`` its valid certificates are revoked first (returned)."""
        serials: list[int] = []
        if force:
            self._unlock()
        with self.registry.transaction():
            if force:
                serials = self.revoke_identity_certificates(
                    kind, ident, x509.ReasonFlags.cessation_of_operation, now
                )
            self.registry.remove_identity(kind, ident, force=force, now=now)
        if serials:
            self.write_crl(now)
        return serials

    def revoke_identity_certificates(
        self, kind: str, ident: str, reason: x509.ReasonFlags, now: datetime
    ) -> list[int]:
        """Revoke the identity's valid certificates without touching its state; CRL left to the caller."""
        with self.registry.transaction():
            serials = [c.serial for c in self.registry.list_certificates(kind, ident) if c.status == "valid"]
            for serial in serials:
                self.registry.revoke_certificate(serial, reason, now)
        return serials

    # -------------------------------------------------------------------------------------- CRLs

    def write_crl(self, now: datetime) -> x509.CertificateRevocationList:
        """Build every trusted issuing CA's CRL from the registry, each signed with that CA's key, and
        write them atomically: ``crl.der`` the current CA's, ``crl.pem`` all of them (the current
        one first; OpenSSL's -CRLfile and Mosquitto's crlfile read them all). Returns the current one."""
        self._unlock()
        crls: dict[int, x509.CertificateRevocationList] = {}
        for issuing in reversed(self.authority.issuing_cas):  # the current one first
            entries = self.registry.revoked_entries(now, issuing_ca=issuing.generation)
            number = self.registry.next_crl_number(now)
            crls[issuing.generation] = self.authority.build_crl(
                entries, now, self.crl_validity, crl_number=number, generation=issuing.generation
            )
        current = crls[self.authority.generation]
        self.crl_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_public_file(self.crl_dir / "crl.der", current.public_bytes(Encoding.DER))
        bundle = b"".join(crl.public_bytes(Encoding.PEM) for crl in crls.values())
        write_public_file(self.crl_dir / "crl.pem", bundle)
        self._crls = crls
        return current

    def current_crl(self, now: datetime, generation: int | None = None) -> x509.CertificateRevocationList:
        """The CRL to serve for issuing CA `generation` (default: the current one): rebuilt past half
        its validity, or when another process revoked something."""
        wanted = self.authority.generation if generation is None else generation
        if self.authority.issuing_ca(wanted) is None:
            raise PkiError("issuing_ca_unknown", f"no issuing CA {wanted} is trusted here")
        crl = self._crls.get(wanted)
        if crl is None or self._crl_outdated(crl, now, wanted):
            self.write_crl(now)
            crl = self._crls[wanted]
        return crl

    def current_crls(self, now: datetime) -> list[x509.CertificateRevocationList]:
        """Every trusted issuing CA's CRL, the current one first."""
        return [self.current_crl(now, ca.generation) for ca in reversed(self.authority.issuing_cas)]

    def _crl_outdated(self, crl: x509.CertificateRevocationList, now: datetime, generation: int) -> bool:
        next_update = crl.next_update_utc or crl.last_update_utc
        if now >= crl.last_update_utc + (next_update - crl.last_update_utc) / 2 or now < crl.last_update_utc:
            return True
        # The CLI revokes from its own process; the registry is the truth, the cache may lag it.
        listed = {entry.serial_number for entry in crl}
        revoked = self.registry.revoked_entries(now, issuing_ca=generation)
        return listed != {entry.serial for entry in revoked}

    # ------------------------------------------------------------------------------ issuing CAs

    def rotate_issuing_ca(
        self, ca_dir: Path, root_key: PrivateKey, now: datetime, *, passphrase: bytes | None = None
    ) -> IssuingCA:
        """A new issuing CA (pki/authority.py: CertificateAuthority.rotate) issues from now on; the
        previous ones stay trusted, each CRL signed by its own CA."""
        self._unlock()  # the previous CAs keep signing their CRLs: their keys must still open
        self.use_authority(self.authority.rotate(ca_dir, root_key, now, passphrase=passphrase))
        self.write_crl(now)
        return self.authority.issuing_cas[-1]

    def retire_issuing_ca(
        self, ca_dir: Path, generation: int, now: datetime, *, force: bool = False
    ) -> Retirement:
        """Stop trusting issuing CA `generation`: refused while certificates it signed are still in use
        (unless `force`); then every unexpired certificate it signed is recorded as revoked
        (superseded), so the gateway refuses them at once, and its files are deleted."""
        if self.authority.issuing_ca(generation) is None or generation == self.authority.generation:
            self.authority.retire(ca_dir, generation)  # raises the precise refusal
        self._unlock()
        with self.registry.transaction():
            in_use = self.registry.issued_counts(now).get(generation, {}).get("in_use", 0)
            if in_use and not force:
                examples = ", ".join(f"{k}/{i}" for k, i in self.registry.in_use_by(generation, now))
                raise PkiError(
                    "issuing_ca_in_use",
                    f"{in_use} certificate(s) in use were issued by issuing CA {generation} "
                    f"(e.g. {examples}); "
                    "wait until they have renewed, re-issue role identities, or retire with --force "
                    "(their holders then need a new certificate: `fleetgate unit token`)",
                )
            serials = self.registry.valid_serials(generation, now)
            for serial in serials:
                self.registry.revoke_certificate(serial, x509.ReasonFlags.superseded, now)
        self.use_authority(self.authority.retire(ca_dir, generation))
        self.write_crl(now)
        return Retirement(generation, len(serials), in_use if force else 0)

    # --------------------------------------------------------------------------- server identity

    def issue_server_certificate(
        self,
        name: str,
        hostnames: Sequence[str],
        directory: Path,
        now: datetime,
        lifetime: timedelta = timedelta(days=90),
        *,
        key_algorithm: str = "p256",
        record: bool = False,
    ) -> x509.Certificate:
        """Make the gateway's key and certificate: ``server.key`` (0600), ``server.crt`` (leaf + issuing).

        ``record=True`` also enters it in the registry as identity ``gateway/<name>`` (so it can be
        listed and revoked like any other); by default it is not, so certificate listings show
        only client identities.
        """
        self._unlock()
        key = generate_private_key(key_algorithm)
        cert = self.authority.issue_server_certificate(name, hostnames, key.public_key(), now, lifetime)
        if record:
            self._record_server_certificate(name, cert, now)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_key(directory / "server.key", key)
        chain = b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *self.authority.chain()))
        write_public_file(directory / "server.crt", chain)
        return cert

    def _record_server_certificate(self, name: str, cert: x509.Certificate, now: datetime) -> None:
        identity = make_identity("gateway", name, self.trust_domain)
        with self.registry.transaction():
            if self.registry.get_identity("gateway", name) is None:
                self.registry.add_identity("gateway", name, now, state="enrolled")
            self.registry.add_certificate(cert, identity, now, issuing_ca=self.authority.generation)


def _raise_for(refusal: Refusal | None) -> None:
    if refusal is None:
        return
    message = refusal.reason.message + (f" ({refusal.detail})" if refusal.detail else "")
    if refusal.reason is RefusalReason.WEAK_KEY:
        raise WeakKeyError("weak_key", message)
    raise CSRError(refusal.reason.code, message)
