"""Configuration files: the defaults are complete, and every mistake names file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import (
    ConfigError,
    GatewayConfig,
    config_from_mapping,
    embedded_defaults_text,
    load_config,
)
from tests.harness import INSECURE_KEYS, run_cli


def test_shipped_defaults_equal_the_built_in_defaults() -> None:
    from_file = config_from_mapping(yaml.safe_load(embedded_defaults_text()), source="defaults")
    assert from_file == GatewayConfig(source="defaults")
    repo_copy = Path(__file__).parents[2] / "configs" / "gateway.yaml"
    assert repo_copy.read_text() == embedded_defaults_text()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("listen: [1, 2", "invalid YAML at line"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("lisen:\n  mqtt: 0.0.0.0:1\n", "unknown key 'lisen'"),
        ("limits:\n  max_packet_sise: 10\n", "unknown key limits.max_packet_sise"),
        ("limits:\n  max_packet_size: lots\n", "limits.max_packet_size must be a whole number"),
        ("limits:\n  max_packet_size: -5\n", "limits.max_packet_size must be a whole number"),
        ("listen:\n  mqtt: nonsense\n", "listen.mqtt"),
        ("listen:\n  mqtt: 0.0.0.0:99999\n", "port"),
        ("listen:\n  insecure_plaintext: 0.0.0.0:1883\n", "must be a loopback address"),
        ("tls:\n  min_version: '1.0'\n", "tls.min_version"),
        ("storage:\n  synchronous: OFF\n", "storage.synchronous"),
        ("certificates:\n  self_renewal:\n    operator: forever\n", "self_renewal.operator must be"),
        ("certificates:\n  self_renewal:\n    unit: refuse\n", "units always renew"),
        ("certificates:\n  self_renewal:\n    robot: refuse\n", "unknown key certificates.self_renewal.rob"),
        ("certificates:\n  self_renewal: refuse\n", "certificates.self_renewal must be a mapping"),
        ("limits:\n  max_queued_messages: 500\n", "limits.queue_high_water (1000) is above"),
        ("limits:\n  queue_high_water_bytes: 0\n", "limits.queue_high_water_bytes must be at least 1"),
        ("limits:\n  subscriber_stall_timeout: 0\n", "subscriber_stall_timeout must be above 0"),
        (
            "listen:\n  proxy_protocol_from: 10.0.0.5 lb-1\n",
            "proxy_protocol_from: 'lb-1' is not an IP address",
        ),
        ("listen:\n  proxy_protocol_from: 0.0.0.0/0\n", "would let every client name any source address"),
        ("listen:\n  proxy_protocol_from: [10.0.0.5]\n", "listen.proxy_protocol_from must be a string"),
    ],
)
def test_broken_config_files_name_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, words: str
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert words in message


def test_a_partial_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("listen:\n  mqtt: 127.0.0.1:18883\nlimits:\n  max_subscriptions: 7\n")
    config = load_config(path)
    assert (config.listen.mqtt.host, config.listen.mqtt.port) == ("127.0.0.1", 18883)
    assert config.listen.https.port == 8443
    assert config.limits.max_subscriptions == 7
    assert config.limits.receive_maximum == GatewayConfig().limits.receive_maximum


def test_serve_with_a_broken_config_exits_with_one_sentence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("limits:\n  max_packet_size: lots\n")
    result = run_cli("serve", "--config", str(bad), data=data, timeout=30)
    assert result.code == 1
    assert result.stderr.startswith("error: ")
    assert "limits.max_packet_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_balancer_address_in_the_environment_exits_with_one_sentence(tmp_path: Path) -> None:
    env = {"FLEETGATE_LISTEN_PROXY_PROTOCOL_FROM": "10.0.0.5 10.0.0.300/29"}
    result = run_cli("serve", data=tmp_path / "data", env=env, timeout=30)
    other = run_cli("serve", data=tmp_path / "data", env={"FLEETGATE_TLS_MIN_VERSION": "1.1"}, timeout=30)
    assert result.code == other.code == 1  # as every other configuration error
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "listen.proxy_protocol_from: '10.0.0.300/29' is not an IP address or network" in result.stderr
    assert "Traceback" not in result.stderr


def test_balancers_are_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("listen:\n  proxy_protocol_from: 10.0.0.5 2001:db8::/64\n")
    assert load_config(path, env={}).listen.proxy_protocol_from == "10.0.0.5 2001:db8::/64"
    env = {"FLEETGATE_LISTEN_PROXY_PROTOCOL_FROM": "192.0.2.8/29"}
    assert load_config(path, env=env).listen.proxy_protocol_from == "192.0.2.8/29"
    assert load_config(None, env={}).listen.proxy_protocol_from == ""  # off by default


def test_serve_refuses_a_public_plaintext_listener(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    result = run_cli("serve", "--insecure-plaintext-listen", "0.0.0.0:1883", data=data, timeout=30)
    assert result.code == 1
    assert "loopback" in result.stderr


def test_exempt_sources_and_admission_caps_are_checked() -> None:
    with pytest.raises(ConfigError, match="connection_rate_exempt: 'localhost' is not an IP address"):
        config_from_mapping({"limits": {"connection_rate_exempt": "127.0.0.1 localhost"}}, source="t")
    assert config_from_mapping({"limits": {"connection_rate_exempt": "10.8.0.0/16 ::1"}}, source="t")
    with pytest.raises(ConfigError, match="https_request_timeout must be greater than 0"):
        config_from_mapping({"limits": {"https_request_timeout": 0}}, source="t")
