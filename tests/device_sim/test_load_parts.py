"""The load generator's pieces without a broker: frames, the inbound fast path, stats, chart, ACL."""

from __future__ import annotations

import asyncio
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from benchmarks.mosquitto import acl_from_policy, load_policy
from device_sim.load.chart import Panel, Series, build_chart
from device_sim.load.client import LatencySink, LeanClient, PublishTemplate
from device_sim.load.procstat import cpu_percent, sample
from device_sim.load.report import LoadReport, interval_series, percentiles
from gateway.mqtt.codec import PacketReader, encode
from gateway.mqtt.packets import Properties, ProtocolVersion, Puback, Publish

V311, V5 = ProtocolVersion.MQTT_3_1_1, ProtocolVersion.MQTT_5


# --- publish templates --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("size", [8, 100, 300])
def test_template_frames_decode_to_the_publish_they_stand_for(
    version: ProtocolVersion, qos: int, size: int
) -> None:
    template = PublishTemplate("fleet/TRK-00001/telemetry/gps", size, qos, version)
    frame = template.frame(4242 if qos else 0, 123_456_789)
    reader = PacketReader(version=version)
    reader.feed(frame)
    packet = reader.next_packet()
    assert isinstance(packet, Publish)
    assert packet.topic == "fleet/TRK-00001/telemetry/gps"
    assert packet.qos == qos
    assert packet.packet_id == (4242 if qos else None)
    assert len(packet.payload) == size
    assert int.from_bytes(packet.payload[:8], "big") == 123_456_789
    assert reader.buffered == 0


def test_a_burst_is_that_many_copies_with_one_timestamp() -> None:
    template = PublishTemplate("fleet/TRK-00001/control/x", 100, 0, V5)
    reader = PacketReader(version=V5)
    reader.feed(template.burst(5, 77))
    packets = [reader.next_packet() for _ in range(5)]
    assert all(isinstance(p, Publish) and int.from_bytes(p.payload[:8], "big") == 77 for p in packets)
    assert reader.next_packet() is None


# --- the inbound fast path ----------------------------------------------------------------------


