"""The compiled per-message path (gateway/app/compiled.py, scripts/compile): what runs is either the build
made from these very sources or the sources themselves, never a build of other sources."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from gateway.app import compiled


def _run(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k != "FLEETGATE_PURE_PYTHON"}, **env},
        check=True,
    )
    return done.stdout.strip()


def test_every_listed_module_is_a_module_of_this_tree() -> None:
    assert len(set(compiled.MODULES)) == len(compiled.MODULES)
    for module in compiled.MODULES:
        assert compiled.source_of(module).is_file(), module


def test_ci_runs_the_tests_against_the_build_of_these_sources() -> None:
    # .ci/run sets FLEETGATE_REQUIRE_COMPILED=1 (scripts/test then builds, or fails)
    if os.environ.get("FLEETGATE_REQUIRE_COMPILED") != "1":
        pytest.skip("FLEETGATE_REQUIRE_COMPILED=1 is CI's (.ci/run)")
    assert compiled.state == "compiled"
    assert _run("import gateway.broker.core as m; print(m.__file__)").endswith(".so")


def test_fleetgate_pure_python_runs_every_module_from_its_source() -> None:
    out = _run(
        "import gateway.app.compiled as c, gateway.broker.core as core, gateway.mqtt.codec as codec;"
        "print(c.state, core.__file__.endswith('.py'), codec._COMPILED)",
        FLEETGATE_PURE_PYTHON="1",
    )
    assert out == "sources True False"


def test_both_ways_of_running_decode_a_publish_alike() -> None:
    # codec._dec_publish has a path for each (a native Publish refuses object.__new__)
    code = (
        "from gateway.mqtt.codec import PacketReader, encode_publish\n"
        "from gateway.mqtt.packets import Publish, ProtocolVersion, Properties\n"
        "props = Properties(content_type='t')\n"
        "sent = Publish('fleet/TRK-1/telemetry/gps', b'fix', 1, True, False, 7, props)\n"
        "reader = PacketReader(version=ProtocolVersion.MQTT_5)\n"
        "reader.feed(encode_publish(sent, ProtocolVersion.MQTT_5))\n"
        "got = reader.next_packet()\n"
        "print(got == sent, repr(got))"
    )
    interpreted = _run(code, FLEETGATE_PURE_PYTHON="1")
    assert interpreted.startswith("True ") and _run(code) == interpreted


def test_a_build_of_other_sources_is_not_used() -> None:
    # as after an edit since scripts/compile: one module's digest differs from the manifest's
    out = _run(
        "import sys, gateway.app.compiled as c\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, c._FromSources)]\n"
        "built = c.digests(); built['gateway.mqtt.wire'] = '0' * 32\n"
        "c.read_manifest = lambda: built\n"
        "print(c.choose())\n"
        "import gateway.mqtt.codec as codec, gateway.mqtt.wire as wire\n"
        "print(codec.__file__.endswith('.py'), wire.__file__.endswith('.py'), codec._COMPILED)\n"
        "print(c.described())"
    )
    state, files, said = out.splitlines()
    assert state == "stale" and files == "True True False"
    assert "run scripts/compile" in said


def test_no_compiled_function_names_two_exception_types_alike() -> None:
    # `except A as exc: ... except B as exc:` in one function: compiled, `exc` takes A's type and
    # catching a B raises TypeError (every MQTT error once closed its connection as internal_error).
    # mypyc builds it without a word, so it is looked for here.
    wrong = []
    for module in compiled.MODULES:
        tree = ast.parse(compiled.source_of(module).read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            caught: dict[str, set[str]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                    caught.setdefault(node.name, set()).add(ast.unparse(node.type))
            wrong += [f"{module}.{function.name}: {name}" for name, types in caught.items() if len(types) > 1]
    assert wrong == []
