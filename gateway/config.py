"""Gateway configuration: frozen values loaded from YAML with precise errors.

The embedded defaults (gateway/defaults/gateway.yaml, shipped with the package and mirrored in
configs/gateway.yaml) are complete; a user's file overrides any subset. Every problem names the
file, the key path and what is wrong, in one sentence. Security floors (mTLS, client-id binding,
deny by default) are not settings and cannot appear here.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pki.service import SELF_RENEWAL_MODES


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_endpoint(text: str, where: str = "endpoint") -> Endpoint:
    """Parse HOST:PORT or [V6]:PORT."""
    text = str(text).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT (e.g. 0.0.0.0:8883)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: port {port_text!r} is not a number from 0 to 65535")
    return Endpoint(host, int(port_text))


@dataclass(frozen=True)
class ListenConfig:
    mqtt: Endpoint = field(default_factory=lambda: Endpoint("0.0.0.0", 8883))
    https: Endpoint = field(default_factory=lambda: Endpoint("0.0.0.0", 8443))
    # Plaintext, anonymous, loopback only: for running protocol conformance suites. Never in production.
    insecure_plaintext: Endpoint | None = None
    # `serve --workers N` only: worker i also serves HTTPS (admin API, /metrics) alone on PORT+i (port
    # 0: one free port each, logged), so Prometheus can scrape each worker (docs/cluster.md).
    worker_https: Endpoint | None = None
    # Load balancers (addresses or networks, space-separated) whose connections to the MQTT listener
    # open with a PROXY protocol v2 header naming the client; "" = none (docs/cluster.md).
    proxy_protocol_from: str = ""


@dataclass(frozen=True)
class TlsConfig:
    handshake_timeout: float = 10.0
    min_version: str = "1.2"  # "1.2" or "1.3"
    clock_skew_tolerance: float = 300.0  # seconds a certificate may be early/late for our own checks


@dataclass(frozen=True)
class SelfRenewalConfig:
    """Whether operators, services and partners may renew their own certificates over EST
    (pki.service.SELF_RENEWAL_MODES: refuse | bounded). Units always renew, at 2/3 of their life."""

    operator: str = "refuse"
    service: str = "refuse"
    partner: str = "refuse"

    def as_mapping(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CertificateConfig:
    unit_lifetime_days: float = 30.0
    role_lifetime_days: float = 365.0  # operators, services, partners
    server_lifetime_days: float = 365.0
    token_ttl_hours: float = 24.0
    self_renewal: SelfRenewalConfig = field(default_factory=SelfRenewalConfig)


@dataclass(frozen=True)
class LimitsConfig:
    max_packet_size: int = 256 * 1024
    receive_maximum: int = 100
    max_inflight: int = 100
    # Per-session queue bounds (memory; the store for persistent sessions), and the high-water mark at
    # which a connected subscriber holds back its QoS 1/2 publishers (broker/queues.py, broker/flow.py).
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 64 * 1024 * 1024
    queue_high_water: int = 1000
    queue_high_water_bytes: int = 4 * 1024 * 1024
    subscriber_stall_timeout: float = 60.0
    max_subscriptions: int = 100
    max_topic_alias: int = 32
    max_keep_alive: int = 600
    max_session_expiry: int = 7 * 24 * 3600
    max_retained_messages: int = 100_000
    max_retained_per_client: int = 1000
    connect_timeout: float = 10.0
    max_violations: int = 20
    max_est_body: int = 64 * 1024
    max_write_buffer: int = 4 * 1024 * 1024  # a client that stops reading is cut off past this
    # New TCP connections per source address, checked before TLS (0 = off); loopback is exempt by default
    connections_per_source_per_second: float = 20.0
    connection_burst_per_source: int = 100
    # Sources (addresses or networks, space-separated) exempt from every per-source limit (rate and
    # connections held); never from a listener's cap. A source is an IPv4 address or an IPv6 /64.
    connection_rate_exempt: str = "127.0.0.1 ::1"
    # Connections held at once. MQTT: 0 = what the open-file budget leaves after HTTPS and the lab.
    max_connections: int = 0
    max_connections_per_source: int = 256  # MQTT, before and after TLS
    https_max_connections: int = 256  # and never more than a quarter of the open-file budget
    https_max_connections_per_source: int = 16
    # Seconds an HTTPS client has to send a request's head (from connecting, or from the previous
    # answer on a kept-alive connection), and again to send its body.
    https_request_timeout: float = 10.0
    lab_max_connections: int = 64  # the plaintext lab listener; never more than 1/16 of the budget


@dataclass(frozen=True)
class StorageConfig:
    synchronous: str = "NORMAL"  # NORMAL survives a process kill; FULL also survives power loss
    # Seconds between exports of the audit head to DATA/audit-anchors.log and the log (when it moved);
    # also exported at every start and stop.
    audit_anchor_interval: float = 60.0
    # Where the shared state lives: "" is the SQLite file in the data directory (one node); a
    # `postgresql://` URL is a cluster's (docs/cluster.md). $FLEETGATE_DATABASE_URL sets it too.
    url: str = ""


@dataclass(frozen=True)
class ClusterConfig:
    # This node's name in logs, metrics, audit records and `fleetgate status`; "" is the host name.
    node_name: str = ""
    # While PostgreSQL is unreachable, certificates and identities this node already knows are admitted
    # from its cache for at most this many seconds after its last good read; unknown ones are refused.
    cache_max_age: float = 300.0
    # The NATS server(s) carrying accepted messages between the nodes (docs/cluster.md, part 2):
    # "" keeps every message on the node it arrived at; "nats://host:4222" (several: comma-separated).
    nats: str = ""
    # TLS to NATS (tls:// URLs): the CA bundle the NATS servers' certificates chain to ("" = the
    # system's), and this node's client certificate and key for servers that require one (nats-server
    # `verify: true`); absolute paths, PEM.
    nats_tls_ca: str = ""
    nats_tls_cert: str = ""
    nats_tls_key: str = ""
    # A NATS server in operator (JWT) mode: this node's user credentials, the `.creds` file the
    # operator issued (the user's JWT and its nkey seed); absolute path, "" = none.
    nats_credentials: str = ""
    # QoS 1/2 between the nodes through a JetStream stream with this many replicas (3: survives one
    # nats-server lost; 1: a one-server dev cluster); 0: core NATS only, at most once between nodes.
    jetstream_replicas: int = 3
    jetstream_max_age: float = 86_400.0  # seconds a stored QoS 1/2 message is kept at most
    jetstream_max_bytes: int = 1 << 30  # the stream's bound in bytes (the oldest go first)
    # How long a client's PUBACK/PUBREC may wait for JetStream's store before its client is disconnected
    # unacknowledged (and resends).
    jetstream_store_timeout: float = 10.0
    # A node's (or a persistent session's) consumer nobody has bound for this long is deleted.
    jetstream_consumer_idle: float = 3600.0


@dataclass(frozen=True)
class GatewayConfig:
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    certificates: CertificateConfig = field(default_factory=CertificateConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    policy_file: Path | None = None  # None: the embedded default policy
    source: str = "<embedded defaults>"


_SECTIONS: dict[str, type] = {
    "listen": ListenConfig,
    "tls": TlsConfig,
    "certificates": CertificateConfig,
    "limits": LimitsConfig,
    "storage": StorageConfig,
    "cluster": ClusterConfig,
}


ENV_PREFIX = "FLEETGATE_"
DATABASE_URL_ENV = "FLEETGATE_DATABASE_URL"  # the usual name for storage.url (FLEETGATE_STORAGE_URL wins)


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The embedded defaults, overridden by the YAML file at `path` when given, overridden in turn by
    environment variables `FLEETGATE_<SECTION>_<KEY>` (e.g. FLEETGATE_LIMITS_MAX_PACKET_SIZE=65536;
    `env` defaults to the process environment)."""
    data = _read_yaml(path) if path is not None else {}
    env = os.environ if env is None else env
    overrides = environment_overrides(env)
    if env.get(DATABASE_URL_ENV) and ("storage", "url") not in overrides:
        overrides[("storage", "url")] = env[DATABASE_URL_ENV].strip()
    if not overrides and path is None:
        return GatewayConfig()
    for (section, key), value in overrides.items():
        target = data.setdefault(section, {}) if section else data
        if not isinstance(target, dict):
            raise ConfigError(f"{path}: {section} must be a mapping")
        if section == "certificates" and key.startswith("self_renewal."):
            target = target.setdefault("self_renewal", {})
            key = key.split(".", 1)[1]
        target[key] = value
    source = str(path) if path is not None else "<embedded defaults>"
    if overrides:
        source += " + environment"
    return config_from_mapping(data, source=source, base_dir=path.parent if path is not None else None)


