"""The CLI's side of the admin API: where to connect, with which operator certificate, and HTTP.

Where: `--server URL --cert FILE --key FILE [--ca FILE]`, or a profile (`--profile FILE` or
$FLEETGATE_PROFILE), a JSON file `{"server": ..., "cert": ..., "key": ..., "ca": ...}` whose relative
paths are relative to the profile itself; options given on the command line win over the profile.
No server at all means "act on the local data dir" (the caller decides what that means).

Plain urllib + ssl: the CLI stays synchronous and needs no extra dependency.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cli.common import CliError, error_for

PROFILE_ENV = "FLEETGATE_PROFILE"


@dataclass(frozen=True)
class Remote:
    server: str
    cert: Path
    key: Path
    ca: Path | None
    totp: str | None = None  # a TOTP code for sensitive actions (sent as X-Fleetgate-TOTP)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise CliError(
                f"cannot load the operator certificate {self.cert} and key {self.key}: {exc}"
            ) from None
        return context

    def _open(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.server.rstrip("/") + path,
            data=data,
            method=method,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                **({"X-Fleetgate-TOTP": self.totp} if self.totp else {}),
            },
        )
        try:
            return urllib.request.urlopen(request, context=self._context(), timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise CliError(
                    f"cannot verify the gateway at {self.server} ({reason.verify_message}); "
                    "pass the fleet root with --ca or in the profile",
                    "gateway_unverified",
                ) from None
            raise CliError(
                f"cannot reach the gateway at {self.server} ({reason}); is it running?", "gateway_unreachable"
            ) from None
        except (TimeoutError, ConnectionError) as exc:
            raise CliError(
                f"the gateway at {self.server} did not answer ({exc}); try again", "gateway_unreachable"
            ) from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        with self._open(method, path, body, timeout) as response:
            return json.loads(response.read().decode())

    def call_with_report(self, method: str, path: str, body: dict[str, Any], timeout: float = 120) -> Any:
        """Like `call`, but a 422 that carries a per-row report (`results`) is returned, not raised:
        the report says which rows to fix."""
        try:
            return self.call(method, path, body, timeout)
        except _Unprocessable as exc:
            return exc.payload

    def events(self, path: str, timeout: float = 120) -> Iterator[tuple[str, str]]:
        """(event, data) pairs of a Server-Sent Events stream, until the server ends it."""
        with self._open("GET", path, None, timeout) as response:
            event, data = "message", list[str]()
            for raw in response:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        yield event, "\n".join(data)
                    event, data = "message", list[str]()
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())


class _Unprocessable(CliError):
    """A 422 answer with a per-row report (see `Remote.call_with_report`)."""

    def __init__(self, message: str, code: str, payload: dict[str, Any]) -> None:
        super().__init__(message, code)
        self.payload = payload


def _api_error(exc: urllib.error.HTTPError) -> CliError:
    try:
        payload = json.loads(exc.read().decode())
        message, code = str(payload.get("error", "")), str(payload.get("code", ""))
    except (ValueError, AttributeError, OSError):
        payload, message, code = None, "", ""
    if exc.code == 422 and isinstance(payload, dict) and "results" in payload:
        return _Unprocessable(message, code, payload)
    return error_for(exc.code, message or f"the gateway answered HTTP {exc.code}", code or f"http_{exc.code}")


def _from_profile(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CliError(f"cannot read profile {path} ({exc.strerror or exc}); check the path") from None
    except ValueError:
        raise CliError(
            f'profile {path} is not JSON; write {{"server": ..., "cert": ..., "key": ..., "ca": ...}}'
        ) from None
    if not isinstance(data, dict):
        raise CliError(f"profile {path} must be a JSON object with server, cert, key and ca")
    base = path.parent
    out = {k: str(v) for k, v in data.items() if k in ("server", "cert", "key", "ca") and v}
    for name in ("cert", "key", "ca"):
        if name in out:
            out[name] = str((base / out[name]).expanduser())
    return out


def resolve_remote(
    server: str | None, cert: Path | None, key: Path | None, ca: Path | None, profile: Path | None
) -> Remote | None:
    """The admin API to talk to, or None for "act on the local data dir"."""
    chosen = profile or (Path(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else None)
    values = _from_profile(chosen) if chosen is not None else {}
    url = server or values.get("server")
    if not url:
        return None
    cert_path = cert or (Path(values["cert"]) if "cert" in values else None)
    key_path = key or (Path(values["key"]) if "key" in values else None)
    if cert_path is None or key_path is None:
        raise CliError(
            "talking to the admin API needs an operator certificate; pass --cert and --key or --profile"
        )
    ca_path = ca or (Path(values["ca"]) if "ca" in values else None)
    return Remote(url, cert_path, key_path, ca_path)
