"""amqtt's broker as a benchmark child process: `python -m benchmarks.amqtt_runner --config FILE`.

FILE is what `write_config` writes (benchmarks.brokers.AmqttBroker calls it): amqtt's own broker
configuration plus the CRL. The broker is set up like Mosquitto in mosquitto.py, as far as amqtt goes:

- TLS: one listener, the gateway's server certificate and key, the fleet CA bundle (root + issuing) to
  verify clients, the CRL, and a client certificate required. amqtt 0.12.1 has settings for the first
  three only: its `Broker._create_ssl_context` asks for a client certificate with CERT_OPTIONAL (none
  is accepted too) and loads no CRL, so `MutualTlsBroker` overrides that one method to require the
  certificate (a handshake without one fails, as with Mosquitto's `require_certificate true`) and to
  check it against the CRL (read at start, as Mosquitto's `crlfile`).
- Identity: `CertIdentityAuth` takes the certificate's CN as user name and refuses a client id other than
  that CN (Mosquitto's `use_identity_as_username` + `use_username_as_clientid` replace the client id
  instead; the bench's clients send their CN, so both end the same).
- Grants: amqtt's `TopicAccessControlListPlugin` with the policy's publish and subscribe grants spelled
  out per identity (`topic_acls`; it has no %u-style pattern). Read grants are checked when subscribing,
  not again for each delivery as Mosquitto does (the plugin's per-delivery list cannot be set through
  its 0.12.1 configuration); with the bench's topics that changes nothing that is delivered.
- No persistence, no $SYS, no packet or event logging; log level WARNING (Mosquitto: error + warning).
- What amqtt lacks: MQTT 5.0 (3.1.1 only), in-flight window, queue cap, keep-alive cap and packet size
  limit (Mosquitto has all four), and rate limits, quarantine, live revocation (neither has those).
- Event loop: uvloop, as fleetgate's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

AUTH_PLUGIN = "benchmarks.amqtt_runner.CertIdentityAuth"
ACL_PLUGIN = "amqtt.plugins.topic_checking.TopicAccessControlListPlugin"
Acl = dict[str, dict[str, list[str]]]  # "publish" / "subscribe" → identity → topic filters


def topic_acls(
    policy: Mapping[str, Any], *, units: Iterable[str], operators: Iterable[str], services: Iterable[str]
) -> Acl:
    """The policy's grants for each identity, `{id}` filled in (amqtt's ACL plugin lists users one by one)."""
    roles = policy.get("roles", {})
    granted = [(u, roles.get("unit") or {}) for u in units]
    granted += [(o, (roles.get("operator") or {}).get("ops") or {}) for o in operators]  # role ops
    granted += [(s, (roles.get("service") or {}).get(s) or {}) for s in services]
    acl: Acl = {"publish": {}, "subscribe": {}}
    for ident, grants in granted:
        for action, by_ident in acl.items():
            filters = [f.replace("{id}", ident) for f in grants.get(action) or ()]
            if any("{" in f for f in filters):
                raise ValueError(f"{ident}: a {action} grant has a placeholder left: {filters}")
            by_ident[ident] = filters
    return acl


def write_config(workdir: Path, *, port: int, data_dir: Path, acl: Acl, host: str = "127.0.0.1") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    listener = {
        "type": "tcp",
        "bind": f"{host}:{port}",
        "ssl": True,
        "cafile": str(data_dir / "ca" / "client-ca.pem"),
        "certfile": str(data_dir / "server" / "server.crt"),
        "keyfile": str(data_dir / "server" / "server.key"),
    }
    broker = {
        "listeners": {"default": listener},
        # Exactly these plugins: amqtt's defaults would add packet/event logging and $SYS topics.
        "plugins": {
            AUTH_PLUGIN: {},
            ACL_PLUGIN: {"acl": acl["subscribe"], "publish_acl": acl["publish"]},  # "acl": subscribe
        },
    }
    conf = workdir / "amqtt.json"
    conf.write_text(json.dumps({"crlfile": str(data_dir / "crl" / "crl.pem"), "broker": broker}))
    return conf


class MutualTlsBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker with the listener's client certificate required and checked against a CRL."""

    def __init__(self, config: dict[str, Any], crlfile: Path) -> None:
        super().__init__(config)
        self._crlfile = crlfile  # used by start(), which builds the listener's context

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        context: ssl.SSLContext = Broker._create_ssl_context(listener)  # certificate, key, CA bundle
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self._crlfile))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context


class CertIdentityAuth(BaseAuthPlugin):  # type: ignore[misc]
    """User name = the client certificate's CN, which must also be the client id."""

    async def authenticate(self, *, session: Session) -> bool:
        common_name = _common_name(session.ssl_object)
        if common_name is None or common_name != session.client_id:
            return False
        session.username = common_name
        return True


def _common_name(ssl_object: ssl.SSLObject | None) -> str | None:
    peer = ssl_object.getpeercert() if ssl_object is not None else None
    subject: Any = (peer or {}).get("subject", ())  # ((("commonName", "TRK-00001"),), ...)
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    return str(names[0]) if names else None


async def serve(config: Path) -> None:
    """Run the broker until SIGTERM or SIGINT."""
    settings = json.loads(config.read_text())
    broker = MutualTlsBroker(settings["broker"], Path(settings["crlfile"]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    await stop.wait()
    with contextlib.suppress(TimeoutError):  # the parent kills us if this is not quick enough either
        await asyncio.wait_for(broker.shutdown(), 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.amqtt_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="written by write_config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvloop

    uvloop.run(serve(args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
