"""`fleetgate serve`: run the gateway until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from gateway.app import compiled
from gateway.app.log_format import FORMATS, configure_logging
from gateway.app.preflight import run_preflight
from gateway.app.worker_role import WorkerRole
from gateway.cli.common import CliError, data_option, friendly_errors, passphrase_source
from gateway.config import ConfigError, load_config, parse_endpoint
from gateway.stores.datadir import DataDir


def install_event_loop() -> str:
    """uvloop where available: it holds a TLS connection in a fraction of asyncio's memory.

    FLEETGATE_EVENT_LOOP=asyncio selects the standard loop (for comparisons and debugging).
    """
    if os.environ.get("FLEETGATE_EVENT_LOOP", "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


@click.command()
@data_option
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="FLEETGATE_CONFIG",
    show_envvar=True,
    help="gateway.yaml overriding the embedded defaults (FLEETGATE_<SECTION>_<KEY> variables override it).",
)
@click.option("--listen-mqtt", default=None, help="HOST:PORT for MQTT over mTLS (default 0.0.0.0:8883).")
@click.option(
    "--listen-https", default=None, help="HOST:PORT for EST, CRL and the admin API (default 0.0.0.0:8443)."
)
@click.option(
    "--insecure-plaintext-listen",
    default=None,
    help="LOOPBACK:PORT for an anonymous plaintext lab listener (protocol test suites only).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log records written (audit records are logged at info).",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    envvar="FLEETGATE_LOG_FORMAT",
    show_envvar=True,
    help="text lines, or one JSON object per line (security events carry the audit record).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes sharing the listening ports (SO_REUSEPORT), each a node of one cluster, messages "
    "crossing on NATS (cluster.nats, else a local nats-server); restarted if they die. docs/cluster.md.",
)
@click.option("--as-worker", "as_worker", type=int, default=None, hidden=True)  # set by the parent only
@friendly_errors
def serve(
    data_dir: Path | None,
    config_file: Path | None,
    listen_mqtt: str | None,
    listen_https: str | None,
    insecure_plaintext_listen: str | None,
    log_level: str,
    log_format: str,
    workers: int,
    as_worker: int | None,
) -> int:
    """Run the gateway: mTLS MQTT broker, EST enrollment and CRL over HTTPS."""
    config = load_config(config_file)
    listen = config.listen
    if listen_mqtt:
        listen = replace(listen, mqtt=parse_endpoint(listen_mqtt, "--listen-mqtt"))
    if listen_https:
        listen = replace(listen, https=parse_endpoint(listen_https, "--listen-https"))
    if insecure_plaintext_listen:
        plain = parse_endpoint(insecure_plaintext_listen, "--insecure-plaintext-listen")
        if not plain.is_loopback:
            raise ConfigError(
                f"--insecure-plaintext-listen must be a loopback address (127.0.0.1 or ::1), not {plain.host}"
            )
        listen = replace(listen, insecure_plaintext=plain)
    config = replace(config, listen=listen)
    configure_logging(log_level, log_format)
    from gateway.app.runtime import Gateway  # imported late: the CLI's other commands stay light

    data = DataDir.resolve(data_dir)
    if workers > 1 and as_worker is None:
        from gateway.cli.serve_workers import serve_with_workers

        options = ["--log-level", log_level, "--log-format", log_format]
        if config_file is not None:
            options += ["--config", str(config_file.absolute())]
        return serve_with_workers(data, config, workers, options, passphrase_source())
    skew = timedelta(seconds=config.tls.clock_skew_tolerance)
    for warning in run_preflight(data, datetime.now(UTC), skew).warnings:
        logging.getLogger("fleetgate").warning(warning)
    loop_kind = install_event_loop()
    logging.getLogger("fleetgate").info("event loop: %s", loop_kind)
    logging.getLogger("fleetgate").info("per-message path: %s", compiled.described())
    role = None if as_worker is None else WorkerRole.of(data.root, as_worker)
    gateway = Gateway(data, config, passphrase=passphrase_source(), worker=role)  # asked at a terminal, once
    try:
        asyncio.run(gateway.run_until_signalled())
    except OSError as exc:
        raise CliError(
            f"cannot listen: {exc.strerror or exc}; is another gateway running on that port?"
        ) from None
    return 0
