"""Admission (per-source rate, connections held per source and per listener, the open-file plan) and
the per-identity retained quota, as arithmetic."""

from __future__ import annotations

import pytest

from gateway.app.fd_budget import FdBudgetError, plan_connections
from gateway.broker.quota import RetainedOwners
from gateway.config import LimitsConfig
from gateway.edge.admission import (
    ConnectionGate,
    Slot,
    SourceAdmission,
    admission_from_limits,
    listener_gates,
    source_host,
    source_key,
)


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


def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64() -> None:
    assert source_key("10.1.2.3:5555") == "10.1.2.3"
    assert (
        source_key("[2001:db8:0:1:aaaa::1]:1")
        == source_key("[2001:db8:0:1:ffff::9]:2")
        == "2001:db8:0:1::/64"
    )
    assert source_key("[2001:db8:0:2::1]:1") == "2001:db8:0:2::/64"  # the next /64 is another source
    assert source_key("[::ffff:10.1.2.3]:1") == "10.1.2.3"  # v4-mapped counts as its IPv4 address


def test_ipv6_addresses_of_one_slash_64_share_one_rate_bucket() -> None:
    gate = SourceAdmission(rate=1, burst=3, exempt=frozenset())
    admitted = [gate.admit(f"[2001:db8:0:1::{i:x}]:1", 0.0) for i in range(1, 10)]
    assert admitted == [True] * 3 + [False] * 6


def _held(gate: ConnectionGate, address: str, count: int) -> list[Slot | str]:
    return [gate.admit(address, 0.0) for _ in range(count)]


def test_a_gate_caps_connections_per_source_and_in_all_and_gives_slots_back() -> None:
    gate = ConnectionGate("https", max_connections=5, max_per_source=2, exempt=frozenset({"127.0.0.1"}))
    first = _held(gate, "10.0.0.1:1", 3)
    assert [type(v) for v in first] == [Slot, Slot, str] and first[2] == "source_full"
    assert [type(v) for v in _held(gate, "10.0.0.2:1", 2)] == [Slot, Slot]
    exempt = _held(gate, "127.0.0.1:1", 2)  # exempt from the per-source cap, not from the listener's
    assert [type(v) for v in exempt] == [Slot, str] and exempt[1] == "listener_full"
    assert gate.open == 5 and gate.counters.refused == {"source_full": 1, "listener_full": 1}
    slot = first[0]
    assert isinstance(slot, Slot)
    slot.release()
    slot.release()  # idempotent: a connection that ends twice gives back one slot
    assert gate.open == 4 and gate.held_by("10.0.0.1:9") == 1
    assert isinstance(gate.admit("10.0.0.1:1", 0.0), Slot)
    assert gate.counters.peak == 5


def test_sources_holding_nothing_are_forgotten() -> None:
    gate = ConnectionGate("mqtt", max_connections=10_000, max_per_source=5, exempt=frozenset())
    slots = [gate.admit(f"10.0.{i // 256}.{i % 256}:1", 0.0) for i in range(1000)]
    assert gate.sources == 1000
    for slot in slots:
        assert isinstance(slot, Slot)
        slot.release()
    assert gate.sources == 0 and gate.open == 0


def test_exempt_networks_and_a_closed_gate() -> None:
    gate = ConnectionGate("mqtt", max_connections=100, max_per_source=1, exempt=frozenset({"10.8.0.0/16"}))
    assert all(isinstance(v, Slot) for v in _held(gate, "10.8.3.4:1", 10))
    assert _held(gate, "10.9.0.1:1", 2)[1] == "source_full"
    gate.closed = True
    assert gate.admit("10.8.3.4:1", 0.0) == "listener_closed"


def test_the_open_file_budget_keeps_https_and_the_lab_to_their_shares() -> None:
    limits = LimitsConfig()
    small = plan_connections(256, limits, lab=True)
    assert (small.https, small.lab) == (48, 12)  # (256 - 64) / 4 and / 16
    assert small.mqtt == 256 - 64 - 48 - 12
    large = plan_connections(1 << 20, limits, lab=False)
    assert (large.https, large.lab) == (limits.https_max_connections, 0)
    capped = plan_connections(1 << 20, LimitsConfig(max_connections=5000), lab=False)
    assert capped.mqtt == 5000
    with pytest.raises(FdBudgetError, match="LimitNOFILE"):
        plan_connections(80, limits, lab=False)