class _Transport:
    """Enough of asyncio.Transport for LeanClient: collects what it writes."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _client(version: ProtocolVersion, sink: LatencySink | None) -> tuple[LeanClient, _Transport]:
    client = LeanClient("analytics", version, sink=sink)
    transport = _Transport()
    client.transport = transport  # type: ignore[assignment]
    return client, transport


async def test_inbound_publishes_are_counted_timed_and_acked_across_split_reads() -> None:
    sink = LatencySink()
    client, transport = _client(V5, sink)
    stamp = 1_000
    frames = b"".join(
        encode(Publish("fleet/a/telemetry/gps", stamp.to_bytes(8, "big") + bytes(50), qos, packet_id=pid), V5)
        for qos, pid in ((0, None), (1, 7), (0, None))
    )
    # With properties (5.0): the timestamp is found after them.
    frames += encode(
        Publish("t", stamp.to_bytes(8, "big"), 0, properties=Properties(content_type="x" * 200)), V5
    )
    for i in range(0, len(frames), 13):  # arbitrary read boundaries, frames split mid-header and mid-body
        client.data_received(frames[i : i + 13])
    assert sink.count == 4
    assert all(latency > 0 for latency in sink.latencies)
    assert b"".join(transport.written) == encode(Puback(7), V5)


async def test_pubacks_release_the_window_and_refusals_are_counted() -> None:
    client, _ = _client(V5, None)
    client.inflight = 3
    client.data_received(encode(Puback(1), V5) + encode(Puback(2, 0x87), V5))
    assert (client.inflight, client.acked, client.refused) == (1, 2, 1)


async def test_control_packets_go_through_the_client_core() -> None:
    client, _ = _client(V311, None)
    client.data_received(b"\x20\x02\x00\x00")  # CONNACK accepted
    connack = await asyncio.wait_for(client.connack, 1)
    assert connack.reason_code == 0 and client.connected


# --- statistics ---------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    stats = percentiles(list(range(1, 101)))
    assert stats == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {}
    assert percentiles([5.0]) == {"p50": 5.0, "p95": 5.0, "p99": 5.0, "max": 5.0}


def test_interval_series_turns_marks_into_rates() -> None:
    latencies = [1_000_000] * 300  # 1 ms each
    marks = [(0, 0), (1_000_000_000, 100), (2_000_000_000, 300)]
    series = interval_series(latencies, marks, start_ns=0)
    assert [(s.t, s.delivered_per_s) for s in series] == [(1.0, 100.0), (2.0, 200.0)]
    assert series[0].p99_ms == 1.0


def _report(**overrides: Any) -> LoadReport:
    values: dict[str, Any] = dict(
        broker="fleetgate", units_requested=10, units_connected=10, connect_seconds=0.5,
        connack_ms={"p50": 1.0, "p99": 2.0}, connect_failures={}, duration_s=2.0, qos=0, payload_size=100,
        protocol="5.0", offered=200, sent=200, delivered=198, latency_ms={"p50": 1.0, "p99": 3.0},
        drops={"lost_in_broker": 2},
    )  # fmt: skip
    values.update(overrides)
    return LoadReport(**values)


def test_report_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    report = _report()
    data = report.to_dict()
    assert data["delivered_rate"] == 99.0 and data["connect_rate"] == 20.0
    assert '"lost_in_broker": 2' in report.to_json()
    report.print_table()
    assert "198 (99 msg/s)" in capsys.readouterr().out


# --- the chart ----------------------------------------------------------------------------------


def _chart_report() -> LoadReport:
    from device_sim.load.report import IntervalStats

    series = [IntervalStats(float(t), 6380.0 - t, 1.0 + t / 10, 2.0 + t / 5) for t in range(1, 11)]
    return _report(series=series, duration_s=10.0, offered=64000, delivered=63800)


def test_the_chart_says_what_it_shows_in_real_text() -> None:
    figure = _chart_report().chart()
    assert figure.get_suptitle() == "Load run: 10 units on fleetgate, MQTT 5.0, QoS 0"
    top, bottom = figure.axes
    assert top.get_title(loc="left") == "Throughput: messages delivered to the subscriber"
    assert (top.get_ylabel(), bottom.get_ylabel()) == ("msg/s", "ms")  # "msg/s", not "m59/5"
    assert bottom.get_title(loc="left") == "Latency, publish to delivery"
    assert bottom.get_xlabel() == "time since the first message (s)"
    legend = top.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["delivered", "offered"]
    bottom_legend = bottom.get_legend()
    assert bottom_legend is not None and [t.get_text() for t in bottom_legend.get_texts()] == ["p50", "p99"]
    figure.canvas.draw()  # tick labels exist once drawn
    ticks = [t.get_text() for t in top.get_yticklabels() if t.get_text()]
    assert ticks and all(len(t) <= 5 for t in ticks) and any(t.endswith("k") for t in ticks)  # "6k", not 6380
    assert top.get_xlim() == (0.0, 10.0)


def test_the_chart_as_png_and_as_svg(tmp_path: Path) -> None:
    from PIL import Image

    report = _chart_report()
    report.write_png(tmp_path / "run.png")
    with Image.open(tmp_path / "run.png") as image:
        assert image.format == "PNG" and image.size == (800, 600)  # 8 x 6 inches at 100 dpi
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is not None and len(colours) > 10  # lines, text and grid, not a blank page
    report.write_png(tmp_path / "run.svg")
    root = ET.fromstring((tmp_path / "run.svg").read_text(encoding="utf-8"))
    texts = {"".join(t.itertext()).strip() for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert {"msg/s", "ms", "delivered", "p99", "time since the first message (s)"} <= texts


def test_without_matplotlib_a_chart_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(RuntimeError, match=r"pip install 'fleetgate\[sim\]'"):
        build_chart([Panel("t", "u", [Series("s", [(0, 1.0)], "#000000")])], title="t")


# --- /proc sampling -----------------------------------------------------------------------------


def test_procstat_reads_this_process() -> None:
    before = sample(os.getpid())
    sum(range(200_000))
    after = sample(os.getpid())
    assert before is not None and after is not None and after.rss_bytes > 0
    assert (cpu_percent(before, after) or 0.0) >= 0.0
    assert sample(2**22 + 12345) is None


# --- Mosquitto's ACL from our policy ------------------------------------------------------------


def test_acl_mirrors_the_default_policy() -> None:
    policy = load_policy(Path(__file__).parents[2] / "gateway" / "defaults" / "policy.yaml")
    acl = acl_from_policy(policy, operators=["OPS-0001"], partners={"ACME": 1})
    lines = acl.splitlines()
    assert "pattern write fleet/%u/telemetry/#" in lines
    assert "pattern read fleet/%u/control/#" in lines
    dispatch = lines[lines.index("user dispatch") + 1 :]
    assert "topic write fleet/+/control/#" in dispatch[: dispatch.index("")]
    analytics = lines[lines.index("user analytics") + 1 :]
    assert analytics[0] == "topic read fleet/+/telemetry/#"
    assert "topic read fleet/+/cmd/#" in lines[lines.index("user OPS-0001") :]
    assert "user ACME" in lines
    assert "{" not in acl  # every placeholder was translated


def test_acl_refuses_a_placeholder_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        acl_from_policy({"roles": {"unit": {"publish": ["fleet/{tier}/x"]}}})


async def test_silent_clients_are_pinged_so_the_server_keeps_them() -> None:
    from device_sim.load.swarm import keep_alive_loop

    client, transport = _client(V311, LatencySink())
    client.data_received(b"\x20\x02\x00\x00")  # CONNACK: connected
    task = asyncio.get_running_loop().create_task(keep_alive_loop([client], keep_alive=0.02))
    await asyncio.sleep(0.06)
    task.cancel()
    assert b"\xc0\x00" in b"".join(transport.written)  # PINGREQ from a client that only listens


async def test_a_client_silent_since_before_the_loop_is_pinged_within_half_a_keep_alive() -> None:
    from device_sim.load.swarm import keep_alive_loop

    client, transport = _client(V311, LatencySink())
    client.data_received(b"\x20\x02\x00\x00")  # CONNACK: connected, then silent
    task = asyncio.get_running_loop().create_task(keep_alive_loop([client], keep_alive=2.0))
    await asyncio.sleep(1.5)  # the first look is at 1 s; it used to take a whole keep-alive
    task.cancel()
    assert b"\xc0\x00" in b"".join(transport.written)


async def test_a_subscriber_named_silent_is_pinged_as_the_loop_starts() -> None:
    from device_sim.load.swarm import keep_alive_loop

    client, transport = _client(V311, LatencySink())
    client.data_received(b"\x20\x02\x00\x00")
    task = asyncio.get_running_loop().create_task(keep_alive_loop([client], keep_alive=60, silent=[client]))
    await asyncio.sleep(0.05)
    task.cancel()
    assert b"\xc0\x00" in b"".join(transport.written)
