"""The per-source connection-rate limit and the per-identity retained quota, as arithmetic."""

from __future__ import annotations

from gateway.broker.quota import RetainedOwners
from gateway.config import LimitsConfig
from gateway.edge.admission import SourceAdmission, admission_from_limits, source_host


def test_source_host() -> None:
    assert source_host("10.1.2.3:5555") == "10.1.2.3"
    assert source_host("[2001:db8::1]:8883") == "2001:db8::1"
    assert source_host("listener") == "listener"


def test_a_source_gets_its_burst_then_its_rate_and_others_are_untouched() -> None:
    gate = SourceAdmission(rate=2, burst=5, exempt=frozenset())
    assert [gate.admit("10.0.0.1:1", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert gate.admit("10.0.0.2:1", 0.0)  # another source is not charged for the first one's flood
    assert not gate.admit("10.0.0.1:2", 0.4)
    assert gate.admit("10.0.0.1:3", 0.5)  # one token back after 1/rate seconds
    assert gate.counters.refused == 3 and gate.counters.refused_by_source == {"10.0.0.1": 3}


def test_exempt_sources_and_off() -> None:
    gate = SourceAdmission(rate=1, burst=1)
    assert all(gate.admit("127.0.0.1:9", 0.0) for _ in range(100))
    assert all(gate.admit("[::1]:9", 0.0) for _ in range(100))
    off = SourceAdmission(rate=0, burst=1, exempt=frozenset())
    assert all(off.admit("10.0.0.1:1", 0.0) for _ in range(100))


def test_memory_is_bounded_by_max_sources() -> None:
    gate = SourceAdmission(rate=1, burst=1, exempt=frozenset(), max_sources=100)
    for i in range(10_000):
        gate.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:1", 0.0)
    assert gate.sources == 100 and gate.counters.sources_evicted == 9_900
    assert len(gate.counters.refused_by_source) <= 1024


def test_from_config() -> None:
    gate = admission_from_limits(LimitsConfig(connections_per_source_per_second=3, connection_rate_exempt=""))
    assert gate.rate == 3 and gate.burst == 100 and gate.exempt == frozenset()


def test_retained_owners_count_slots_per_identity() -> None:
    owners = RetainedOwners()
    for i in range(3):
        assert owners.allows(f"t/{i}", "A", 3)
        owners.set(f"t/{i}", "A")
    assert not owners.allows("t/new", "A", 3)
    assert owners.allows("t/0", "A", 3)  # replacing its own is free
    assert owners.allows("t/new", "B", 3)
    owners.set("t/0", "B")  # B took over t/0: A has a slot again
    assert owners.count("A") == 2 and owners.count("B") == 1
    owners.release("t/1")
    owners.set("t/2", None)  # the gateway's own message: no owner
    assert owners.count("A") == 0


def test_the_hub_default_is_the_configured_default() -> None:
    # ConnectionHub builds SourceAdmission() when the runtime passes none: it must match gateway.yaml
    built, default = admission_from_limits(LimitsConfig()), SourceAdmission()
    assert (built.rate, built.burst, built.exempt) == (default.rate, default.burst, default.exempt)