def test_listener_gates_from_the_configuration() -> None:
    gates = listener_gates(LimitsConfig(), mqtt=100, https=10, lab=3)
    assert {n: g.max_connections for n, g in gates.items()} == {"mqtt": 100, "https": 10, "lab": 3}
    assert gates["https"].max_per_source == 16 and gates["mqtt"].max_per_source == 256
    assert gates["mqtt"].rate is not gates["https"].rate  # each listener has buckets of its own


def test_refusals_are_logged_once_per_kind_then_summed_up(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gateway.edge.refusal_log import RefusalLog

    refusals = RefusalLog(logging.getLogger("test.refusals"), interval=10)
    with caplog.at_level(logging.INFO, "test.refusals"):
        for i in range(5000):
            refusals.note("https listener_full", f"10.0.{i // 256}.{i % 256}:1", "full", i * 0.001)
        refusals.note("mqtt source_full", "10.1.0.1:1", "full", 4.0)
        refusals.flush(4.0)  # nothing has ended yet
        refusals.flush(11.0)  # the https run's interval ended: one summary
        refusals.flush(30.0)  # quiet for a whole interval: both kinds start over
        refusals.note("https listener_full", "10.0.0.1:1", "full", 31.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("https listener_full: refusing 10.0.0.0:1 (full)")
    assert "refused 4999 more" in lines[2] and "from 1024+ source(s)" in lines[2]
    assert lines[3].startswith("https listener_full: refusing")  # a new run after a quiet interval


def test_a_balancers_connections_count_against_the_sources_their_headers_name() -> None:
    """listen.proxy_protocol_from: the balancer is exempt at accept; each forwarded connection is then
    charged to the client its PROXY header names (readmit), and given back from there when it closes."""
    gate = listener_gates(
        LimitsConfig(max_connections_per_source=2), mqtt=100, https=10, balancers=frozenset({"10.0.0.5"})
    )["mqtt"]
    slots = [gate.admit("10.0.0.5:1000", 0.0) for _ in range(5)]  # past the per-source cap of 2: exempt
    assert all(isinstance(s, Slot) for s in slots)
    assert [gate.readmit(s, "203.0.113.9:40000", 0.0) for s in slots[:3]] == [None, None, "source_full"]  # type: ignore[arg-type]
    assert gate.readmit(slots[3], "198.51.100.1:1", 0.0) is None  # type: ignore[arg-type]  # another client: its own share
    assert gate.held_by("203.0.113.9:1") == 2 and gate.held_by("10.0.0.5:1") == 0
    slots[0].release()  # type: ignore[union-attr]
    assert gate.held_by("203.0.113.9:1") == 1
    assert gate.readmit(slots[2], "203.0.113.9:40001", 0.0) is None  # type: ignore[arg-type]
    assert gate.open == 4 and gate.counters.refused["source_full"] == 1


def test_readmit_charges_the_named_sources_rate() -> None:
    gate = ConnectionGate(
        "mqtt", max_connections=100, rate=SourceAdmission(rate=1, burst=2), exempt=frozenset({"10.0.0.5"})
    )
    slots = [gate.admit("10.0.0.5:1", 0.0) for _ in range(3)]
    verdicts = [gate.readmit(s, "203.0.113.9:1", 0.0) for s in slots]  # type: ignore[arg-type]
    assert verdicts == [None, None, "rate_limited"]


def test_readmit_of_a_non_exempt_balancer_moves_the_count() -> None:
    gate = ConnectionGate("mqtt", max_connections=100, max_per_source=10, exempt=frozenset())
    slot = gate.admit("10.0.0.5:1", 0.0)
    assert isinstance(slot, Slot) and gate.held_by("10.0.0.5:1") == 1
    assert gate.readmit(slot, "203.0.113.9:1", 0.0) is None
    assert gate.held_by("10.0.0.5:1") == 0 and gate.held_by("203.0.113.9:1") == 1
    slot.release()
    assert gate.sources == 0 and gate.open == 0
