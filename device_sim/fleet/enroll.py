"""Bulk enrollment: many units, each making its own key and enrolling over EST, in parallel.

Two roles take part, as in a real fleet roll-out. Fleet ops registers the units and hands out
one-time tokens (`register_units`: `fleetgate unit add --from-csv`, run in-process, so that 500
units are one batch in one transaction instead of a Python start-up each, with the same audit records).
Each unit then makes its key, builds a CSR and enrolls over HTTPS (`enroll_fleet`), the way
`fleetgate enroll` does on a truck. A rich progress bar shows the enrollment when asked for.

Files (the layout `fleetgate enroll`, `fleetgate <role> add --out` and device_sim.load.run share):
DIR/<id>.crt (leaf + issuing chain), DIR/<id>.key (0600), DIR/ca.crt (fleet root).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pki.est_client import (
    EstClientError,
    EstServer,
    bootstrap,
    cacerts,
    issuer_of,
    simpleenroll,
    simplereenroll,
)
from pki.keys import PrivateKey, generate_private_key, write_private_key, write_public_file


@dataclass(frozen=True)
class UnitFiles:
    cert: Path  # leaf + issuing chain
    key: Path
    ca: Path  # fleet root


class EnrollmentError(RuntimeError):
    """Some units could not enroll; `failures` maps each to the server's reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} unit(s) could not enroll; {first[0]}: {first[1]}")
        self.failures = failures


def unit_ids(count: int, prefix: str = "TRK", start: int = 1) -> list[str]:
    return [f"{prefix}-{n:05d}" for n in range(start, start + count)]


def unit_csr(key: PrivateKey, unit_id: str) -> x509.CertificateSigningRequest:
    # What a device knows: its own id. The CA writes the SAN from its records, never from the CSR.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def run_fleetgate(data: Path, *args: str) -> str:
    """Run one `fleetgate ... --data DATA` command in this process and return what it printed.

    Not thread-safe (it borrows sys.stdout): call it from one thread at a time.
    """
    from gateway.cli import cli  # the ops tool; imported late so units never depend on it

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main([*args, "--data", str(data)], prog_name="fleetgate", standalone_mode=False)
    except SystemExit as exc:  # commands with their own exit codes call sys.exit
        code = exc.code
    except Exception as exc:  # click usage errors and CliError both land here; say which command failed
        raise RuntimeError(f"fleetgate {' '.join(args)}: {exc}") from exc
    if code not in (None, 0):
        detail = err.getvalue().strip() or out.getvalue().strip()
        raise RuntimeError(f"fleetgate {' '.join(args)} exited with {code}: {detail}")
    return out.getvalue()


def fleetgate(data: Path, *args: str) -> dict[str, object]:
    """Run `fleetgate ... --data DATA --json` in this process and return its JSON object."""
    text = run_fleetgate(data, *args, "--json")
    # The object comes first; some commands print a hint after it, which is not ours to parse.
    result, _ = json.JSONDecoder().raw_decode(text.lstrip())
    if not isinstance(result, dict):
        raise RuntimeError(f"fleetgate {' '.join(args)} printed {result!r}, expected an object")
    return result


def register_units(data: Path, ids: Iterable[str]) -> dict[str, str]:
    """Fleet ops: `fleetgate unit add --from-csv` with these ids, in one batch (all or nothing);
    returns unit id -> one-time token."""
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as scratch:
        units = Path(scratch) / "units.csv"
        units.write_text("unit\n" + "".join(f"{unit}\n" for unit in ids), encoding="utf-8")
        report = fleetgate(data, "unit", "add", "--from-csv", str(units))
    results = report["results"]
    assert isinstance(results, list)
    return {str(r["unit"]): str(r["token"]) for r in results}


