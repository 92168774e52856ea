"""`fleet-sim`: the simulated fleet's command line.

    fleet-sim enroll --data DIR --units 100             register + enroll over EST (progress bar)
    fleet-sim run --data DIR --units 100 --seconds 60   drive them: GPS, engine, fuel, diagnostics
    fleet-sim attack flood --data DIR                   one drill (or `all`), table or --json
    fleet-sim load --certs DIR --units 5000 --rate 1    load run (device_sim.load.run)
    fleet-sim demo                                      the scripts/demo story

Every network address is the gateway's: --server HOST:PORT for MQTT (default localhost:8883) and
--est URL for enrollment (default https://localhost:8443). --data is the gateway's data directory
(the simulator plays fleet ops on the same machine: it registers units and reads the CA's root).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from device_sim.fleet.enroll import (
    EnrollmentError,
    enroll_fleet,
    fleetgate,
    load_fleet,
    register_units,
    unit_ids,
)
from device_sim.settings import SettingsError, SimSettings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)


def _server(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT (e.g. localhost:8883)")
    return host, int(port)


def _data_option(required: bool = True) -> Callable[[F], F]:
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        required=required,
        help="The gateway's data directory (its CA and registry).",
    )


server_option = click.option("--server", default="localhost:8883", show_default=True, help="MQTT HOST:PORT.")
est_option = click.option(
    "--est", "est_url", default="https://localhost:8443", show_default=True, help="EST URL."
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="sim.yaml (default: ./configs/sim.yaml if present, else built-in defaults).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def _settings(config_file: Path | None) -> SimSettings:
    try:
        return load_settings(config_file)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fleetgate", prog_name="fleet-sim")
def cli() -> None:
    """Simulated telematics units: enrollment, a driving fleet, attack drills, load runs and the demo."""


# --- enroll ---------------------------------------------------------------------------------


@cli.command()
@_data_option()
@est_option
@click.option("--units", "count", type=click.IntRange(1, 100_000), default=10, show_default=True)
@click.option("--prefix", default="TRK", show_default=True, help="Unit ids are PREFIX-00001, ...")
@click.option("--start", type=click.IntRange(0), default=1, show_default=True, help="First unit number.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the units keep their keys (default: DATA/sim/units).",
)
@click.option("--workers", type=click.IntRange(1, 256), default=16, show_default=True)
@json_option
def enroll(
    data: Path,
    est_url: str,
    count: int,
    prefix: str,
    start: int,
    out: Path | None,
    workers: int,
    as_json: bool,
) -> None:
    """Register units (fleet ops) and enroll each over EST with a key it makes itself."""
    ids = unit_ids(count, prefix, start)
    target = out or data / "sim" / "units"
    started = time.monotonic()
    try:
        tokens = register_units(data, ids)
        files = enroll_fleet(est_url, data / "ca" / "root.crt", tokens, target, workers, progress=not as_json)
    except (RuntimeError, OSError) as exc:
        failures = exc.failures if isinstance(exc, EnrollmentError) else {}
        raise click.ClickException(f"{exc}" + (f" ({len(failures)} failed)" if failures else "")) from None
    seconds = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"enrolled": len(files), "seconds": round(seconds, 2), "dir": str(target)}))
    else:
        console.print(
            f"{len(files)} units enrolled in {seconds:.1f} s ({len(files) / seconds:.0f}/s) into {target}"
        )


# --- run ------------------------------------------------------------------------------------


@cli.command()
@_data_option(required=False)
@click.option(
    "--certs",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Enrolled units (default: DATA/sim/units).",
)
@server_option
@est_option
@click.option("--units", "count", type=click.IntRange(1), default=None, help="Only the first N units.")
@click.option("--seconds", type=click.FloatRange(0.5), default=30.0, show_default=True)
@click.option("--protocol", type=click.Choice(["3.1.1", "5.0", "mixed"]), default=None)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--no-renew", is_flag=True, help="Do not renew certificates at 2/3 of their lifetime.")
@config_option
@json_option
def run(
    data: Path | None,
    certs: Path | None,
    server: str,
    est_url: str,
    count: int | None,
    seconds: float,
    protocol: str | None,
    seed: int,
    no_renew: bool,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Drive enrolled units for SECONDS: routes, telemetry, diagnostics, presence; then a summary."""
    from device_sim.fleet.runner import Fleet

    directory = certs or (data / "sim" / "units" if data else None)
    if directory is None:
        raise click.UsageError("give --certs DIR or --data DIR (units enrolled with `fleet-sim enroll`)")
    identities = load_fleet(directory)
    if count is not None:
        identities = dict(list(identities.items())[:count])
    if not identities:
        raise click.ClickException(f"no enrolled units in {directory}; run `fleet-sim enroll` first")
    host, port = _server(server)
    overrides: dict[str, Any] = {"host": host, "port": port, "seed": seed}
    overrides["est_url"] = None if no_renew else est_url
    if protocol:
        overrides["protocol"] = protocol
    config = _settings(config_file).fleet_config(**overrides)

    async def drive() -> dict[str, Any]:
        async with Fleet(config, identities) as fleet:
            online = await fleet.wait_online(timeout=min(60.0, 5.0 + len(identities) / 20))
            if not as_json:
                console.print(f"{online} of {len(identities)} units online {dict(fleet.by_protocol())}")
            await asyncio.sleep(seconds)
            totals = fleet.totals()
            return {"units": len(identities), "online": fleet.online, **_plain(totals)}

    summary = asyncio.run(drive())
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    table = Table(title="fleet run", title_justify="left")
    table.add_column("")
    table.add_column("count", justify="right")
    for key, value in summary.items():
        if not isinstance(value, list | dict):
            table.add_row(key.replace("_", " "), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


def _plain(stats: Any) -> dict[str, Any]:
    values = dataclasses.asdict(stats)
    samples = values.pop("connect_ms")
    values.pop("first_refused_at", None)  # a monotonic instant: meaningless outside the process
    values["refused_reasons"] = {f"0x{k:02X}": n for k, n in stats.refused_reasons.items()}
    if samples:
        values["connect_ms_median"] = round(sorted(samples)[len(samples) // 2], 1)
    return dict(values)


# --- attack ---------------------------------------------------------------------------------


@cli.command()
@click.argument("names", nargs=-1)
@_data_option(required=False)
@server_option
@est_option
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--messages", type=click.IntRange(1), default=None, help="flood: messages to send.")
@click.option("--units", "storm_units", type=click.IntRange(1), default=None, help="reconnect-storm: units.")
@click.option(
    "--watch",
    "watch_seconds",
    type=click.FloatRange(0),
    default=None,
    help="Seconds to wait for a detector or quarantine response.",
)
@click.option("--seed", type=int, default=None)
@config_option
@json_option
def attack(
    names: tuple[str, ...],
    data: Path | None,
    server: str,
    est_url: str,
    list_only: bool,
    messages: int | None,
    storm_units: int | None,
    watch_seconds: float | None,
    seed: int | None,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Run attack drills against a live gateway: NAME... or `all`; exit 1 if the gateway did not hold."""
    from device_sim.attacks.arena import Target
    from device_sim.attacks.catalogue import SCENARIOS, results_table, run_scenarios_sync

    if list_only or not names:
        for name, (_, what) in SCENARIOS.items():
            click.echo(f"{name:<18} {what}")
        return
    if data is None:
        raise click.UsageError("--data DIR is needed: the drills register their units with the fleet's CA")
    chosen = list(SCENARIOS) if names == ("all",) else list(names)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        raise click.UsageError(f"unknown scenario {', '.join(unknown)}; see `fleet-sim attack --list`")
    host, port = _server(server)
    options = _settings(config_file).scenarios
    changes: dict[str, Any] = {
        "flood_messages": messages,
        "storm_units": storm_units,
        "watch_seconds": watch_seconds,
        "seed": seed,
    }
    options = dataclasses.replace(options, **{k: v for k, v in changes.items() if v is not None})
    target = Target(data=data, host=host, port=port, est_url=est_url)
    if not as_json:
        console.print(f"running {', '.join(chosen)} against {host}:{port} ...")
    results = run_scenarios_sync(chosen, target, options)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2, default=str))
    else:
        console.print(results_table(results))
    if not all(r.held for r in results):
        sys.exit(1)


# --- load -----------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--certs",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="Enrolled units (<id>.crt, <id>.key, ca.crt) and the subscriber's identity.",
)
@server_option
@click.option("--units", type=click.IntRange(1), default=100, show_default=True)
@click.option(
    "--rate", type=click.FloatRange(0.001), default=1.0, show_default=True, help="Messages/s per unit."
)
@click.option("--duration", type=click.FloatRange(1), default=60.0, show_default=True, help="Seconds.")
@click.option("--qos", type=click.IntRange(0, 1), default=0, show_default=True)
@click.option("--payload", type=click.IntRange(8), default=100, show_default=True, help="Bytes.")
@click.option("--protocol", type=click.Choice(["3.1.1", "5.0"]), default="5.0", show_default=True)
@click.option("--subscriber", default="analytics", show_default=True, help="The measuring service.")
@click.option("--broker-pid", type=int, default=None, help="Sample this process's CPU and RSS.")
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Spread the units over this many publishing processes (each one's CPU is reported).",
)
@click.option(
    "--png",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a chart of throughput and latency (PNG; SVG if it ends in .svg; needs fleetgate[sim]).",
)
@_data_option(required=False)
@json_option
def load(
    certs: Path,
    server: str,
    units: int,
    rate: float,
    duration: float,
    qos: int,
    payload: int,
    protocol: str,
    subscriber: str,
    broker_pid: int | None,
    processes: int,
    png: Path | None,
    data: Path | None,
    as_json: bool,
) -> None:
    """Load run: N units at R msg/s for D seconds; connect times, throughput, latency, drops.

    With --data, the subscriber's service identity is issued into --certs if it is not there yet.
    """
    try:
        from device_sim.load.run import LoadOptions, run_load_sync
    except ImportError:
        raise click.ClickException("load runs are not available (device_sim.load.run is missing)") from None
    host, port = _server(server)
    if data is not None and subscriber and not (certs / f"{subscriber}.crt").exists():
        fleetgate(data, "service", "add", subscriber, "--out", str(certs))
    wanted: dict[str, Any] = {
        "host": host,
        "port": port,
        "certs_dir": certs,
        "units": units,
        "rate_per_unit": rate,
        "duration": duration,
        "qos": qos,
        "payload_size": payload,
        "protocol": protocol,
        "subscriber": subscriber,
        "broker_pid": broker_pid,
        "processes": processes,
        "progress": not as_json,
        "server_hostname": host,
    }
    # Pass only what this version of LoadOptions knows: the load module evolves on its own.
    known = {f.name for f in dataclasses.fields(LoadOptions)}
    # uvloop: thousands of TLS connections from one process need its leaner transports
    report = run_load_sync(LoadOptions(**{k: v for k, v in wanted.items() if k in known}))
    if as_json:
        click.echo(report.to_json())
    else:
        report.print_table(console)
    if png is not None:
        try:
            report.write_png(png)
        except RuntimeError as exc:  # matplotlib is not installed: say what to install
            raise click.ClickException(str(exc)) from None


# --- demo -----------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the demo: fresh CA, gateway, a fleet, an attack and its containment (`demo --help`)."""
    from device_sim.demo import main as demo_module

    sys.exit(demo_module.main(list(args)))


def main() -> None:
    cli(prog_name="fleet-sim")


if __name__ == "__main__":
    main()