def environment_names() -> dict[str, tuple[str, str, str]]:
    """Every setting's environment variable -> (section, key, type); '' section for top-level keys."""
    names = {f"{ENV_PREFIX}POLICY_FILE": ("", "policy_file", "str")}
    for section, cls in _SECTIONS.items():
        for item in fields(cls):
            if item.type == "SelfRenewalConfig":
                for kind in fields(SelfRenewalConfig):
                    env = f"{ENV_PREFIX}{section}_{item.name}_{kind.name}".upper()
                    names[env] = (section, f"{item.name}.{kind.name}", "str")
                continue
            names[f"{ENV_PREFIX}{section}_{item.name}".upper()] = (section, item.name, str(item.type))
    return names


def environment_overrides(env: Mapping[str, str]) -> dict[tuple[str, str], Any]:
    """The settings the environment names, each read as its setting's type. A variable that starts
    like a setting's but names none is an error, so a typo is not silently ignored."""
    known = environment_names()
    sections = tuple(f"{ENV_PREFIX}{section}_".upper() for section in _SECTIONS)
    found: dict[tuple[str, str], Any] = {}
    for name, text in env.items():
        if name in known:
            section, key, type_name = known[name]
            found[(section, key)] = _from_text(name, type_name, text.strip())
        elif name.startswith(sections):
            raise ConfigError(
                f"environment {name} names no setting; see the table of settings in docs/operations.md"
            )
    return found


