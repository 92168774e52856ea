"""Routes a truck drives: seeded polylines of waypoints, road types with their speeds, and stops.

Theory of operation. A route is generated once from a seed and then never changes: an outward random
walk of legs (urban at both ends, rural and motorway in between), driven out and back, with dwell
stops (traffic lights, deliveries) at some waypoints. Every leg is cut into stretches of constant
speed, so the route becomes a timeline of segments and `Route.state_at(elapsed)` is a pure lookup:
where the truck is, how fast it goes and where it heads, `elapsed` seconds into the (repeating) tour.

Because each segment is driven at exactly `length / duration`, the speed a detector computes from
two consecutive fixes equals the reported speed, and no speed ever exceeds the road type's maximum
(110 km/h at most, under MAX_NORMAL_SPEED_KMH): a normal fleet never looks like impossible travel.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from enum import Enum

EARTH_RADIUS_KM = 6371.0088
MAX_NORMAL_SPEED_KMH = 130.0  # no normal unit ever reports or implies more than this


@dataclass(frozen=True, slots=True)
class Point:
    lat: float
    lon: float


class RoadType(Enum):
    # (lowest and highest cruise speed in km/h, shortest and longest leg in km, chance of a stop)
    URBAN = (20.0, 50.0, 0.3, 1.5, 0.5)
    RURAL = (50.0, 80.0, 2.0, 8.0, 0.15)
    MOTORWAY = (75.0, 110.0, 5.0, 20.0, 0.05)

    @property
    def speed_range(self) -> tuple[float, float]:
        return self.value[0], self.value[1]

    @property
    def leg_range(self) -> tuple[float, float]:
        return self.value[2], self.value[3]

    @property
    def stop_chance(self) -> float:
        return self.value[4]


# --- geodesy (spherical Earth: metres of error over hundreds of km, plenty for a simulator) ------


def distance_km(a: Point, b: Point) -> float:
    """Great-circle (haversine) distance."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat, dlon = lat2 - lat1, math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(a: Point, b: Point) -> float:
    """Initial compass bearing from a to b, 0 = north, clockwise, in [0, 360)."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlon = math.radians(b.lon - a.lon)
    y = math.sin(dlon) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return math.degrees(math.atan2(y, x)) % 360.0


def destination(start: Point, bearing: float, km: float) -> Point:
    """The point `km` away from `start` along the great circle leaving at `bearing` degrees."""
    lat1, lon1, theta = math.radians(start.lat), math.radians(start.lon), math.radians(bearing)
    delta = km / EARTH_RADIUS_KM
    lat2 = math.asin(math.sin(lat1) * math.cos(delta) + math.cos(lat1) * math.sin(delta) * math.cos(theta))
    lon2 = lon1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(lat1), math.cos(delta) - math.sin(lat1) * math.sin(lat2)
    )
    return Point(math.degrees(lat2), (math.degrees(lon2) + 540.0) % 360.0 - 180.0)


def interpolate(a: Point, b: Point, fraction: float) -> Point:
    """The point `fraction` of the way from a to b along the great circle."""
    km = distance_km(a, b)
    if km == 0.0 or fraction <= 0.0:
        return a
    if fraction >= 1.0:
        return b
    return destination(a, bearing_deg(a, b), km * fraction)


# --- the route ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch driven at constant speed, or a stop (start == end, speed 0)."""

    start_s: float
    duration_s: float
    start: Point
    end: Point
    speed_kmh: float
    road: RoadType
    odometer_km: float  # distance driven before this segment
    heading: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def length_km(self) -> float:
        return self.speed_kmh * self.duration_s / 3600.0


@dataclass(frozen=True, slots=True)
class RouteState:
    position: Point
    speed_kmh: float
    heading: float
    odometer_km: float  # distance driven since the tour began (grows across repetitions)
    road: RoadType
    stopped: bool


