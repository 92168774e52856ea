"""Reading a policy file: the embedded default or a path, YAML parsed, then built by gateway/policy/rules.py.

Each way reading can fail is one `PolicyError` sentence naming the file: it cannot be read (with the
OS's reason), it is not UTF-8, or it is not valid YAML (with the line). Everything after parsing (shape,
proofs, lint) is `policy_from_mapping`, so a file and an already parsed mapping are judged alike.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from gateway.policy.rules import Policy, policy_from_mapping
from gateway.policy.schema import PolicyError

__all__ = ["EMBEDDED_SOURCE", "load_policy"]

EMBEDDED_SOURCE = "gateway/defaults/policy.yaml (embedded)"  # Policy.source of the embedded default


def load_policy(path: Path | None = None) -> Policy:
    """Read, validate and prove a policy file; None means the embedded default."""
    if path is None:
        source = EMBEDDED_SOURCE
        text = resources.files("gateway").joinpath("defaults/policy.yaml").read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(source, "", f"cannot be read ({exc.strerror or exc}); check the path") from None
        except UnicodeDecodeError:
            raise PolicyError(source, "", "is not UTF-8 text; save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(source, "", f"is not valid YAML{where}; fix the syntax") from None
    return policy_from_mapping(data, source)
