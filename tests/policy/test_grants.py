"""Compiled grants: templates filled once per identity, answers by dict and trie, first grant wins."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.topics import topic_matches
from gateway.policy.grants import ID, CompiledGrants, GrantCache, IdentityMatcher, TopicMatcher
from gateway.stores.policy_file import load_policy
from pki.names import Identity, IdentityError

POLICY = load_policy(None)
TD = "fleet.local"
TRK1 = Identity("unit", "TRK-1", TD)


def unit_grants(quarantined: bool = False) -> CompiledGrants:
    return CompiledGrants.for_identity(POLICY, TRK1, None, quarantined)


class TestTopicMatcher:
    def test_first_grant_in_file_order_wins_whether_literal_or_wildcard(self) -> None:
        m = TopicMatcher([("a/+", "r0"), ("a/b", "r1"), ("a/#", "r2"), ("c", "r3"), ("c", "r4")])
        assert m.match("a/b") == "r0"  # the literal grant r1 comes later than the wildcard r0
        assert m.match("a/x") == "r0"
        assert m.match("a") == "r2"
        assert m.match("a/b/c") == "r2"
        assert m.match("c") == "r3"
        assert m.match("d") is None

    def test_dollar_topics_need_a_dollar_grant(self) -> None:
        m = TopicMatcher([("#", "all"), ("$SYS/#", "sys")])
        assert m.match("$SYS/uptime") == "sys"
        assert TopicMatcher([("#", "all")]).match("$SYS/uptime") is None

    LEVEL = st.sampled_from(["a", "b", "+"])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.tuples(st.lists(LEVEL, min_size=1, max_size=3), st.booleans()), min_size=1, max_size=5),
        st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4),
    )
    def test_agrees_with_a_linear_scan(self, shapes: list[tuple[list[str], bool]], levels: list[str]) -> None:
        filters = ["/".join([*ls, "#"] if multi else ls) for ls, multi in shapes]
        m = TopicMatcher((f, f"r{i}") for i, f in enumerate(filters))
        topic = "/".join(levels)
        expected = next((f"r{i}" for i, f in enumerate(filters) if topic_matches(f, topic)), None)
        assert m.match(topic) == expected


class TestIdentityMatcher:
    """One matcher compiled with ID for the id, read per identity, must answer exactly as a matcher
    compiled with that identity's id filled in: same rule, same first-in-file-order choice."""

    TEMPLATE_LEVEL = st.sampled_from(["a", "b", "TRK-1", "{id}", "+"])
    TOPIC_LEVEL = st.sampled_from(["a", "b", "TRK-1", "TRK-2"])

    @settings(max_examples=400, deadline=None)
    @given(
        st.lists(
            st.tuples(st.lists(TEMPLATE_LEVEL, min_size=1, max_size=4), st.booleans()), min_size=1, max_size=6
        ),
        st.lists(TOPIC_LEVEL, min_size=1, max_size=5),
        st.sampled_from(["TRK-1", "TRK-2"]),
    )
    def test_agrees_with_a_matcher_filled_for_the_identity(
        self, shapes: list[tuple[list[str], bool]], levels: list[str], ident: str
    ) -> None:
        templates = ["/".join([*ls, "#"] if multi else ls) for ls, multi in shapes]
        filled = TopicMatcher((t.replace("{id}", ident), f"r{i}") for i, t in enumerate(templates))
        shared = TopicMatcher((t.replace("{id}", ID), f"r{i}") for i, t in enumerate(templates))
        topic = "/".join(levels)
        assert IdentityMatcher(shared, ident).match(topic) == filled.match(topic)
        assert IdentityMatcher(shared, ident).filters == filled.filters

    def test_a_topic_holding_the_placeholder_never_matches(self) -> None:
        shared = TopicMatcher([(f"fleet/{ID}/cmd/#", "own"), ("#", "all")])
        assert IdentityMatcher(shared, "TRK-1").match("fleet/TRK-1/cmd/x") == "own"
        assert IdentityMatcher(shared, "TRK-1").match(f"fleet/{ID}/cmd/x") is None
        assert IdentityMatcher(shared, "TRK-1").match(f"TRK-1/{ID}") is None

    def test_units_share_one_compiled_matcher(self) -> None:
        cache = GrantCache(POLICY)
        one = cache.get(TRK1, None, False)
        two = cache.get(Identity("unit", "TRK-2", TD), None, False)
        assert one.publish._shared is two.publish._shared  # one trie for the fleet, not one per unit
        gps = "fleet/{}/telemetry/gps".format
        assert one.may_publish(gps("TRK-1")) and not one.may_publish(gps("TRK-2"))
        assert two.may_publish(gps("TRK-2")) and not two.may_publish(gps("TRK-1"))


