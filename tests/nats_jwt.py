"""A NATS operator, its accounts and their users, made here for tests of a nats-server in operator
(JWT) mode: the keys are ed25519 nkeys (the `nkeys` package, which nats-py itself uses to sign the
server's nonce), the JWTs are signed the way nats-io/jwt v2 signs them, and `write_creds` writes a
user's `.creds` file (its JWT and its seed) as `nsc` does.

What nats-server checks of a JWT (nats-io/jwt v2 `Decode`, as nats-server 2.9 uses it): the header,
the ed25519 signature over `header.claims` by the key in `iss`, the kind of key that may issue that
kind of claim; and for a user, that its issuer is an account in the server's resolver, whose own
JWT the trusted operator signed. `jti` is not checked; it is made as nats-io/jwt makes it all the
same (SHA-512/256 of the common claims without `jti`, base32 without padding), so these JWTs read
like any other. Account limits are flat in `limits` (JetStream's `mem_storage`, `disk_storage`, …
beside `subs`, `conn`, …): jwt v2's OperatorLimits embeds JetStreamLimits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

NO_LIMIT = -1  # nats-io/jwt's NoLimit: what NewAccountClaims / NewUserClaims start from


@dataclass(frozen=True)
class Key:
    seed: str  # "SO…", "SA…" or "SU…"
    public: str  # "O…", "A…" or "U…"

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(self.seed.encode()).sign(data))


def accounts(count: int) -> list[Key]:
    return [new_key(nkeys.PREFIX_BYTE_ACCOUNT) for _ in range(count)]


def new_key(prefix: int) -> Key:
    """A fresh nkey of a kind (nkeys.PREFIX_BYTE_OPERATOR, _ACCOUNT or _USER)."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    public = nkeys.from_seed(seed).public_key
    return Key(seed.decode(), public.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sign_jwt(issuer: Key, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A v2 NATS JWT of `subject`, issued and signed by `issuer`."""
    # The common claims in nats-io/jwt's ClaimsData field order, empty ones left out (omitempty).
    common: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject}
    jti = base64.b32encode(hashlib.new("sha512_256", _compact(common)).digest()).rstrip(b"=").decode()
    claims = {"jti": jti, **common, "nats": {**nats, "version": 2}}
    signed = f"{_b64(_compact({'typ': 'JWT', 'alg': 'ed25519-nkey'}))}.{_b64(_compact(claims))}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


def operator_jwt(operator: Key, system: Key, name: str = "test-operator") -> str:
    """Self-signed, naming its system account (nats-server's JetStream will not start without one)."""
    return sign_jwt(operator, operator.public, name, {"system_account": system.public, "type": "operator"})


def account_jwt(operator: Key, account: Key, name: str = "fleetgate", *, jetstream: bool = True) -> str:
    """An account without limits; `jetstream`: JetStream enabled for it (memory and disk storage
    unlimited: nats-server enables JetStream for an account whose mem_storage or disk_storage is not 0).
    The JetStream limits sit in `limits` itself, beside the others (jwt v2's OperatorLimits embeds them)."""
    limits: dict[str, Any] = {
        "subs": NO_LIMIT,
        "data": NO_LIMIT,
        "payload": NO_LIMIT,
        "imports": NO_LIMIT,
        "exports": NO_LIMIT,
        "wildcards": True,
        "conn": NO_LIMIT,
        "leaf": NO_LIMIT,
    }
    if jetstream:
        limits |= dict.fromkeys(("mem_storage", "disk_storage", "streams", "consumer"), NO_LIMIT)
    nats = {"limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account"}
    return sign_jwt(operator, account.public, name, nats)


def user_jwt(account: Key, user: Key, name: str = "fleetgate-node") -> str:
    """A user of `account` that may publish and subscribe anywhere in it."""
    nats = {"pub": {}, "sub": {}, "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "type": "user"}
    return sign_jwt(account, user.public, name, nats)


def creds_text(jwt: str, user: Key) -> str:
    """A `.creds` file's text: the user's JWT and its nkey seed, decorated as nsc writes them."""
    return (
        f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass(frozen=True)
class Trust:
    """An operator and one account with JetStream: what a nats-server in operator mode is configured
    with (`server_config`), and `creds` for users of that account."""

    operator: Key
    account: Key
    operator_jwt: str
    accounts: dict[str, str]  # public key -> JWT: the system account's and `account`'s

    @classmethod
    def new(cls) -> Trust:
        operator, system, account = (new_key(nkeys.PREFIX_BYTE_OPERATOR), *accounts(2))
        return cls(
            operator,
            account,
            operator_jwt(operator, system),
            {
                system.public: account_jwt(operator, system, "SYS", jetstream=False),
                account.public: account_jwt(operator, account),
            },
        )

    def server_config(self, path: Path) -> Path:
        """A nats-server configuration file trusting this operator, its account preloaded into a
        memory resolver (nats-server -c PATH; ports and JetStream from the command line)."""
        path.write_text(
            f"operator: {self.operator_jwt}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            + "".join(f"  {key}: {jwt}\n" for key, jwt in self.accounts.items())
            + "}\n"
        )
        return path

    def creds(self, path: Path, name: str = "fleetgate-node") -> Path:
        """A new user of this account, its `.creds` file written at `path`."""
        return write_creds(path, self.account, name)


def write_creds(path: Path, account: Key, name: str = "fleetgate-node") -> Path:
    """A new user of `account`, its `.creds` file written at `path` (mode 0600, as it holds a seed)."""
    user = new_key(nkeys.PREFIX_BYTE_USER)
    path.write_text(creds_text(user_jwt(account, user, name), user))
    path.chmod(0o600)
    return path
