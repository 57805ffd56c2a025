"""Pre-authentication limits against a real daemon: a flood of silent, garbage and drip-feeding
connections does not keep a legitimate peer out (handshakes have their own limits, global and per
source, and do not count against max_connections), a drip-feeding connection is cut at the
handshake timeout, rejection lines are rate limited, and the daemon's descriptors and memory
return to their baseline afterwards."""

from __future__ import annotations

import os
import resource
import socket
import ssl
import statistics
import threading
import time

import pytest

from daemon import Backend, Daemon
from pki import CA
from prom import Scrape
from test_admin import admin_port, get

A, B = "a.test", "b.test"
CLIENT_ID = f"spiffe://{A}/client"
SERVER_ID = f"spiffe://{B}/server"
HANDSHAKE_TIMEOUT = 5.0
PER_SOURCE = 32
SILENT = 2000
SILENT_SOURCES = [f"127.0.0.{i}" for i in range(2, 8)]  # 6 x 32 = 192 of 256 slots at most
RSS_MARGIN_KIB = 16 << 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    cas = {td: CA(td) for td in (A, B)}
    files = {td: cas[td].write_bundle(d / f"{td}.bundle.pem") for td in (A, B)}
    files["client"] = CA(A, cas[A]).issue(CLIENT_ID).write(d, "client")
    files["server"] = cas[B].issue(SERVER_ID).write(d, "server")
    return files


@pytest.fixture(scope="module", autouse=True)
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if want < SILENT + 600:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {SILENT} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def server(pki):
    backend = Backend("echo")
    cert, key = pki["server"]
    d = Daemon(["--admin", "127.0.0.1:0", "server", "--listen", "127.0.0.1:0",
                "--target", f"127.0.0.1:{backend.port}", "--cert", cert, "--key", key,
                "--bundle", f"{A}={pki[A]}", "--bundle", f"{B}={pki[B]}",
                "--allow-id", CLIENT_ID, "--max-connections", "100",
                "--max-handshakes", "256", "--max-handshakes-per-source", str(PER_SOURCE),
                "--handshake-timeout", f"{int(HANDSHAKE_TIMEOUT)}s"], name="server")
    try:
        yield d, d.wait_listening(), admin_port(d)
    finally:
        d.stop()
        backend.close()


