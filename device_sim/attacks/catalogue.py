"""Attack scenarios (`fleet-sim attack NAME`): the catalogue, and a runner that bounds each one.

Every scenario is `async (Lab) -> ScenarioResult` and reports what it saw, not what it hoped for:
when a defence has not landed yet (a detector, quarantine), the result says so in numbers
("not contained: ... no quarantine within 5 s") instead of failing or pretending.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from rich.table import Table

from device_sim.attacks import identity, storm, traffic
from device_sim.attacks.arena import Lab, ScenarioOptions, ScenarioResult, Target

Scenario = Callable[[Lab], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, tuple[Scenario, str]] = {
    "flood": (traffic.flood, "a unit publishes as fast as it can"),
    "topic-escape": (traffic.topic_escape, "another unit's topics, #, $SYS/#"),
    "client-id-spoof": (identity.client_id_spoof, "a valid certificate with another client id"),
    "revoked-cert": (identity.revoked_cert, "revoked while connected, then reconnects"),
    "expired-cert": (identity.expired_cert, "signed by the fleet CA, expired a day ago"),
    "foreign-cert": (identity.foreign_cert, "a unit certificate from a different CA"),
    "self-signed": (identity.self_signed, "a unit's name and SAN, self-signed"),
    "impossible-travel": (traffic.impossible_travel, "a 900 km jump in one minute"),
    "reconnect-storm": (storm.reconnect_storm, "the whole fleet drops and returns at once"),
    "cloned-unit": (identity.cloned_unit, "one certificate from two connections"),
}

TIME_LIMIT = 120.0  # seconds any one scenario may take before it is reported as unfinished


async def run_scenario(name: str, lab: Lab, time_limit: float = TIME_LIMIT) -> ScenarioResult:
    scenario, _ = SCENARIOS[name]
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(scenario(lab), time_limit)
    except TimeoutError:
        return ScenarioResult(name, False, f"unfinished: the scenario took longer than {time_limit:g} s")
    except (OSError, RuntimeError, ConnectionError) as exc:
        return ScenarioResult(name, False, f"could not run: {exc}")
    result.details.setdefault("scenario_seconds", round(time.monotonic() - started, 2))
    return result


async def run_scenarios(
    names: Sequence[str], target: Target, options: ScenarioOptions | None = None
) -> list[ScenarioResult]:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    lab = Lab(target, options or ScenarioOptions())
    try:
        return [await run_scenario(name, lab) for name in names]
    finally:
        lab.close()


def run_scenarios_sync(
    names: Sequence[str], target: Target, options: ScenarioOptions | None = None
) -> list[ScenarioResult]:
    return asyncio.run(run_scenarios(names, target, options))


def results_table(results: Sequence[ScenarioResult], title: str = "attack drills") -> Table:
    """One row per scenario: did the gateway hold, what it did, and how fast."""
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("scenario", style="bold", no_wrap=True)
    table.add_column("held", no_wrap=True)
    table.add_column("what the gateway did", ratio=1)
    table.add_column("drop", justify="right", no_wrap=True)
    table.add_column("contain", justify="right", no_wrap=True)
    for result in results:
        held = "[green]yes[/]" if result.held else "[red]NO[/]"
        table.add_row(
            result.name,
            held,
            result.what_gateway_did,
            _ms_text(result.time_to_drop_ms),
            _ms_text(result.time_to_contain_ms),
        )
    return table


def _ms_text(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"
