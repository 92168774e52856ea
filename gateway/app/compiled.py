"""The per-message path, compiled with mypyc (`scripts/compile`), and the guard that runs it from its
sources whenever the compiled build does not match them.

`scripts/compile` builds the modules named in MODULES in place: beside each `x.py` an extension
`x.cpython-…so`, which Python imports instead of the source, all of them sharing one library
(`gateway/native__mypyc.cpython-…so`), and writes MANIFEST: a digest of each module's source as
built. Measured: 39 to 44 % fewer instructions per message in `scripts/bench_fanin.py --callgrind`, a
quarter less CPU per message at fan-in 10k end to end (docs/benchmarks.md, "Sixth round").

At `import gateway` (gateway/__init__.py), `choose()` compares the sources with MANIFEST. If one
differs (an edit since the build, a checkout of another commit), or FLEETGATE_PURE_PYTHON=1 is set,
every module in MODULES is imported from its source instead — all of them, because compiled modules
call each other's compiled code directly. `fleetgate serve` says which at start ("per-message path:
compiled", or from its sources and why); `scripts/test` and `scripts/bench` build again first when
the build is stale. Without a MANIFEST (never compiled, or `scripts/compile --clean`) the sources are
all there is.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]  # the checkout: gateway/, pki/, …
MANIFEST = Path(__file__).with_name("compiled.manifest")
GROUP = "gateway.native"  # the shared library: gateway/native__mypyc.cpython-…so

# What every PUBLISH runs through (found with a sys.setprofile tally over scripts/bench_fanin.py).
# A module here must keep to what mypyc compiles alike: no class deriving from a built-in exception,
# no method named in its own class body, no test subclassing its classes or patching their methods.
MODULES = (
    "gateway.mqtt.codec",
    "gateway.mqtt.errors",
    "gateway.mqtt.packets",
    "gateway.mqtt.properties",
    "gateway.mqtt.reason_codes",
    "gateway.mqtt.session",
    "gateway.mqtt.topics",
    "gateway.mqtt.wire",
    "gateway.broker.actions",
    "gateway.broker.core",
    "gateway.broker.inbound",
    "gateway.broker.outbound",
    "gateway.broker.routing",
    "gateway.broker.state",
    "gateway.broker.histogram",
    "gateway.broker.message",
    "gateway.policy.decision",
    "gateway.policy.engine",
    "gateway.policy.peer",
    "gateway.policy.rate",
    "gateway.policy.detectors",
    "gateway.detection.continuous",
    "gateway.context.partner_views",
    "gateway.context.posture_watch",
    "gateway.context.flow_feed",
    "gateway.context.unit_watch",
    "gateway.app.observers",
    "gateway.edge.hub",
    "gateway.edge.tls",
    "gateway.edge.transport",
)

state = "sources"  # "compiled", "sources" (never built, or asked for) or "stale" (built from other sources)


def source_of(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def digests(modules: Sequence[str] = MODULES) -> dict[str, str]:
    return {m: hashlib.blake2b(source_of(m).read_bytes(), digest_size=16).hexdigest() for m in modules}


def read_manifest() -> dict[str, str] | None:
    try:
        lines = MANIFEST.read_text().split()
    except OSError:
        return None
    return dict(zip(lines[::2], lines[1::2], strict=False))


class _FromSources(importlib.abc.MetaPathFinder):
    """Imports the modules in MODULES from their `.py` files, whatever is built beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_of(fullname))


def choose() -> str:
    """Decide, once per process and before any module in MODULES is imported, which code runs."""
    global state
    if any(isinstance(f, _FromSources) for f in sys.meta_path):
        return state
    built = read_manifest()
    if built is None:
        state = "sources"
        return state
    if os.environ.get("FLEETGATE_PURE_PYTHON") == "1":
        state = "sources"
    elif built == digests():
        state = "compiled"
        return state
    else:
        state = "stale"
    sys.meta_path.insert(0, _FromSources())
    return state


def described() -> str:
    """For the start-up log: which code runs the per-message path, and what to do about it."""
    if state == "compiled":
        return f"compiled ({len(MODULES)} modules, mypyc)"
    if state == "stale":
        return "from its sources: the compiled build is older than them (run scripts/compile)"
    if read_manifest() is not None:
        return "from its sources (FLEETGATE_PURE_PYTHON=1)"
    return "from its sources (scripts/compile builds it: about a quarter less CPU per message)"
