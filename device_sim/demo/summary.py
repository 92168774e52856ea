"""The demo's closing table: what happened, in rows a person reads in thirty seconds."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def summary_table(s: dict[str, Any]) -> Table:
    """Step 8: the story in one table, readable in thirty seconds."""
    attack = s.get("attack", {})
    contain = s.get("containment", {})
    during = s.get("during_containment", {})
    table = Table(title="8. what happened", title_justify="left", show_header=False, show_lines=True)
    table.add_column(style="bold")
    table.add_column()
    mix = s.get("protocols", {})
    table.add_row("units enrolled over EST", f"{s.get('enrolled', 0)} in {s.get('enroll_seconds', 0):.1f} s")
    table.add_row(
        "connected over mTLS",
        f"{s.get('connected', 0)} ({mix.get('3.1.1', 0)} MQTT 3.1.1, {mix.get('5.0', 0)} MQTT 5.0)",
    )
    table.add_row("telemetry delivered to dispatch", f"{s.get('telemetry_delivered', 0):,} messages")
    table.add_row(
        "control messages (dispatch → unit → ack)",
        f"{s.get('controls_acked', 0)} of {s.get('controls_sent', 0)} acknowledged"
        + (
            f", median round trip {s['control_rtt_ms']:.0f} ms" if s.get("control_rtt_ms") is not None else ""
        ),
    )
    if attack and "error" not in attack:
        table.add_row(
            f"{attack['unit']} probes other units' topics",
            f"{attack['subscriptions_refused']} of {len(attack['subscriptions'])} subscriptions refused "
            f"({', '.join(sorted(set(attack['subscriptions'].values())))}); "
            f"{attack['forged_reached_victim']} forged messages reached {attack['victim']}",
        )
        reasons = ", ".join(f"{n:,} with {r}" for r, n in attack["refused_reasons"].items()) or "none"
        table.add_row(
            f"{attack['unit']} floods",
            f"{attack['flood_sent']:,} sent in {attack['flood_seconds']:.1f} s, "
            f"{attack['flood_delivered']:,} delivered; refused: {reasons}",
        )
        table.add_row(
            "its sessions cut by the gateway",
            f"{attack['cuts']}, the first {attack['cut_after_ms']:.0f} ms into the attack "
            f"({attack['cut_reason']})"
            if attack.get("cut_after_ms") is not None
            else "none",
        )
        first = attack.get("first_refusal_ms")
        table.add_row("time to first refusal", f"{first:.0f} ms" if first is not None else "never")
    table.add_row("time to contain (quarantine)", _contained_text(contain))
    if during:
        table.add_row(
            "control during containment",
            f"{during['controls_acked']} of {during['controls_sent']} delivered and acknowledged"
            + (
                f", median {during['control_rtt_ms']:.0f} ms"
                if during.get("control_rtt_ms") is not None
                else ""
            ),
        )
        table.add_row(
            "its data during containment",
            f"telemetry delivered: {during['telemetry_delivered']}, diagnostics delivered: "
            f"{during['diagnostics_delivered']} (unit mode: {during['unit_mode']})",
        )
    release = s.get("release")
    if release:
        table.add_row(
            "after `fleetgate unit release`",
            release.get("error")
            or f"mode {release['mode']}, {release['telemetry_after_release']} telemetry messages in 3 s",
        )
    table.add_row("its certificate used as another unit", str(s.get("spoof", "-")))
    return table


def _contained_text(contain: dict[str, Any]) -> str:
    ttc, lag = contain.get("time_to_contain_ms"), contain.get("command_to_unit_ms")
    if ttc is None:
        return f"not contained: {contain.get('note')}"
    text = f"{ttc / 1000:.1f} s after the attack began, via {contain.get('method')}"
    if lag is not None:
        text += f"; the unit was in diagnostic-only mode {lag:.0f} ms after the command"
    return text