def legit_roundtrip(pki, port) -> float:
    """Connects as the allowed peer, sends and reads back 1 KiB; returns the seconds it took."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(*pki["client"])
    payload = os.urandom(1024)
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                assert chunk, "tunnel closed the legitimate session"
                got += chunk
    assert got == payload
    return time.monotonic() - began


def connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def still_open(s: socket.socket) -> bool:
    """True while the daemon has not closed the connection."""
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_until(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def garbage(port: int, stop: threading.Event, sent: list[int]) -> None:
    while not stop.is_set():
        try:
            with connect_from("127.0.0.12", port) as s:
                s.settimeout(2)
                s.sendall(os.urandom(2048))
                sent[0] += 1
                while s.recv(4096):
                    pass
        except OSError:
            pass


def drip(port: int, cut_after: list[float]) -> None:
    """Sends a TLS record header, then one byte a second; records when the daemon cut it."""
    began = time.monotonic()
    try:
        with connect_from("127.0.0.13", port) as s:
            s.settimeout(1.0)
            data = b"\x16\x03\x01\x02\x00" + b"\x01" * 512
            for b in data:
                s.sendall(bytes([b]))
                try:
                    if s.recv(1) == b"":
                        break
                except socket.timeout:
                    pass
    except OSError:
        pass
    cut_after.append(time.monotonic() - began)


def test_flood_does_not_keep_a_legitimate_peer_out(pki, server):
    d, port, admin = server
    pid = d.proc.pid
    for _ in range(3):  # warm up: first-use allocations are not a leak
        legit_roundtrip(pki, port)
    normal = statistics.median(legit_roundtrip(pki, port) for _ in range(7))
    time.sleep(0.5)
    base_fds, base_rss = fd_count(pid), rss_kib(pid)

    # One source alone gets max_handshakes_per_source connections into the handshake.
    one = [connect_from("127.0.0.50", port) for _ in range(100)]
    time.sleep(1.0)
    held = sum(still_open(s) for s in one)
    for s in one:
        s.close()
    assert held == PER_SOURCE

    silent = []
    stop = threading.Event()
    sent = [0]
    cut_after: list[float] = []
    workers = [threading.Thread(target=garbage, args=(port, stop, sent), daemon=True)]
    workers += [threading.Thread(target=drip, args=(port, cut_after), daemon=True)
                for _ in range(10)]
    try:
        flood_began = time.monotonic()
        for i in range(SILENT):
            silent.append(connect_from(SILENT_SOURCES[i % len(SILENT_SOURCES)], port))
        for w in workers:
            w.start()
        time.sleep(0.5)
        under_flood = [legit_roundtrip(pki, port) for _ in range(5)]
        assert time.monotonic() - flood_began < HANDSHAKE_TIMEOUT, "flood outlived its window"
        peak_fds = fd_count(pid)
        in_handshake = sum(still_open(s) for s in silent)
        stop.set()
        for w in workers:
            w.join(timeout=HANDSHAKE_TIMEOUT + 15)
    finally:
        stop.set()
        for s in silent:
            s.close()

    limit = 3 * normal + 0.5
    print(f"normal {normal * 1000:.1f} ms; under flood {[round(t * 1000, 1) for t in under_flood]}"
          f" ms; silent held {in_handshake}/{SILENT}; garbage connects {sent[0]}; drip cut after "
          f"{[round(t, 1) for t in cut_after]} s; fds base {base_fds} peak {peak_fds}")
    assert max(under_flood) <= limit
    assert in_handshake <= len(SILENT_SOURCES) * PER_SOURCE
    # A drip-feeding connection lives until the handshake timeout, not longer.
    assert len(cut_after) == 10
    assert all(HANDSHAKE_TIMEOUT - 0.5 <= t <= HANDSHAKE_TIMEOUT + 2.5 for t in cut_after)

    scrape = Scrape(get(admin, "/metrics")[1])
    refused = scrape.value("spiffe_tunnel_connections_rejected_total", tunnel="server",
                           reason="handshake_limit") or 0
    suppressed = sum(v for _, v in scrape.with_name("spiffe_tunnel_log_lines_suppressed_total",
                                                       tunnel="server"))
    assert refused >= SILENT - len(SILENT_SOURCES) * PER_SOURCE
    assert (scrape.value("spiffe_tunnel_connections_rejected_total", tunnel="server",
                         reason="max_connections") or 0) == 0
    logged = d.count(r"reason.*handshake_limit")
    assert suppressed > 0 and logged < 200, (logged, suppressed)
    assert d.count(r"suppressed similar lines") >= 1

    # Every descriptor comes back once the handshake timeout has cut what was left.
    assert wait_until(lambda: fd_count(pid) == base_fds, HANDSHAKE_TIMEOUT + 5), \
        (fd_count(pid), base_fds)
    rss = rss_kib(pid)
    print(f"fds {fd_count(pid)} (baseline {base_fds}); RSS {rss} KiB (baseline {base_rss} KiB, "
          f"+{rss - base_rss} KiB)")
    assert rss - base_rss <= RSS_MARGIN_KIB
    assert legit_roundtrip(pki, port) <= limit


def test_client_tunnel_local_bursts_are_bounded_by_max_handshakes_only(pki):
    """A client tunnel's connections come from local applications, all from one address: the
    per-source limit (here 1) does not apply to them, the tunnel-wide max_handshakes (here 3)
    does. The remote never answers, so every admitted connection stays in its handshake."""
    silent = socket.create_server(("127.0.0.1", 0))
    cert, key = pki["client"]
    d = Daemon(["client", "--listen", "127.0.0.1:0",
                "--target", f"127.0.0.1:{silent.getsockname()[1]}", "--cert", cert, "--key", key,
                "--bundle", f"{A}={pki[A]}", "--bundle", f"{B}={pki[B]}",
                "--expect-id", SERVER_ID, "--max-handshakes", "3",
                "--max-handshakes-per-source", "1", "--handshake-timeout", "10s"], name="client")
    local = []
    try:
        port = d.wait_listening()
        local = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
        remote = []
        silent.settimeout(5)
        for _ in range(3):
            remote.append(silent.accept()[0])  # three handshakes under way towards the remote
        assert d.count(r"handshake_limit") == 0, d.tail(10)
        local.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        d.wait_for(r"refusing connection: 3 handshakes in flight \(handshake_limit\)")
        assert all(still_open(s) for s in local[:3])
        for s in remote:
            s.close()
    finally:
        for s in local:
            s.close()
        silent.close()
        d.stop()
