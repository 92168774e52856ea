"""Resource exhaustion against a live gateway: each attack is bounded, costs other clients nothing,
and the gateway's resident memory (VmRSS) stays under a bound derived from its limits.

Bounds (see docs/reliability.md): a half-open TLS connection costs the gateway one socket, one
handshake task and one TLS object, well under 64 KiB; 400 of them are allowed 48 MiB over the
baseline. A client that never reads costs at most `max_write_buffer` (256 KiB here) plus the kernel's
socket buffers before it is cut.
"""

from __future__ import annotations

import signal
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Connect, ProtocolVersion, Subscribe, Subscription
from tests.clients import Paho
from tests.hardening.common import Collector, record_figure, rss_kib, v5_client
from tests.harness import GatewayProcess
from tests.ops.helpers import eventually, metric

MIB = 1024
FLOOD = 400
HALF_OPEN = 300
HALF_OPEN_BOUND_KIB = 48 * MIB
WRITE_BUFFER = 262144
RETAINED_QUOTA = 10


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("exhaustion")
    config = root / "gateway.yaml"
    config.write_text(
        "tls:\n  handshake_timeout: 2\nlimits:\n  connect_timeout: 2\n"
        f"  max_write_buffer: {WRITE_BUFFER}\n  max_retained_per_client: {RETAINED_QUOTA}\n"
    )
    gateway = GatewayProcess(root, extra_args=("--config", str(config)))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGTERM)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _connects(gw: GatewayProcess, ident: str, source: str = "") -> bool:
    creds = gw.enroll_unit(ident)
    client, props = v5_client(creds)
    try:
        client.connect("localhost", gw.mqtt_port, properties=props, bind_address=source)
    except OSError:
        return False
    client.loop_start()
    ok = bool(eventually(client.is_connected, 5))
    client.disconnect()
    client.loop_stop()
    return ok


def test_a_connection_flood_from_one_source_is_refused_past_its_rate(gw: GatewayProcess) -> None:
    rss_before = rss_kib(gw)
    started = time.monotonic()
    socks: list[socket.socket] = []
    for _ in range(FLOOD):
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", gw.mqtt_port))
        socks.append(sock)
    elapsed = time.monotonic() - started
    other_source_ok = _connects(gw, "TRK-OTHER-SOURCE", "127.0.0.3")
    time.sleep(0.3)
    refused = sum(_closed(s) for s in socks)
    rss_during = rss_kib(gw)
    for sock in socks:
        sock.close()
    admitted = FLOOD - refused
    record_figure(
        "connection_flood_one_source",
        attempts=FLOOD,
        seconds=round(elapsed, 2),
        admitted=admitted,
        refused=refused,
        other_source_connected=other_source_ok,
        rss_kib_before=rss_before,
        rss_kib_during=rss_during,
        rss_kib_after=rss_kib(gw),
    )
    assert other_source_ok
    assert admitted <= 100 + 20 * (elapsed + 0.5) + 5  # default burst 100, 20/s per source
    assert refused >= FLOOD - admitted > 0
    assert rss_during - rss_before < HALF_OPEN_BOUND_KIB


def test_half_open_handshakes_are_cut_by_the_handshake_timeout(gw: GatewayProcess) -> None:
    rss_before = rss_kib(gw)
    socks: list[socket.socket] = []
    for _ in range(HALF_OPEN):  # from 127.0.0.1 (exempt from the rate limit): the timeout must do it
        sock = socket.create_connection(("127.0.0.1", gw.mqtt_port))
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's head, then silence
        socks.append(sock)
    opened = time.monotonic()
    time.sleep(0.5)
    rss_during = rss_kib(gw)
    bystander_ok = _connects(gw, "TRK-DURING-HALF-OPEN")
    eventually(lambda: all(_closed(s) for s in socks), 6, 0.1)
    all_cut_after = time.monotonic() - opened
    still_open = sum(not _closed(s) for s in socks)
    for sock in socks:
        sock.close()
    time.sleep(0.5)
    rss_after = rss_kib(gw)
    record_figure(
        "half_open_handshakes",
        connections=HALF_OPEN,
        handshake_timeout_s=2,
        all_cut_within_s=round(all_cut_after, 2),
        still_open=still_open,
        bystander_connected=bystander_ok,
        rss_kib_before=rss_before,
        rss_kib_during=rss_during,
        rss_kib_after=rss_after,
        bound_kib=HALF_OPEN_BOUND_KIB,
    )
    assert still_open == 0
    assert bystander_ok
    assert rss_during - rss_before < HALF_OPEN_BOUND_KIB
    assert rss_after - rss_before < HALF_OPEN_BOUND_KIB


def _never_reader(gw: GatewayProcess, ident: str) -> ssl.SSLSocket:
    """A unit that connects, subscribes to its commands, and then never reads again."""
    creds = gw.enroll_unit(ident)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # keep the kernel from hiding the backlog
    raw.connect(("127.0.0.1", gw.mqtt_port))
    tls = gw.client_context(creds).wrap_socket(raw, server_hostname="localhost")
    v5 = ProtocolVersion.MQTT_5
    tls.sendall(encode(Connect(ident, v5, keep_alive=0), v5))
    tls.settimeout(5)
    assert tls.recv(64)[0] == 0x20  # CONNACK
    tls.sendall(encode(Subscribe(1, (Subscription(f"fleet/{ident}/cmd/#", 0),)), v5))
    assert tls.recv(64)[0] == 0x90  # SUBACK; from here on nothing is read
    return tls


