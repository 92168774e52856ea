"""Route math and generated routes: geodesy against known distances, seeded routes, speed bounds."""

from __future__ import annotations

import math

import pytest

from device_sim.fleet.route import (
    MAX_NORMAL_SPEED_KMH,
    Point,
    RoadType,
    bearing_deg,
    destination,
    distance_km,
    generate_route,
    interpolate,
    scatter,
)

AMSTERDAM = Point(52.3676, 4.9041)
ROTTERDAM = Point(51.9244, 4.4777)
PARIS = Point(48.8566, 2.3522)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        (AMSTERDAM, ROTTERDAM, 57.0),
        (AMSTERDAM, PARIS, 430.0),
        (Point(0, 0), Point(0, 1), 111.2),  # one degree of longitude at the equator
        (Point(0, 0), Point(1, 0), 111.2),
    ],
)
def test_distance_matches_known_distances(a: Point, b: Point, km: float) -> None:
    assert distance_km(a, b) == pytest.approx(km, rel=0.01)
    assert distance_km(b, a) == pytest.approx(distance_km(a, b))


def test_distance_to_itself_is_zero() -> None:
    assert distance_km(PARIS, PARIS) == 0.0


@pytest.mark.parametrize(("b", "bearing"), [(Point(1, 0), 0.0), (Point(0, 1), 90.0), (Point(-1, 0), 180.0)])
def test_bearing_of_the_cardinal_directions(b: Point, bearing: float) -> None:
    assert bearing_deg(Point(0, 0), b) == pytest.approx(bearing, abs=1e-6)
    assert bearing_deg(Point(0, 0), Point(0, -1)) == pytest.approx(270.0)


@pytest.mark.parametrize("bearing", [0.0, 45.0, 133.0, 270.0, 359.0])
@pytest.mark.parametrize("km", [0.01, 1.0, 250.0, 900.0])
def test_destination_is_the_inverse_of_distance_and_bearing(bearing: float, km: float) -> None:
    far = destination(ROTTERDAM, bearing, km)
    assert distance_km(ROTTERDAM, far) == pytest.approx(km, rel=1e-6)
    assert bearing_deg(ROTTERDAM, far) == pytest.approx(bearing, abs=1e-3)


def test_destination_wraps_longitude() -> None:
    assert -180.0 <= destination(Point(0, 179.9), 90.0, 50.0).lon < -179.0


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_interpolation_lies_on_the_great_circle(fraction: float) -> None:
    p = interpolate(AMSTERDAM, PARIS, fraction)
    total = distance_km(AMSTERDAM, PARIS)
    assert distance_km(AMSTERDAM, p) == pytest.approx(total * fraction, abs=1e-6)
    assert distance_km(p, PARIS) == pytest.approx(total * (1 - fraction), abs=1e-6)


def test_the_same_seed_gives_the_same_route_and_another_seed_another() -> None:
    first, again, other = (generate_route(s, ROTTERDAM) for s in ("TRK-1", "TRK-1", "TRK-2"))
    assert first == again
    assert first.segments != other.segments


@pytest.mark.parametrize("seed", range(40))
def test_routes_never_exceed_normal_truck_speeds(seed: int) -> None:
    route = generate_route(seed, scatter(seed, ROTTERDAM, 60.0))
    assert route.max_speed_kmh <= max(r.speed_range[1] for r in RoadType) <= MAX_NORMAL_SPEED_KMH
    for segment in route.segments:
        low, high = segment.road.speed_range
        assert segment.speed_kmh == 0.0 or low <= segment.speed_kmh <= high


@pytest.mark.parametrize("seed", range(10))
def test_the_timeline_is_continuous_and_consistent_with_the_speeds(seed: int) -> None:
    route = generate_route(seed, ROTTERDAM)
    for prev, seg in zip(route.segments, route.segments[1:], strict=False):
        assert seg.start_s == pytest.approx(prev.end_s)
        assert seg.start == prev.end  # no teleporting between segments
        assert seg.odometer_km == pytest.approx(prev.odometer_km + prev.length_km)
        if seg.speed_kmh:
            assert distance_km(seg.start, seg.end) == pytest.approx(seg.length_km, rel=1e-6)


def test_an_out_and_back_tour_ends_where_it_began() -> None:
    route = generate_route(7, ROTTERDAM)
    assert distance_km(route.segments[-1].end, ROTTERDAM) < 1e-6
    assert route.state_at(route.duration_s).position == route.state_at(0.0).position


def test_routes_have_stops_and_every_road_type() -> None:
    roads = {s.road for seed in range(5) for s in generate_route(seed, ROTTERDAM).segments}
    assert roads == set(RoadType)
    stops = [s for seed in range(5) for s in generate_route(seed, ROTTERDAM).segments if s.speed_kmh == 0]
    assert stops and all(s.start == s.end and s.duration_s >= 10 for s in stops)


@pytest.mark.parametrize("seed", range(10))
def test_consecutive_fixes_imply_the_reported_speed(seed: int) -> None:
    """What an impossible-travel detector computes from 1 s fixes never exceeds the normal maximum."""
    route = generate_route(seed, ROTTERDAM)
    t = 0.0
    while t < route.duration_s * 1.2:  # also across the start of a second lap
        a, b = route.state_at(t), route.state_at(t + 1.0)
        implied = distance_km(a.position, b.position) * 3600.0
        assert implied <= MAX_NORMAL_SPEED_KMH
        assert implied <= max(a.speed_kmh, b.speed_kmh) + 1e-6
        t += 37.0


def test_state_follows_the_segment() -> None:
    route = generate_route(3, ROTTERDAM)
    seg = next(s for s in route.segments if s.speed_kmh > 0 and s.duration_s > 10)
    mid = route.state_at(seg.start_s + seg.duration_s / 2)
    assert mid.speed_kmh == seg.speed_kmh
    assert mid.heading == seg.heading
    assert mid.odometer_km == pytest.approx(seg.odometer_km + seg.length_km / 2)
    assert not mid.stopped


def test_the_odometer_keeps_growing_over_laps() -> None:
    route = generate_route(5, ROTTERDAM)
    assert route.state_at(route.duration_s * 2.5).odometer_km == pytest.approx(
        route.length_km * 2.5, rel=0.02
    )


def test_scatter_stays_within_the_radius_and_is_seeded() -> None:
    points = [scatter(n, ROTTERDAM, 60.0) for n in range(200)]
    assert all(distance_km(ROTTERDAM, p) <= 60.0 + 1e-6 for p in points)
    assert scatter(1, ROTTERDAM, 60.0) == scatter(1, ROTTERDAM, 60.0)
    assert len({(p.lat, p.lon) for p in points}) == 200


def test_a_route_needs_legs() -> None:
    with pytest.raises(ValueError, match="leg"):
        generate_route(1, ROTTERDAM, legs=0)
    assert math.isfinite(generate_route(1, ROTTERDAM, legs=1).duration_s)
