"""Multiplexed tunnels (docs/multiplexing.md): a client tunnel carries each accepted connection as
one HTTP/2 CONNECT stream over a few mTLS connections to its server tunnel, the HBONE shape.
Real daemons (files-mode PKI), real sockets; interop with Go's HTTP/2 stack (golang.org/x/net/
http2 in the go-spiffe test peer) in both directions. Runs as any user, on loopback only."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from daemon import Backend, Daemon, echo_roundtrip, exchange
from helpers import ManagedProcess, wait_for
from test_files_tunnels import A, B, CLIENT_ID, SERVER_ID, pki  # noqa: F401 (fixture)
from test_proxy_protocol import peer_bin  # noqa: F401 (fixture: the Go peer, or a skip)


def identity_yaml(pki, who: str) -> str:
    cert, key = pki[who]
    return ("identity:\n  files:\n"
            f"    cert: {cert}\n    key: {key}\n"
            f"    bundles: {{ {A}: {pki[f'bundle:{A}']}, {B}: {pki[f'bundle:{B}']} }}\n")


def start_daemon(tmp_path, name: str, body: str, threads: int = 2) -> Daemon:
    path = tmp_path / f"{name}.yaml"
    path.write_text(body + f"threads: {threads}\ndrain_timeout: 2s\n")
    return Daemon(["run", "-c", str(path)], name=name)


def start_server(pki, tmp_path, target_port: int, allow: str = CLIENT_ID,
                 extra: str = "") -> tuple[Daemon, int]:
    d = start_daemon(tmp_path, "server", identity_yaml(pki, "server") + (
        "tunnels:\n  - name: hbone-in\n    mode: server\n    listen: 127.0.0.1:0\n"
        f"    target: 127.0.0.1:{target_port}\n    allow: {{ ids: [{allow}] }}\n"
        f"    multiplex: {{}}\n{extra}"))
    return d, d.wait_tunnel_port("hbone-in")


def start_client(pki, tmp_path, server_port: int, authority: str, threads: int = 2,
                 extra: str = "") -> tuple[Daemon, int]:
    d = start_daemon(tmp_path, "client", identity_yaml(pki, "client") + (
        "tunnels:\n  - name: hbone-out\n    mode: client\n    listen: 127.0.0.1:0\n"
        f"    target: 127.0.0.1:{server_port}\n    expect: {{ ids: [{SERVER_ID}] }}\n"
        f"    multiplex: {{ authority: \"{authority}\"{extra} }}\n"), threads=threads)
    return d, d.wait_tunnel_port("hbone-out")


@pytest.fixture
def pair(pki, tmp_path):
    """A digest backend behind a multiplexing server tunnel, and a client tunnel to it."""
    backend = Backend("digest")
    server, sport = start_server(pki, tmp_path, backend.port)
    client, cport = start_client(pki, tmp_path, sport, f"127.0.0.1:{backend.port}")
    try:
        yield backend, server, client, cport
    finally:
        client.stop()
        server.stop()
        backend.close()


def digest_line(payload: bytes) -> bytes:
    return f"{hashlib.sha256(payload).hexdigest()} {len(payload)}".encode()


def test_many_concurrent_streams_arrive_byte_exact_over_few_connections(pair):
    backend, server, client, cport = pair
    payloads = [os.urandom(50_000 + i * 7_919) for i in range(60)]
    with ThreadPoolExecutor(max_workers=60) as pool:
        replies = list(pool.map(lambda p: exchange(cport, p), payloads))
    for p, r in zip(payloads, replies):
        assert r == digest_line(p)  # byte-exact, and the half-close crossed both tunnels
    assert backend.connections == 60
    server.wait_for(r"stream closed")
    # Each data-path thread of the client keeps one carrying connection by default.
    carriers = server.count(r"opened peer=spiffe://a.test/client")
    assert 1 <= carriers <= 2, server.tail()
    wait_for(lambda: server.count(r"stream closed") == 60, timeout=15, desc="60 stream lines")


def closed_without_data(port: int) -> bool:
    """True when the tunnel ends a connection without a byte: EOF, or an error because it was
    closed already (RST over unread data, ENOTCONN at our half-close)."""
    try:
        return exchange(port, b"hello") == b""
    except OSError:
        return True


def test_connect_to_another_authority_is_refused_with_400(pki, tmp_path):
    backend = Backend("echo")
    other = Backend("echo")
    server, sport = start_server(pki, tmp_path, backend.port)
    # The client asks the server tunnel for a destination it does not serve.
    client, cport = start_client(pki, tmp_path, sport, f"127.0.0.1:{other.port}", threads=1)
    try:
        assert closed_without_data(cport)
        server.wait_for(r"stream refused .*reason=wrong_authority|stream refused.*wrong_authority")
        client.wait_for(r"refused with status 400")
        assert backend.connections == 0 and other.connections == 0
        # The carrying connection survives a refused stream: a later one still works, on it.
        assert closed_without_data(cport)
        assert server.count(r"opened peer=") == 1, server.tail()
    finally:
        client.stop()
        server.stop()
        backend.close()
        other.close()


def test_peer_not_allowed_never_reaches_the_target(pki, tmp_path):
    backend = Backend("echo")
    server, sport = start_server(pki, tmp_path, backend.port, allow=f"spiffe://{A}/someone-else")
    client, cport = start_client(pki, tmp_path, sport, f"127.0.0.1:{backend.port}")
    try:
        assert closed_without_data(cport)
        server.wait_for(r"rejected .*not_authorized|rejected.*is not allowed|rejected")
        # TLS 1.3: the client finished first; the server's alert then ends the carrier.
        client.wait_for(r"rejected reason=(mux_unavailable|stream_refused):.*bad_certificate")
        assert backend.connections == 0
    finally:
        client.stop()
        server.stop()
        backend.close()


def reset_close(s: socket.socket) -> None:
    """Closes with RST (SO_LINGER 0), as a crashed client would."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_reset_and_stalled_streams_do_not_stall_a_bulk_sibling(pki, tmp_path):
    echo = Backend("echo")
    server, sport = start_server(pki, tmp_path, echo.port)
    # One data-path thread and one carrying connection: every stream shares it.
    client, cport = start_client(pki, tmp_path, sport, f"127.0.0.1:{echo.port}", threads=1)
    try:
        # A stalled reader: writes into an echo it never reads. Its stream windows and
        # socket buffers fill; the carrying connection must keep serving the others.
        stalled = socket.create_connection(("127.0.0.1", cport), timeout=30)
        stalled.setblocking(False)
        junk = os.urandom(1 << 20)
        sent = 0
        progress = time.monotonic()
        # Until 32 MiB are in, or nothing more fits for half a second (every buffer on the way
        # and the stream's window are full).
        while sent < 32 << 20 and time.monotonic() - progress < 0.5:
            try:
                sent += stalled.send(junk)
                progress = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        assert sent > 4 << 20  # at least the stream window went in
        # A reset stream: data in flight, then RST from the application.
        r = socket.create_connection(("127.0.0.1", cport), timeout=30)
        r.sendall(os.urandom(1 << 20))
        reset_close(r)
        # The bulk sibling: 64 MiB through the echo, read while written.
        payload = os.urandom(64 << 20)
        started = time.monotonic()
        reply = echo_roundtrip(cport, payload, timeout=60)
        took = time.monotonic() - started
        assert reply == payload
        assert took < 30, f"bulk stream took {took:.1f}s next to a stalled one"
        server.wait_for(r"stream closed .*stream→plain|stream closed.*reset", timeout=15)
        # Still one carrying connection: neither the reset nor the stall ended it.
        assert server.count(r"opened peer=") == 1, server.tail()
        stalled.close()
    finally:
        client.stop()
        server.stop()
        echo.close()