def test_a_client_that_never_reads_is_cut_at_the_write_buffer_bound(gw: GatewayProcess) -> None:
    slow = _never_reader(gw, "TRK-NEVER-READS")
    fast_unit = gw.enroll_unit("TRK-READS")
    fast = Collector()
    reader, props = v5_client(fast_unit)
    reader.on_message = fast.on_message
    reader.connect("localhost", gw.mqtt_port, properties=props)
    reader.loop_start()
    reader.subscribe("fleet/TRK-READS/cmd/#", qos=0)
    dispatch = Paho(gw.mqtt_port, gw.issue("service", "dispatch"))
    assert dispatch.connect()[0] == 0
    cut_before = metric(gw, "slow_consumers_cut")
    rss_before = rss_kib(gw)
    payload = b"\x00" * 16384
    rss_peak = rss_before
    for i in range(400):  # 6.4 MiB towards the never-reader, 25x its write-buffer bound
        dispatch.client.publish("fleet/TRK-NEVER-READS/cmd/bulk", payload, qos=0)
        if i % 10 == 0:
            dispatch.publish("fleet/TRK-READS/cmd/tick", f"tick-{i}".encode(), qos=1)
        if i % 50 == 0:
            rss_peak = max(rss_peak, rss_kib(gw))
    cut = eventually(lambda: metric(gw, "slow_consumers_cut") > cut_before, 10)
    fast.wait_quiet(1.0, 10)
    ticks = [p for p in fast.payloads() if p.startswith("tick-")]
    rss_after = rss_kib(gw)
    slow.close()
    reader.disconnect()
    reader.loop_stop()
    dispatch.disconnect()
    record_figure(
        "never_reader",
        bytes_offered=400 * 16384,
        write_buffer_bound=WRITE_BUFFER,
        cut=bool(cut),
        bystander_ticks=len(ticks),
        rss_kib_before=rss_before,
        rss_kib_peak=rss_peak,
        rss_kib_after=rss_after,
    )
    assert cut
    assert len(ticks) == 40
    assert rss_peak - rss_before < 32 * MIB


def test_subscription_and_retained_quotas_per_identity_answer_0x97(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-GREEDY")
    client, props = v5_client(unit)
    acks: dict[int, int] = {}
    subacks: list[list[int]] = []
    client.on_publish = lambda c, u, mid, reason, p: acks.__setitem__(mid, int(reason.value))
    client.on_subscribe = lambda c, u, mid, reasons, p: subacks.append([int(r.value) for r in reasons])
    client.connect("localhost", gw.mqtt_port, properties=props)
    client.loop_start()
    assert eventually(client.is_connected, 5)
    rss_before = rss_kib(gw)
    client.subscribe([(f"fleet/TRK-GREEDY/cmd/f{i}", 0) for i in range(30)])
    assert eventually(lambda: subacks, 5)
    granted = [c for c in subacks[0] if c < 0x80]
    over = [c for c in subacks[0] if c == 0x97]
    mids = []
    for i in range(RETAINED_QUOTA + 5):
        info = client.publish(f"fleet/TRK-GREEDY/telemetry/r{i}", b"keep", qos=1, retain=True)
        mids.append(info.mid)
        time.sleep(0.06)  # stay under the unit's 20 msg/s
    assert eventually(lambda: all(m in acks for m in mids), 5)
    retained_ok = sum(acks[m] == 0 for m in mids)
    retained_over = sum(acks[m] == 0x97 for m in mids)
    # replacing one of its own retained messages never costs a slot
    again = client.publish("fleet/TRK-GREEDY/telemetry/r0", b"newer", qos=1, retain=True)
    assert eventually(lambda: again.mid in acks, 5)
    client.disconnect()
    client.loop_stop()
    record_figure(
        "quotas_per_identity",
        subscriptions_asked=30,
        subscriptions_granted=len(granted),
        subscriptions_0x97=len(over),
        retained_asked=RETAINED_QUOTA + 5,
        retained_kept=retained_ok,
        retained_0x97=retained_over,
        rss_kib_before=rss_before,
        rss_kib_after=rss_kib(gw),
    )
    assert len(granted) == 20 and len(over) == 10  # the unit role's max_subscriptions: 20
    assert retained_ok == RETAINED_QUOTA and retained_over == 5
    assert acks[again.mid] == 0


def test_oversized_est_bodies_are_refused_without_reading_them_whole(gw: GatewayProcess) -> None:
    import base64
    import urllib.error
    import urllib.request

    token = gw.add_unit("TRK-BIG-CSR")
    auth = base64.b64encode(f"TRK-BIG-CSR:{token}".encode()).decode()
    context = ssl.create_default_context(cafile=str(gw.root_ca))
    rss_before = rss_kib(gw)
    statuses = []
    for size in (70_000, 1_000_000, 8_000_000):  # the default limit is 64 KiB
        request = urllib.request.Request(
            f"{gw.https_url}/.well-known/est/simpleenroll",
            data=b"A" * size,
            method="POST",
            headers={"Authorization": f"Basic {auth}", "Content-Type": "application/pkcs10"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=15) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
        except (ConnectionError, urllib.error.URLError):
            statuses.append(0)  # the server closed on us before reading the rest: also a refusal
    rss_after = rss_kib(gw)
    record_figure(
        "oversized_est_bodies",
        sizes=[70_000, 1_000_000, 8_000_000],
        statuses=statuses,
        rss_kib_before=rss_before,
        rss_kib_after=rss_after,
    )
    assert all(s in (413, 0) for s in statuses), statuses
    assert rss_after - rss_before < 16 * MIB
    # the token was not spent: a proper enrollment still works
    from gateway.cli.device import device_csr
    from pki.est_client import bootstrap, simpleenroll
    from pki.keys import generate_private_key

    server = bootstrap(gw.https_url, ca_file=gw.root_ca)
    assert simpleenroll(server, "TRK-BIG-CSR", token, device_csr(generate_private_key(), "TRK-BIG-CSR"))