@dataclass(frozen=True)
class Route:
    segments: tuple[Segment, ...]
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a route needs at least one segment")
        # Frozen, so the lookup table is set once here (the documented idiom for derived fields).
        object.__setattr__(self, "_starts", tuple(s.start_s for s in self.segments))

    @property
    def duration_s(self) -> float:
        return self.segments[-1].end_s

    @property
    def length_km(self) -> float:
        last = self.segments[-1]
        return last.odometer_km + last.length_km

    @property
    def start(self) -> Point:
        return self.segments[0].start

    @property
    def max_speed_kmh(self) -> float:
        return max(s.speed_kmh for s in self.segments)

    def state_at(self, elapsed_s: float) -> RouteState:
        """Where the truck is `elapsed_s` seconds into its tour; the tour repeats forever."""
        laps, into = divmod(max(0.0, elapsed_s), self.duration_s)
        index = max(0, bisect.bisect_right(self._starts, into) - 1)
        seg = self.segments[index]
        fraction = (into - seg.start_s) / seg.duration_s if seg.duration_s else 0.0
        driven = seg.length_km * fraction
        return RouteState(
            position=interpolate(seg.start, seg.end, fraction),
            speed_kmh=seg.speed_kmh,
            heading=seg.heading,
            odometer_km=laps * self.length_km + seg.odometer_km + driven,
            road=seg.road,
            stopped=seg.speed_kmh == 0.0,
        )


def _road_plan(rng: random.Random, legs: int) -> list[RoadType]:
    # Depots and customers are in town: urban at both ends, the open road in between.
    plan = []
    for i in range(legs):
        edge = min(i, legs - 1 - i)
        if edge < 2:
            plan.append(RoadType.URBAN)
        elif edge < 4:
            plan.append(RoadType.RURAL)
        else:
            plan.append(rng.choice((RoadType.RURAL, RoadType.MOTORWAY, RoadType.MOTORWAY)))
    return plan


def _waypoints(rng: random.Random, start: Point, plan: list[RoadType]) -> list[Point]:
    points, heading = [start], rng.uniform(0.0, 360.0)
    for road in plan:
        heading = (heading + rng.gauss(0.0, 30.0)) % 360.0  # roads bend, they rarely turn back
        points.append(destination(points[-1], heading, rng.uniform(*road.leg_range)))
    return points


def generate_route(seed: int | str, start: Point, legs: int = 14) -> Route:
    """A seeded out-and-back tour from `start`: the same seed always gives the same route."""
    if legs < 1:
        raise ValueError("a route needs at least one leg")
    rng = random.Random(f"route:{seed}")
    plan = _road_plan(rng, legs)
    points = _waypoints(rng, start, plan)
    outward = list(zip(points, points[1:], plan, strict=False))
    back = [(b, a, road) for a, b, road in reversed(outward)]
    builder = _SegmentBuilder()
    for a, b, road in outward + back:
        builder.leg(rng, a, b, road)
    return Route(tuple(builder.segments))


class _SegmentBuilder:
    """Cuts legs into constant-speed stretches of 0.3-3 km and adds stops after some legs."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.t = 0.0
        self.odometer = 0.0

    def leg(self, rng: random.Random, a: Point, b: Point, road: RoadType) -> None:
        total = distance_km(a, b)
        stretches = max(1, math.ceil(total / rng.uniform(0.3, 3.0)))
        for i in range(stretches):
            p, q = interpolate(a, b, i / stretches), interpolate(a, b, (i + 1) / stretches)
            self._drive(p, q, rng.uniform(*road.speed_range), road)
        if rng.random() < road.stop_chance:
            # Lights in town are short; a stop on the open road is a break or a delivery.
            dwell = rng.uniform(10.0, 60.0) if road is RoadType.URBAN else rng.uniform(60.0, 300.0)
            self._stop(b, dwell, road)

    def _drive(self, a: Point, b: Point, speed: float, road: RoadType) -> None:
        km = distance_km(a, b)
        if km == 0.0:
            return
        duration = km / speed * 3600.0
        self.segments.append(Segment(self.t, duration, a, b, speed, road, self.odometer, bearing_deg(a, b)))
        self.t += duration
        self.odometer += km

    def _stop(self, at: Point, dwell: float, road: RoadType) -> None:
        heading = self.segments[-1].heading if self.segments else 0.0
        self.segments.append(Segment(self.t, dwell, at, at, 0.0, road, self.odometer, heading))
        self.t += dwell


def scatter(seed: int | str, centre: Point, radius_km: float) -> Point:
    """A seeded start point within `radius_km` of `centre` (depots spread around a region)."""
    rng = random.Random(f"scatter:{seed}")
    return destination(centre, rng.uniform(0.0, 360.0), radius_km * math.sqrt(rng.random()))
