"""Identity names: ids and trust domains are matched whole, so a trailing newline is never part of one."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
import threading

import pytest

from pki.names import (
    Identity,
    IdentityError,
    make_identity,
    parse_spiffe_uri,
    validate_id,
    validate_trust_domain,
)


@pytest.mark.parametrize("ident", ["TRK-9\n", "TRK-9\r\n", "\nTRK-9", "TRK-9 ", "TRK\n-9"])
def test_an_id_with_a_newline_or_space_is_refused(ident: str) -> None:
    with pytest.raises(IdentityError) as caught:
        validate_id("unit", ident)
    assert caught.value.reason == "invalid_id"


@pytest.mark.parametrize("domain", ["fleet.local\n", "fleet.local\r\n", "\nfleet.local"])
def test_a_trust_domain_with_a_newline_is_refused(domain: str) -> None:
    with pytest.raises(IdentityError) as caught:
        validate_trust_domain(domain)
    assert caught.value.reason == "invalid_trust_domain"


def test_a_spiffe_uri_whose_id_ends_in_a_newline_is_refused() -> None:
    with pytest.raises(IdentityError):
        parse_spiffe_uri("spiffe://fleet.local/unit/TRK-9\n", "fleet.local")


def test_ordinary_names_still_pass() -> None:
    identity = make_identity("unit", "TRK-00042", "fleet.local")
    assert identity.spiffe_uri == "spiffe://fleet.local/unit/TRK-00042"
    validate_id("partner", "acme_logistics.eu-1")
    validate_trust_domain("acme-fleet.example")


def test_an_identity_pickled_in_another_process_finds_its_entries_here() -> None:
    # An identity hashes as its object; a pickle must not carry a hash across processes, and comes
    # back as this process's one object for it.
    script = (
        "import pickle, sys; from pki.names import Identity; "
        "sys.stdout.buffer.write(pickle.dumps(Identity('unit', 'TRK-1', 'fleet.local')))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    data = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout
    here = Identity("unit", "TRK-1", "fleet.local")
    assert {here: "found"}.get(pickle.loads(data)) == "found"
    assert copy.copy(here) == here and hash(copy.deepcopy(here)) == hash(here)


def test_equal_identities_are_one_object_however_and_wherever_they_are_made() -> None:
    # Identities hash by object (pki/names.py): two equal ones that were not the same object would be
    # two keys of the engine's maps, and a revocation found under one would miss the other.
    made: list[Identity] = []

    def make() -> None:
        made.extend(Identity("unit", "TRK-77", "fleet.local") for _ in range(200))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    one = Identity(kind="unit", id="TRK-77", trust_domain="fleet.local")
    assert all(identity is one for identity in made)
    assert copy.copy(one) is one and copy.deepcopy(one) is one and pickle.loads(pickle.dumps(one)) is one
    assert dataclasses.replace(one, id="TRK-78") is Identity("unit", "TRK-78", "fleet.local")
    other = Identity("service", "TRK-77", "fleet.local")
    assert other is not one and other != one
    assert len({one, other, Identity("unit", "TRK-77", "fleet.local")}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.id = "TRK-78"  # type: ignore[misc]
