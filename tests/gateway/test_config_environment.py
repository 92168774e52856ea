"""Every setting from the environment: FLEETGATE_<SECTION>_<KEY> over the file over the defaults, a
typo refused in one sentence, and the documented table complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, Endpoint, environment_names, load_config
from tests.harness import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_variables_override_the_file_which_overrides_the_defaults(tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text("limits:\n  max_packet_size: 4096\n  max_inflight: 7\n", encoding="utf-8")
    config = load_config(
        config_file,
        env={
            "FLEETGATE_LIMITS_MAX_PACKET_SIZE": "65536",
            "FLEETGATE_STORAGE_SYNCHRONOUS": "FULL",
            "FLEETGATE_LISTEN_MQTT": "127.0.0.1:18883",
            "FLEETGATE_TLS_CLOCK_SKEW_TOLERANCE": "30",
            "FLEETGATE_CERTIFICATES_SELF_RENEWAL_PARTNER": "bounded",
            "FLEETGATE_DATA": "/elsewhere",  # not a gateway.yaml setting: left to the CLI
        },
    )
    assert config.limits.max_packet_size == 65536  # the variable beats the file
    assert config.limits.max_inflight == 7  # the file beats the default
    assert config.storage.synchronous == "FULL"
    assert config.listen.mqtt == Endpoint("127.0.0.1", 18883)
    assert config.tls.clock_skew_tolerance == 30.0
    assert config.certificates.self_renewal.partner == "bounded"
    assert load_config(None, env={}) == load_config(None, env={"HOME": "/root"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"FLEETGATE_LIMITS_MAX_PAKET_SIZE": "1"},
            "environment FLEETGATE_LIMITS_MAX_PAKET_SIZE names no setting; "
            "see the table of settings in docs/operations.md",
        ),
        (
            {"FLEETGATE_LIMITS_MAX_INFLIGHT": "many"},
            "environment FLEETGATE_LIMITS_MAX_INFLIGHT must be a whole number",
        ),
        ({"FLEETGATE_STORAGE_SYNCHRONOUS": "SOMETIMES"}, "storage.synchronous must be NORMAL or FULL"),
    ],
)
def test_a_bad_variable_is_one_sentence(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, env=env)
    assert message in str(refused.value)


def test_serve_refuses_a_misspelt_variable_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli("serve", data=tmp_path, env={"FLEETGATE_LIMITS_MAX_PAKET_SIZE": "1"})
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [
        "error: environment FLEETGATE_LIMITS_MAX_PAKET_SIZE names no setting; "
        "see the table of settings in docs/operations.md"
    ]


def test_the_operations_page_lists_every_variable() -> None:
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [name for name in environment_names() if f"`{name}`" not in page]
    assert len(environment_names()) > 30 and missing == []