class Issuers:
    """The fleet's issuing CAs as /cacerts lists them, asked again when a certificate names one not
    seen yet: after the gateway rotated its issuing CA, renewals come from the new one."""

    def __init__(self, server: EstServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._known: list[x509.Certificate] = []

    def pem_for(self, cert: x509.Certificate) -> bytes:
        """The issuing CA that signed `cert`, in PEM: what a unit presents after its certificate."""
        with self._lock:
            issuer = issuer_of(cert, self._known)
            if issuer is None:
                self._known = cacerts(self._server)
                issuer = issuer_of(cert, self._known)
        if issuer is None:
            raise EstClientError(
                f"{self._server.url} lists no issuing CA that signed certificate {cert.serial_number:x}"
            )
        return issuer.public_bytes(serialization.Encoding.PEM)


def enroll_one(server: EstServer, issuers: Issuers, unit_id: str, token: str, out: Path) -> UnitFiles:
    key = generate_private_key()
    cert = simpleenroll(server, unit_id, token, unit_csr(key, unit_id))
    return _save(out, unit_id, key, cert, issuers.pem_for(cert))


def renew_one(server: EstServer, issuers: Issuers, unit_id: str, files: UnitFiles) -> x509.Certificate:
    """Re-enroll over mTLS with the current certificate and a fresh key; replaces the files."""
    key = generate_private_key()
    cert = simplereenroll(server, files.cert, files.key, unit_csr(key, unit_id))
    _save(files.cert.parent, unit_id, key, cert, issuers.pem_for(cert))
    return cert


def _save(out: Path, unit_id: str, key: PrivateKey, cert: x509.Certificate, issuing_pem: bytes) -> UnitFiles:
    key_path, cert_path, ca_path = out / f"{unit_id}.key", out / f"{unit_id}.crt", out / "ca.crt"
    if key_path.exists():
        key_path.unlink()  # write_private_key creates the file 0600 from its first byte
    write_private_key(key_path, key)
    write_public_file(cert_path, cert.public_bytes(serialization.Encoding.PEM) + issuing_pem)
    return UnitFiles(cert_path, key_path, ca_path)


def enroll_fleet(
    url: str,
    root: Path,
    tokens: dict[str, str],
    out: Path,
    workers: int = 16,
    *,
    progress: bool = False,
    console: Console | None = None,
) -> dict[str, UnitFiles]:
    """Enroll every unit in `tokens` (unit id -> one-time token) over EST; returns their files.

    Raises EnrollmentError naming the units that failed, after all others have enrolled.
    """
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = bootstrap(url, ca_file=root)
    write_public_file(out / "ca.crt", server.ca_pem)
    issuers = Issuers(server)
    done: dict[str, UnitFiles] = {}
    failures: dict[str, str] = {}
    bar = _progress(console) if progress else None
    with ThreadPoolExecutor(max_workers=workers) as pool, bar or contextlib.nullcontext():
        task = bar.add_task("enrolling over EST", total=len(tokens)) if bar else None
        futures = {
            pool.submit(enroll_one, server, issuers, unit, token, out): unit for unit, token in tokens.items()
        }
        for future in as_completed(futures):
            unit = futures[future]
            try:
                done[unit] = future.result()
            except (EstClientError, OSError) as exc:
                failures[unit] = str(exc)
            if bar is not None and task is not None:
                bar.advance(task)
    if failures:
        raise EnrollmentError(failures)
    return {unit: done[unit] for unit in tokens}


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("units"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def load_fleet(directory: Path, ids: Iterable[str] | None = None) -> dict[str, UnitFiles]:
    """Units enrolled earlier into `directory` (every <id>.crt with its <id>.key), sorted by id."""
    ca = directory / "ca.crt"
    wanted = set(ids) if ids is not None else None
    found = {}
    for cert in sorted(directory.glob("*.crt")):
        unit = cert.stem
        if cert == ca or not (directory / f"{unit}.key").exists():
            continue
        if wanted is None or unit in wanted:
            found[unit] = UnitFiles(cert, directory / f"{unit}.key", ca)
    return found


def certificate_window(files: UnitFiles) -> tuple[float, float]:
    """(not_before, not_after) of the unit's current certificate, in epoch seconds."""
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    return cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()


def certificate_serial(files: UnitFiles) -> int:
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number
