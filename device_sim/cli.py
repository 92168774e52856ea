"""`fleet-sim`: the simulated fleet's command line (grows with the simulator issue)."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Simulated telematics units: enrollment, demo fleet, load runs and attack drills."""


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def demo(args: tuple[str, ...]) -> None:
    """Run the demo: fresh CA, gateway, a small fleet (see `fleet-sim demo --help`)."""
    from device_sim import demo as demo_module

    sys.argv = ["fleet-sim demo", *args]
    demo_module.main()


def main() -> None:
    cli(prog_name="fleet-sim")