class TestUnitGrants:
    @pytest.mark.parametrize(
        ("topic", "rule"),
        [
            ("fleet/TRK-1/telemetry/gps", "unit/publish/0"),
            ("fleet/TRK-1/telemetry", "unit/publish/0"),  # '#' also matches its parent
            ("fleet/TRK-1/diag/can/errors", "unit/publish/1"),
            ("fleet/TRK-1/state", "unit/publish/2"),
            ("fleet/TRK-1/cmd/reboot/ack", "unit/publish/3"),
            ("fleet/TRK-1/control/brake/ack", "unit/publish/4"),
            ("fleet/TRK-2/telemetry/gps", None),
            ("fleet/TRK-1/cmd/reboot", None),
            ("fleet/TRK-1/control/brake", None),
            ("fleet/{id}/state", None),  # the template itself is not a grant
        ],
    )
    def test_may_publish(self, topic: str, rule: str | None) -> None:
        assert unit_grants().may_publish(topic) == rule

    @pytest.mark.parametrize(
        ("topic", "rule"),
        [
            ("fleet/TRK-1/diag/can", "quarantine/unit/publish/0"),
            ("fleet/TRK-1/cmd/mode/ack", "quarantine/unit/publish/1"),
            ("fleet/TRK-1/control/brake/ack", "unit/publish/4"),  # control: the normal grant decides
            ("fleet/TRK-1/telemetry/gps", None),
            ("fleet/TRK-1/state", None),
        ],
    )
    def test_quarantine_narrows_publishes_outside_control(self, topic: str, rule: str | None) -> None:
        assert unit_grants(quarantined=True).may_publish(topic) == rule

    @pytest.mark.parametrize(
        ("requested", "rule"),
        [
            ("fleet/TRK-1/cmd/#", "unit/subscribe/0"),
            ("fleet/TRK-1/cmd/+", "unit/subscribe/0"),
            ("fleet/TRK-1/control/#", "unit/subscribe/1"),
            ("$share/g/fleet/TRK-1/cmd/#", "unit/subscribe/0"),
            ("fleet/TRK-1/#", None),
            ("fleet/+/cmd/#", None),
            ("fleet/+/telemetry/#", None),
            ("#", None),
            ("$SYS/#", None),
            ("$share/g/#", None),
            ("fleet/TRK-1/cmd/#/x", None),  # invalid: never granted
        ],
    )
    def test_may_subscribe_only_what_a_grant_covers(self, requested: str, rule: str | None) -> None:
        assert unit_grants().may_subscribe(requested) == rule

    def test_quarantined_unit_still_receives_cmd_and_control(self) -> None:
        grants = unit_grants(quarantined=True)
        assert grants.may_receive("fleet/TRK-1/cmd/mode") == "unit/subscribe/0"
        assert grants.may_receive("fleet/TRK-1/control/brake") == "unit/subscribe/1"
        assert grants.may_receive("fleet/TRK-2/control/brake") is None

    def test_partner_placeholders_and_tier_profile(self) -> None:
        acme = Identity("partner", "ACME", TD)
        tier2 = CompiledGrants.for_identity(POLICY, acme, 2, False)
        assert tier2.profile.name == "partner/tier2"
        assert tier2.may_receive("views/2/fleet/u-9/eta") == "partner/tier2/subscribe/0"  # {tier} filled
        assert tier2.may_receive("views/1/fleet/TRK-9/eta") is None
        assert tier2.may_receive("fleet/TRK-9/telemetry/eta") is None  # never raw unit topics
        assert tier2.may_subscribe("fleet/+/telemetry/#") is None

    def test_an_id_that_would_widen_a_filter_is_refused(self) -> None:
        with pytest.raises(IdentityError):
            CompiledGrants.for_identity(POLICY, Identity("unit", "+", TD), None, False)


class TestGrantCache:
    def test_compiles_once_per_key_and_starts_afresh_on_reload(self) -> None:
        cache = GrantCache(POLICY)
        first = cache.get(TRK1, None, False)
        assert cache.get(TRK1, None, False) is first
        assert cache.get(TRK1, None, True) is not first
        assert len(cache) == 2
        cache.invalidate(TRK1)
        assert len(cache) == 0
        again = cache.get(TRK1, None, False)
        cache.reload(POLICY)
        assert cache.generation == 1
        assert cache.get(TRK1, None, False) is not again
