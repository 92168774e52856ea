"""TlsServerProtocol hands the application every byte of every whole record a read carried, in order,
and keeps a partial record until the rest arrives (the read loop stops when the incoming buffer is
empty instead of reading until OpenSSL says it wants more)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.edge.tls import TlsServerProtocol, openssl_of, tls_server_context


def _cert(name: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any) -> tuple[str, str]:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


class _Tcp:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class _Hub:
    handshake_timeout = 10.0

    def handshake_ok(self, seconds: float) -> None:
        pass

    def handshake_failed(self, address: str, reason: str) -> None:
        raise AssertionError(reason)


class _App(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.reads = 0

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.reads += 1


async def test_whole_records_are_delivered_and_a_partial_one_waits(tmp_path: Path) -> None:
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("test ca", ca_key, None, ca=True)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    server = _write(
        tmp_path / "server", _cert("localhost", server_key, ("test ca", ca_key), ca=False), server_key
    )
    client = _write(
        tmp_path / "client", _cert("client", client_key, ("test ca", ca_key), ca=False), client_key
    )
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cadata=ca_pem)
    client_context.load_cert_chain(*client)

    app = _App()
    protocol = TlsServerProtocol(tls_server_context(*server, ca_pem), _Hub(), "127.0.0.1:1", lambda: app)
    tcp = _Tcp()
    protocol.connection_made(tcp)  # type: ignore[arg-type]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    for _ in range(10):
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            protocol.data_received(outgoing.read())
            incoming.write(bytes(tcp.out))
            tcp.out.clear()
    protocol.data_received(outgoing.read())  # the client's last flight (TLS 1.3: its certificate)

    records = []
    for n in range(4):
        tls.write(f"record {n};".encode())
        records.append(outgoing.read())
    half = len(records[3]) // 2
    protocol.data_received(b"".join(records[:3]) + records[3][:half])
    assert bytes(app.data) == b"record 0;record 1;record 2;"
    assert app.reads == 1  # every whole record of the read, handed on at once
    protocol.data_received(records[3][half:])
    assert bytes(app.data) == b"record 0;record 1;record 2;record 3;"
    protocol.data_received(records[0][:3])  # a few bytes of nothing whole: nothing handed on
    assert app.reads == 2

    # A small record and records as large as TLS allows (16 KiB of plaintext), in one read: every byte
    # is handed on, nothing of the last record stays behind in OpenSSL until more bytes arrive.
    protocol = TlsServerProtocol(tls_server_context(*server, ca_pem), _Hub(), "127.0.0.1:2", lambda: app)
    tcp = _Tcp()
    protocol.connection_made(tcp)  # type: ignore[arg-type]
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    for _ in range(10):
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            protocol.data_received(outgoing.read())
            incoming.write(bytes(tcp.out))
            tcp.out.clear()
    protocol.data_received(outgoing.read())
    app.data.clear()
    big = bytes(range(256)) * 192  # 49,152 bytes: three records of 16,384
    tls.write(b"start")
    tls.write(big)
    protocol.data_received(outgoing.read())
    assert bytes(app.data) == b"start" + big


def test_records_go_through_the_openssl_object_and_fail_as_the_wrapper_does() -> None:
    client = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    raw = openssl_of(client)
    assert raw is not client and raw is client._sslobj  # type: ignore[attr-defined]
    for call in (lambda o: o.read(16), lambda o: o.write(b"x")):  # no handshake yet: both ways alike
        errors = []
        for obj in (client, raw):
            try:
                call(obj)
            except ssl.SSLError as exc:
                errors.append(type(exc))
        assert len(errors) == 2 and errors[0] is errors[1], errors
    plain = object()  # an interpreter whose SSLObject keeps no inner object: the wrapper is used
    assert openssl_of(plain) is plain  # type: ignore[arg-type]
