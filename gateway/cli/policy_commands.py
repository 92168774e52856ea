"""`fleetgate policy check|explain`: judge a policy file before a gateway ever loads it.

Neither command needs a data directory or a running gateway: they read a policy file (default: the
embedded one) and run the same validation, proofs and engine the gateway runs.

Exit status: 0 valid / allowed; 1 the policy (or an argument) is wrong, with the reason in one
sentence; 2 usage error (click); 5 `explain` says the action would be denied — so scripts can assert
on a decision without parsing output (3 is the admin API's refusal everywhere else).
"""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import EXIT_DENIED as EXIT_POLICY_DENIES
from gateway.cli.common import CliError, emit_json, json_option
from gateway.mqtt.errors import TopicNameInvalid
from gateway.policy.explain import explain, render_explanation, render_summary, summarize
from gateway.policy.rules import OPERATOR_ROLES, Policy
from gateway.policy.schema import PolicyError
from gateway.stores.policy_file import load_policy
from pki.names import CLIENT_KINDS, IdentityError, make_identity

__all__ = ["EXIT_DENIED", "policy"]

EXIT_DENIED = EXIT_POLICY_DENIES
_EXPLAIN_TRUST_DOMAIN = "fleet.local"  # grants do not depend on the trust domain


def _load(path: Path | None, as_json: bool) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        if as_json:
            emit_json({"valid": False, "error": str(exc), "path": exc.path})
            raise SystemExit(1) from None
        raise CliError(str(exc)) from None


@click.group("policy")
def policy() -> None:
    """Check the access policy (policy.yaml) and explain its decisions."""


@policy.command("check", short_help="Validate a policy file and prove quarantine never touches control.")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@json_option
def check(file: Path | None, as_json: bool) -> None:
    """Validate FILE (default: the embedded policy) and prove quarantine never touches control.

    Exit status 0 when the gateway would accept it, 1 with the reason when it would not.
    """
    summary = summarize(_load(file, as_json))
    if as_json:
        emit_json(summary.as_json())
    else:
        click.echo(render_summary(summary))


@policy.command("explain", short_help="Show the decision and rule for one publish or subscribe.")
@click.option("--id", "ident", required=True, help="The identity's id, e.g. TRK-00042 or dispatch.")
@click.option(
    "--kind",
    type=click.Choice(CLIENT_KINDS),
    default="unit",
    show_default=True,
    help="The identity's kind.",
)
@click.option("--tier", type=click.IntRange(min=1), default=None, help="A partner's tier.")
@click.option(
    "--role",
    type=click.Choice(OPERATOR_ROLES),
    default=None,
    help="An operator's admin role (default for operators: ops).",
)
@click.option("--quarantined", is_flag=True, help="Judge as if the identity were quarantined.")
@click.option("--publish", "topic", default=None, metavar="TOPIC", help="Ask about publishing TOPIC.")
@click.option(
    "--subscribe", "topic_filter", default=None, metavar="FILTER", help="Ask about subscribing to FILTER."
)
@click.option("--payload-size", type=click.IntRange(min=0), default=0, help="Bytes, for --publish.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Policy file to judge by (default: the embedded policy).",
)
@json_option
def explain_command(
    ident: str,
    kind: str,
    tier: int | None,
    role: str | None,
    quarantined: bool,
    topic: str | None,
    topic_filter: str | None,
    payload_size: int,
    policy_file: Path | None,
    as_json: bool,
) -> None:
    """Show what the policy decides for one publish or subscribe, and which rule decides it.

    Exit status 0 if allowed, 5 if denied, 1 if the policy or the topic is invalid.
    """
    if (topic is None) == (topic_filter is None):
        raise click.UsageError("give exactly one of --publish TOPIC or --subscribe FILTER")
    loaded = _load(policy_file, as_json)
    try:
        identity = make_identity(kind, ident, _EXPLAIN_TRUST_DOMAIN)
        result = explain(
            loaded,
            identity,
            tier=tier,
            role=role or ("ops" if kind == "operator" else None),
            quarantined=quarantined,
            publish=topic,
            subscribe=topic_filter,
            payload_size=payload_size,
        )
    except (IdentityError, TopicNameInvalid) as exc:
        raise CliError(str(exc)) from None
    if as_json:
        emit_json(result.as_json())
    else:
        click.echo(render_explanation(result))
    if not result.decision.allowed:
        raise SystemExit(EXIT_DENIED)
