"""`configs/sim.yaml`: unit behaviour, fleet runner and scenario sizes, with precise errors.

The dataclass defaults are the built-in configuration; a file overrides any subset. Unknown keys
are refused by name, because a misspelt interval silently ignored is a simulation that lies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from device_sim.attacks.arena import ScenarioOptions
from device_sim.fleet.route import Point
from device_sim.fleet.runner import FleetConfig
from device_sim.fleet.unit import UnitProfile

DEFAULT_FILE = Path("configs/sim.yaml")
FLEET_FROM_CLI = {"host", "port", "seed", "est_url", "profile"}  # given on the command line, not in the file


class SettingsError(ValueError):
    """The simulator's configuration is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class SimSettings:
    profile: UnitProfile = field(default_factory=UnitProfile)
    fleet: dict[str, Any] = field(default_factory=dict)  # FleetConfig fields other than host/port/seed
    scenarios: ScenarioOptions = field(default_factory=ScenarioOptions)

    def fleet_config(self, **overrides: Any) -> FleetConfig:
        return FleetConfig(profile=self.profile, **{**self.fleet, **overrides})


def load_settings(path: Path | None = None) -> SimSettings:
    """Read `path` (or ./configs/sim.yaml when it exists); no file means the built-in defaults."""
    chosen = path if path is not None else (DEFAULT_FILE if DEFAULT_FILE.exists() else None)
    if chosen is None:
        return SimSettings()
    try:
        raw = yaml.safe_load(chosen.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read {chosen}: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{chosen} must be a mapping with unit, fleet and scenarios sections")
    _only(raw, {"unit", "fleet", "scenarios"}, str(chosen))
    scenarios = _fields(raw.get("scenarios") or {}, ScenarioOptions, f"{chosen}: scenarios")
    return SimSettings(
        profile=_profile(raw.get("unit") or {}, chosen),
        fleet=_fields(raw.get("fleet") or {}, FleetConfig, f"{chosen}: fleet", skip=FLEET_FROM_CLI),
        scenarios=ScenarioOptions(**scenarios),
    )


def _profile(section: dict[str, Any], path: Path) -> UnitProfile:
    values = dict(section)
    region = values.pop("region", None) or {}
    _only(region, {"lat", "lon", "radius_km"}, f"{path}: unit.region")
    checked = _fields(values, UnitProfile, f"{path}: unit", skip={"centre", "radius_km"})
    if "lat" in region or "lon" in region:
        checked["centre"] = Point(float(region.get("lat", 51.95)), float(region.get("lon", 4.14)))
    if "radius_km" in region:
        checked["radius_km"] = float(region["radius_km"])
    try:
        return UnitProfile(**checked)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{path}: unit: {exc}") from None


def _fields(section: Any, cls: Any, where: str, skip: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise SettingsError(f"{where} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    _only(section, set(known) - (skip or set()), where)
    out: dict[str, Any] = {}
    for key, value in section.items():
        default = known[key].default
        if isinstance(default, bool) or not isinstance(default, int | float | str):
            out[key] = value
        elif isinstance(default, float) and isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, type(default)):
            out[key] = value
        else:
            raise SettingsError(f"{where}.{key} must be a {type(default).__name__}, not {value!r}")
    return out


def _only(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        allowed_text = ", ".join(sorted(allowed))
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {allowed_text}")
