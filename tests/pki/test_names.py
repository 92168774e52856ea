"""Identity names: ids and trust domains are matched whole, so a trailing newline is never part of one."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

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
    # Identities cache their hash; a pickle must not carry it across processes that hash differently.
    script = (
        "import pickle, sys; from pki.names import Identity; "
        "sys.stdout.buffer.write(pickle.dumps(Identity('unit', 'TRK-1', 'fleet.local')))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    data = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout
    here = Identity("unit", "TRK-1", "fleet.local")
    assert {here: "found"}.get(pickle.loads(data)) == "found"
    assert copy.copy(here) == here and hash(copy.deepcopy(here)) == hash(here)
