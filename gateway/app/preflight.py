"""Checks `fleetgate serve` runs before it opens anything: better one clear sentence at start than a
crash loop or a gateway that no client can reach.

Each problem is a `PreflightProblem` (fatal) or a warning string. Time is an argument.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.stores.datadir import DataDir

SERVER_CERT_WARNING = timedelta(days=14)
# Unit certificates are cut at the issuing CA's expiry (pki/profiles.validity), so rotate well before:
# at 90 days every 30-day unit has renewed at least twice onto the new one.
ISSUING_CA_WARNING = timedelta(days=90)


class PreflightProblem(RuntimeError):
    """The gateway must not start; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class PreflightReport:
    warnings: tuple[str, ...]


def run_preflight(data: DataDir, now: datetime, skew: timedelta = timedelta(minutes=5)) -> PreflightReport:
    if not data.is_initialised():
        raise PreflightProblem(
            f"{data.root} is not an initialised data directory; run `fleetgate init --data {data.root}`"
        )
    _check_private_key(data.server_key)
    # The CA keys there are: root.key may be offline (`fleetgate ca remove-root-key`), and the issuing
    # keys are issuing.key or issuing-N.key (pki/authority.py); CertificateAuthority.load says
    # precisely which one is missing.
    for key in sorted(data.ca_dir.glob("*.key")):
        _check_private_key(key)
    warnings: list[str] = []
    for label, path in (
        ("root CA", data.root_cert),
        ("issuing CA", data.issuing_cert),
        ("server", data.server_cert),
    ):
        cert = _load_certificate(label, path)
        warning = _check_validity(label, path, cert, now, skew)
        if warning:
            warnings.append(warning)
    return PreflightReport(tuple(warnings))


def _check_private_key(path: Path) -> None:
    if not path.exists():
        raise PreflightProblem(f"{path} is missing; restore the data directory from `fleetgate backup`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PreflightProblem(
            f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}` and start again"
        )


def _load_certificate(label: str, path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PreflightProblem(
            f"the {label} certificate {path} is missing; restore it from a backup"
        ) from None
    except ValueError:
        raise PreflightProblem(
            f"the {label} certificate {path} is not a PEM certificate; restore it"
        ) from None


def _check_validity(label: str, path: Path, cert: x509.Certificate, now: datetime, skew: timedelta) -> str:
    not_after = cert.not_valid_after_utc
    if now - skew > not_after:
        fix = {
            "server": "issue a new one: `fleetgate server-cert issue`",
            "issuing CA": "rotate it: `fleetgate ca rotate` (docs/operations.md)",
        }.get(label, "make a new CA with `fleetgate init` on a new data dir (every unit enrolls again)")
        raise PreflightProblem(f"the {label} certificate {path} expired on {not_after:%Y-%m-%d}; {fix}")
    if now + skew < cert.not_valid_before_utc:
        raise PreflightProblem(
            f"the {label} certificate {path} is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M}; "
            "check this machine's clock"
        )
    if label == "server" and not_after - now < SERVER_CERT_WARNING:
        days = max(0, (not_after - now).days)
        return f"the server certificate {path} expires in {days} days ({not_after:%Y-%m-%d}); renew it soon"
    if label == "issuing CA" and not_after - now < ISSUING_CA_WARNING:
        days = max(0, (not_after - now).days)
        return (
            f"the issuing CA {path} expires in {days} days ({not_after:%Y-%m-%d}) and unit certificates are "
            "cut at its expiry; rotate it: `fleetgate ca rotate` (docs/operations.md)"
        )
    return ""