def _from_text(name: str, type_name: str, text: str) -> Any:
    if "None" in type_name and text == "":
        return None
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
    except ValueError:
        kind = "a whole number" if type_name == "int" else "a number"
        raise ConfigError(f"environment {name} must be {kind}, not {text!r}") from None
    return text


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass an existing --config or leave it out") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not {type(data).__name__}")
    return data


def config_from_mapping(data: dict[str, Any], source: str, base_dir: Path | None = None) -> GatewayConfig:
    unknown = set(data) - set(_SECTIONS) - {"policy_file"}
    if unknown:
        known = ", ".join([*_SECTIONS, "policy_file"])
        raise ConfigError(f"{source}: unknown key {sorted(unknown)[0]!r}; known keys are {known}")
    sections = {name: _section(source, name, cls, data.get(name)) for name, cls in _SECTIONS.items()}
    policy_file = data.get("policy_file")
    policy_path: Path | None = None
    if policy_file is not None:
        if not isinstance(policy_file, str):
            raise ConfigError(f"{source}: policy_file must be a path string")
        policy_path = Path(policy_file)
        if not policy_path.is_absolute() and base_dir is not None:
            policy_path = base_dir / policy_path
    config = GatewayConfig(**sections, policy_file=policy_path, source=source)
    _check(config)
    return config


