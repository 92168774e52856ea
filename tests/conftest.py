"""Shared fixtures: a live gateway subprocess per test module that asks for one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import GatewayProcess
from tests.pg import pg_cluster, pg_url  # noqa: F401  (shared PostgreSQL fixtures)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A running gateway on fresh state, shared by the tests of one module."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gw"))
    gw.init()
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def fresh_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway of its own, for tests that restart or break it."""
    gw = GatewayProcess(tmp_path)
    gw.init()
    gw.start()
    yield gw
    gw.stop()
