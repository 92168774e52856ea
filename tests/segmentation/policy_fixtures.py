"""The data_classes/views sections used by the segmentation tests (also the YAML proposed for policy.yaml)."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.policy.data_classes import DataClasses, ViewPolicy, parse_data_classes, parse_views

SECTIONS_YAML = """
data_classes:
  pii:
    fields: [driver_id, driver_name, driver_phone, driver.name, driver.phone]
  commercial:
    fields: [cargo, rate, customer, order.rate]
    topics: ["fleet/{unit}/telemetry/manifest"]
  location:
    fields: [lat, lon, position]
    coarsen_to: 0.1
  tracking:
    fields: [status, eta, speed_kmh, heading, ts, unit, order.eta]

views:
  topic: "views/{tier}/fleet/{unit}/{stream}"
  sources: ["fleet/{unit}/telemetry/{stream}"]
  tiers:
    1: {classes: [location, tracking, commercial], pseudonymise_units: false}
    2: {classes: [location, tracking], coarsen: [location], pseudonymise_units: true}
    3: {classes: [tracking], pseudonymise_units: true}
"""

PII_FIELDS = ("driver_id", "driver_name", "driver_phone")
COMMERCIAL_FIELDS = ("cargo", "rate", "customer")
LOCATION_FIELDS = ("lat", "lon")
TRACKING_FIELDS = ("status", "eta", "speed_kmh", "heading", "ts")


def raw_sections() -> dict[str, Any]:
    data = yaml.safe_load(SECTIONS_YAML)
    assert isinstance(data, dict)
    return data


def data_classes(raw: dict[str, Any] | None = None) -> DataClasses:
    raw = raw or raw_sections()
    return parse_data_classes(raw.get("data_classes"), "test.yaml")


def view_policy(raw: dict[str, Any] | None = None) -> ViewPolicy:
    raw = raw or raw_sections()
    views = parse_views(raw.get("views"), data_classes(raw), "test.yaml")
    assert views is not None
    return views