def test_drain_ends_the_carrying_connection_after_its_streams(pair):
    backend, server, client, cport = pair
    assert exchange(cport, b"x" * 1000) == digest_line(b"x" * 1000)
    mark = server.mark()
    assert client.stop() == 0
    # The client's carrying connection ended cleanly (GOAWAY, close_notify), not by abort.
    server.wait_for(r"closed peer=spiffe://a.test/client carrying=h2", start=mark, timeout=15)


def open_echo_stream(port: int) -> socket.socket:
    """A long-lived connection through the pair, proven to carry bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(b"ping")
    assert s.recv(16) == b"ping"
    return s


def cut(s: socket.socket, timeout: float = 15.0) -> bool:
    """True when the connection ends (EOF or reset) within `timeout`."""
    s.settimeout(timeout)
    try:
        return s.recv(16) == b""
    except ConnectionResetError:
        return True


def test_an_idle_stream_ends_after_the_idle_timeout_and_its_carrier_stays(pki, tmp_path):
    echo = Backend("echo")
    server, sport = start_server(pki, tmp_path, echo.port, extra="    timeouts: { idle: 1s }\n")
    client, cport = start_client(pki, tmp_path, sport, f"127.0.0.1:{echo.port}", threads=1)
    try:
        s = open_echo_stream(cport)
        started = time.monotonic()
        assert cut(s, timeout=10)
        assert 0.9 < time.monotonic() - started < 5
        assert echo_roundtrip(cport, b"still carried") == b"still carried"
        assert server.count(r"opened peer=") == 1, server.tail()
    finally:
        client.stop()
        server.stop()
        echo.close()


def test_a_reload_that_no_longer_allows_the_peer_ends_the_carrier_and_its_streams(pki,
                                                                                   tmp_path):
    echo = Backend("echo")
    server, sport = start_server(pki, tmp_path, echo.port)
    client, cport = start_client(pki, tmp_path, sport, f"127.0.0.1:{echo.port}", threads=1)
    try:
        streams = [open_echo_stream(cport) for _ in range(3)]
        config = tmp_path / "server.yaml"
        config.write_text(config.read_text().replace(CLIENT_ID, f"spiffe://{A}/someone-else"))
        mark = server.mark()
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(r"ending .*policy_changed|policy_changed", start=mark, timeout=15)
        assert all(cut(s) for s in streams)
        server.wait_for(r"closed peer=spiffe://a.test/client carrying=h2", start=mark)
    finally:
        client.stop()
        server.stop()
        echo.close()


def test_a_reload_that_replaces_the_client_tunnel_retires_its_carrier(pair, tmp_path):
    backend, server, client, cport = pair
    assert exchange(cport, b"before") == digest_line(b"before")
    config = tmp_path / "client.yaml"
    config.write_text(config.read_text().replace('authority: "', 'max_streams: 50, authority: "'))
    mark = client.mark()
    client.proc.send_signal(signal.SIGHUP)
    # The old version's idle carrier ends at once (no streams left), cleanly.
    client.wait_for(r"closed peer=spiffe://b.test/server carrying=h2 .*\(closed\)", start=mark)
    assert exchange(cport, b"after") == digest_line(b"after")


def test_a_peer_certificate_reaching_not_after_ends_the_carrier_and_its_streams(pki, tmp_path):
    short = dict(pki)
    ca = pki["ca"][A]
    not_after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
    short["client"] = ca.issue(CLIENT_ID, not_after=not_after).write(tmp_path, "short-client")
    echo = Backend("echo")
    server, sport = start_server(pki, tmp_path, echo.port)
    client, cport = start_client(short, tmp_path, sport, f"127.0.0.1:{echo.port}", threads=1)
    try:
        s = open_echo_stream(cport)
        assert cut(s, timeout=20)
        # Both ends check the same notAfter: the server ends the carrier with peer_expired, the
        # client (whose own SVID it is) with local_identity_lost; whichever comes first.
        wait_for(lambda: server.count(r"peer_expired") + client.count(r"local_identity_lost") > 0,
                 timeout=10, desc="the carrier ended at notAfter")
    finally:
        client.stop()
        server.stop()
        echo.close()


# --------------------------------------------------------------------------- Go's HTTP/2 stack

def go_files(pki, who: str) -> list[str]:
    cert, key = pki[who]
    return ["--cert", str(cert), "--key", str(key),
            "--bundle", f"{A}={pki[f'bundle:{A}']}", "--bundle", f"{B}={pki[f'bundle:{B}']}"]


def test_go_http2_client_opens_connect_streams_on_our_server_tunnel(pki, tmp_path, peer_bin):
    backend = Backend("digest")
    server, sport = start_server(pki, tmp_path, backend.port)
    try:
        out = ManagedProcess(
            [peer_bin, "h2-connect", *go_files(pki, "client"), "--server-id", SERVER_ID,
             "--addr", f"127.0.0.1:{sport}", "--authority", f"127.0.0.1:{backend.port}",
             "--streams", "20", "--size", "300000"],
            tmp_path / "h2-connect.log", name="h2-connect", capture_stdout=True).start()
        line = out.wait_for_line(r"^done .*", timeout=60).group(0)
        assert line == "done streams=20 ok=20", "\n".join(out.lines)
        # Another authority: Go's client sees the status ztunnel would answer.
        bad = ManagedProcess(
            [peer_bin, "h2-connect", *go_files(pki, "client"), "--server-id", SERVER_ID,
             "--addr", f"127.0.0.1:{sport}", "--authority", "10.0.0.1:80", "--streams", "1"],
            tmp_path / "h2-bad.log", name="h2-bad", capture_stdout=True).start()
        assert bad.wait_for_line(r"^status (\d+)", timeout=30).group(1) == "400"
        assert backend.connections == 20
        server.wait_for(r"opened peer=spiffe://a.test/client .*")
    finally:
        server.stop()
        backend.close()


def test_our_client_tunnel_speaks_to_a_go_http2_connect_server(pki, tmp_path, peer_bin):
    go = ManagedProcess(
        [peer_bin, "h2-connect-server", *go_files(pki, "server"), "--allow-id", CLIENT_ID,
         "--listen", "127.0.0.1:0"],
        tmp_path / "h2-server.log", name="h2-connect-server", capture_stdout=True).start()
    gport = int(go.wait_for_line(r"^listening .*:(\d+)$", timeout=15).group(1))
    client, cport = start_client(pki, tmp_path, gport, "192.0.2.7:8080")
    try:
        payloads = [os.urandom(100_000 + i) for i in range(10)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            replies = list(pool.map(lambda p: exchange(cport, p), payloads))
        assert replies == payloads  # Go's handler echoes, then ends the stream at our END_STREAM
        connects = [l for l in go.lines if l.startswith("connect ")]
        assert len(connects) == 10
        assert all(re.match(r"connect authority=192\.0\.2\.7:8080 peer=spiffe://a\.test/client "
                            r"forwarded=for=\"127\.0\.0\.1:\d+\"$", l) for l in connects), connects
    finally:
        client.stop()
        go.stop()