def _section(source: str, name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {name} must be a mapping")
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key {name}.{key}; known keys are {', '.join(known)}")
        values[key] = _coerce(source, f"{name}.{key}", known[key].type, value)
    return cls(**values)


def _coerce(source: str, where: str, type_name: Any, value: Any) -> Any:
    type_text = str(type_name)
    if type_text == "SelfRenewalConfig":
        if isinstance(value, dict) and "unit" in value:
            raise ConfigError(
                f"{source}: {where}.unit: units always renew their certificates (at 2/3 of their life); "
                "this setting takes operator, service and partner"
            )
        return _section(source, where, SelfRenewalConfig, value)
    if "Endpoint" in type_text:
        if value is None and "None" in type_text:
            return None
        try:
            return parse_endpoint(value, f"{source}: {where}")
        except ConfigError:
            raise
    if type_text == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{source}: {where} must be a whole number ≥ 0, not {value!r}")
        return value
    if type_text == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{source}: {where} must be a number ≥ 0, not {value!r}")
        return float(value)
    if type_text == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {where} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{source}: {where} has an unsupported type")  # pragma: no cover - programming error


def _check_nats_tls(src: str, c: ClusterConfig) -> None:
    if bool(c.nats_tls_cert) != bool(c.nats_tls_key):
        raise ConfigError(
            f"{src}: cluster.nats_tls_cert and cluster.nats_tls_key go together: set both or neither"
        )
    for key in ("nats_tls_ca", "nats_tls_cert", "nats_tls_key"):
        path = getattr(c, key)
        if not path:
            continue
        if not Path(path).is_absolute():
            raise ConfigError(f"{src}: cluster.{key} must be an absolute path, not {path!r}")
        if not Path(path).is_file():
            raise ConfigError(f"{src}: cluster.{key}: {path} is not a readable file")
    if (c.nats_tls_ca or c.nats_tls_cert) and not c.nats.strip():
        raise ConfigError(f"{src}: cluster.nats_tls_* are for cluster.nats, which is not set")


# The two blocks of a `.creds` file (nsc writes them; nats-py reads the line after each header).
CREDENTIALS_BLOCKS = ("-----BEGIN NATS USER JWT-----", "-----BEGIN USER NKEY SEED-----")


def _check_nats_credentials(src: str, c: ClusterConfig) -> None:
    """cluster.nats_credentials names a readable `.creds` file with a user JWT and a user's nkey
    seed. Checked here because nats-py finds out only while it connects: it would loop forever on a
    file without the JWT block and fail each retry on a bad seed, in the background, while the node
    serves on as if nothing were wrong."""
    path = c.nats_credentials
    if not path:
        return
    where = f"{src}: cluster.nats_credentials"
    if not c.nats.strip():
        raise ConfigError(f"{where} is for cluster.nats, which is not set")
    if not Path(path).is_absolute():
        raise ConfigError(f"{where} must be an absolute path, not {path!r}")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(
            f"{where}: {path} is not a readable file; name this node's NATS user .creds file"
        ) from None
    problem = credentials_problem(lines)
    if problem:
        raise ConfigError(
            f"{where}: {path} is not a NATS .creds file ({problem}); use the file the NATS operator "
            "(nsc) issued for this node's user"
        )


def credentials_problem(lines: list[str]) -> str | None:
    """What a `.creds` file's lines lack, or None: each block's header with its value on the next
    line, the first a JWT (header.claims.signature) and the second a user's nkey seed (SU…)."""
    values = []
    for header in CREDENTIALS_BLOCKS:
        at = next((i for i, line in enumerate(lines) if line.strip() == header), None)
        value = lines[at + 1].strip() if at is not None and at + 1 < len(lines) else ""
        if not value:
            return f"no {header} block with a value on the line after it"
        values.append(value)
    jwt, seed = values
    if jwt.count(".") != 2:
        return "its JWT block holds no JWT: three parts separated by dots"
    if not seed.startswith("SU"):
        return "its seed block holds no user's nkey seed (SU…)"
    return None


def _check_queues(src: str, limits: LimitsConfig) -> None:
    for name in ("max_queued_messages", "max_queued_bytes", "queue_high_water", "queue_high_water_bytes"):
        if getattr(limits, name) < 1:
            raise ConfigError(f"{src}: limits.{name} must be at least 1")
    for mark, bound in (
        ("queue_high_water", "max_queued_messages"),
        ("queue_high_water_bytes", "max_queued_bytes"),
    ):
        if getattr(limits, mark) > getattr(limits, bound):
            raise ConfigError(
                f"{src}: limits.{mark} ({getattr(limits, mark)}) is above limits.{bound} "
                f"({getattr(limits, bound)}): subscribers would reach their bound, and drop acknowledged "
                f"messages, before they hold any publisher back; lower {mark} or raise {bound}"
            )
    if limits.subscriber_stall_timeout <= 0:
        raise ConfigError(f"{src}: limits.subscriber_stall_timeout must be above 0 seconds")


def _check(config: GatewayConfig) -> None:
    src = config.source
    plain = config.listen.insecure_plaintext
    if plain is not None and not plain.is_loopback:
        raise ConfigError(
            f"{src}: listen.insecure_plaintext must be a loopback address (127.0.0.1 or ::1), "
            f"not {plain.host}; plaintext is only for local protocol testing"
        )
    if config.tls.min_version not in ("1.2", "1.3"):
        raise ConfigError(f'{src}: tls.min_version must be "1.2" or "1.3", not {config.tls.min_version!r}')
    if config.storage.synchronous.upper() not in ("NORMAL", "FULL"):
        raise ConfigError(f"{src}: storage.synchronous must be NORMAL or FULL")
    if config.limits.max_packet_size < 1024:
        raise ConfigError(f"{src}: limits.max_packet_size must be at least 1024 bytes")
    if not 1 <= config.limits.receive_maximum <= 65535:
        raise ConfigError(f"{src}: limits.receive_maximum must be from 1 to 65535")
    _check_queues(src, config.limits)
    for kind, mode in config.certificates.self_renewal.as_mapping().items():
        if mode not in SELF_RENEWAL_MODES:
            raise ConfigError(
                f"{src}: certificates.self_renewal.{kind} must be {' or '.join(SELF_RENEWAL_MODES)}, "
                f"not {mode!r}"
            )
    for item in config.limits.connection_rate_exempt.split():
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{src}: limits.connection_rate_exempt: {item!r} is not an IP address or network "
                "(e.g. 127.0.0.1 or 10.8.0.0/16)"
            ) from None
    _check_balancers(src, config.listen.proxy_protocol_from)
    for key in ("https_max_connections", "lab_max_connections", "https_request_timeout"):
        if not getattr(config.limits, key) > 0:
            raise ConfigError(f"{src}: limits.{key} must be greater than 0")
    if not config.storage.audit_anchor_interval >= 1:
        raise ConfigError(f"{src}: storage.audit_anchor_interval must be at least 1 second")
    url = config.storage.url
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{src}: storage.url must be empty (SQLite in the data directory) or a postgresql:// URL"
        )
    if not config.cluster.cache_max_age >= 0:
        raise ConfigError(f"{src}: cluster.cache_max_age must be 0 or more seconds")
    servers = [s.strip() for s in config.cluster.nats.split(",") if s.strip()]
    if config.cluster.nats.strip() and (
        not servers or not all(s.startswith(("nats://", "tls://")) for s in servers)
    ):
        raise ConfigError(f"{src}: cluster.nats must be empty or nats:// (or tls://) URLs, comma-separated")
    c = config.cluster
    _check_nats_tls(src, c)
    _check_nats_credentials(src, c)
    if not 0 <= c.jetstream_replicas <= 5:
        raise ConfigError(f"{src}: cluster.jetstream_replicas must be 0 (core NATS only) to 5")
    if not 1 <= c.jetstream_store_timeout <= 25:
        raise ConfigError(f"{src}: cluster.jetstream_store_timeout must be 1 to 25 seconds")
    if not (
        c.jetstream_max_age >= 180 and c.jetstream_max_bytes >= 1 << 20 and c.jetstream_consumer_idle >= 60
    ):
        raise ConfigError(
            f"{src}: cluster.jetstream_max_age must be at least 180 s, jetstream_max_bytes at least 1 MiB "
            "and jetstream_consumer_idle at least 60 s"
        )


def _check_balancers(src: str, text: str) -> None:
    for item in text.split():
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{src}: listen.proxy_protocol_from: {item!r} is not an IP address or network "
                "(e.g. 10.0.0.5 or 10.0.0.0/29)"
            ) from None
        if network.prefixlen == 0:
            raise ConfigError(
                f"{src}: listen.proxy_protocol_from: {item!r} would let every client name any source "
                "address; list the load balancers' own addresses"
            )


def embedded_defaults_text() -> str:
    """The documented default gateway.yaml, as shipped inside the package."""
    return resources.files("gateway").joinpath("defaults/gateway.yaml").read_text(encoding="utf-8")
