"""configs/sim.yaml: the shipped file matches the built-in defaults; mistakes are named, not ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_sim.attacks.arena import ScenarioOptions
from device_sim.fleet.route import Point
from device_sim.fleet.unit import UnitProfile
from device_sim.settings import SettingsError, SimSettings, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_file_is_the_built_in_defaults() -> None:
    shipped = load_settings(REPO / "configs" / "sim.yaml")
    assert shipped.profile == UnitProfile()
    assert shipped.scenarios == ScenarioOptions()
    config = shipped.fleet_config(port=8883)
    assert config.protocol == "mixed" and config.renew_fraction == pytest.approx(2 / 3, abs=1e-3)


def test_a_subset_overrides_and_the_rest_keeps_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(
        "unit:\n  gps_interval: 2\n  region: {lat: 48.85, lon: 2.35, radius_km: 10}\n"
        "fleet:\n  protocol: '5.0'\nscenarios:\n  flood_messages: 10\n"
    )
    settings = load_settings(path)
    assert settings.profile.gps_interval == 2.0 and settings.profile.engine_interval == 5.0
    assert settings.profile.centre == Point(48.85, 2.35) and settings.profile.radius_km == 10.0
    assert settings.fleet_config(port=1).protocol == "5.0"
    assert settings.scenarios.flood_messages == 10 and settings.scenarios.storm_units == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("unit:\n  gps_intervall: 1\n", "unknown key.*gps_intervall"),
        ("fleet:\n  port: 1883\n", "unknown key.*port"),
        ("scenarios:\n  flood_messages: lots\n", "flood_messages must be a int"),
        ("unit:\n  gps_interval: 0\n", "gps_interval must be positive"),
        ("clouds: {}\n", "unknown key.*clouds"),
        ("- a list\n", "must be a mapping"),
        ("unit: [\n", "cannot read"),
    ],
)
def test_mistakes_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(path)


def test_no_file_means_built_in_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings() == SimSettings()
