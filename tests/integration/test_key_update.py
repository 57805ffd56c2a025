"""TLS 1.3 AEAD usage limits in the userspace record layer (RFC 8446 §5.5): with
key_update_records at 64 the tunnel replaces its key every 63 data records and asks a peer whose
key has opened 64 records to re-key. Real peers keep reading across hundreds of KeyUpdates:
OpenSSL 3.0's s_client (dialling our server tunnel) and s_server (behind our client tunnel), and
the go-spiffe peer (Go crypto/tls, echoing behind our client tunnel). Bytes are checked by hash
both ways and spiffe_tunnel_tls_key_updates_total counts the updates.

The kernel TLS side of the limit (sessions ending with reason aead_limit) is in
test_ktls_uml.py, which needs a kernel with the tls module."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time

import pytest

from daemon import Backend, Daemon
from helpers import free_port, wait_for
from pki import CA
from prom import scrape
from spire import SELF_UID
from test_admin import admin_port

A, B = "a.test", "b.test"
CLIENT_ID = f"spiffe://{A}/client"
SERVER_ID = f"spiffe://{B}/server"
LIMIT = 64
SIZE = 64 << 20
# 64 MiB is at least 4096 full records each way: one KeyUpdate of ours per 63 data records.
MIN_SENT = SIZE // (16 << 10) // LIMIT
BLOCK = os.urandom(1 << 20)
PAYLOAD = BLOCK * (SIZE // len(BLOCK))
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
KEY_FLAGS = ["--ktls", "off", "--key-update-records", str(LIMIT), "--admin", "127.0.0.1:0"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    cas = {td: CA(td) for td in (A, B)}
    files = {td: cas[td].write_bundle(d / f"{td}.bundle.pem") for td in (A, B)}
    files["client"] = cas[A].issue(CLIENT_ID).write(d, "client")
    files["server"] = cas[B].issue(SERVER_ID).write(d, "server")
    return files


def bundles(pki):
    return ["--bundle", f"{A}={pki[A]}", "--bundle", f"{B}={pki[B]}"]


def key_updates(admin: int, tunnel: str) -> tuple[float, float]:
    s = scrape(admin)
    return (s.value("spiffe_tunnel_tls_key_updates_total", tunnel=tunnel, direction="sent") or 0,
            s.value("spiffe_tunnel_tls_key_updates_total", tunnel=tunnel, direction="received")
            or 0)


def feed(stream, data: bytes) -> threading.Thread:
    """Writes `data` to a pipe or socket in a thread (so that reading can go on meanwhile)."""
    def run():
        view = memoryview(data)
        for off in range(0, len(view), 1 << 20):
            if hasattr(stream, "sendall"):
                stream.sendall(view[off:off + (1 << 20)])
            else:
                stream.write(view[off:off + (1 << 20)])
        if not hasattr(stream, "sendall"):
            stream.flush()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def read_digest(read, size: int) -> str:
    h, got = hashlib.sha256(), 0
    while got < size:
        chunk = read(min(1 << 20, size - got))
        if not chunk:
            break
        h.update(chunk)
        got += len(chunk)
    assert got == size, f"stream ended after {got} of {size} bytes"
    return h.hexdigest()


def listening(port: int) -> bool:
    """A TCP listener on `port` (without connecting to it: s_server would take that as a client)."""
    with open("/proc/net/tcp") as f:
        return any(l.split()[1].endswith(f":{port:04X}") and l.split()[3] == "0A" for l in f)


def check_updates(admin: int, tunnel: str, started: float) -> None:
    sent, received = wait_for(lambda: (u := key_updates(admin, tunnel))[0] >= MIN_SENT and u,
                              timeout=10)
    # Asked once per spent key of the peer's; OpenSSL and Go answer each request.
    assert received >= 1, (sent, received)
    print(f"{tunnel}: {SIZE >> 20} MiB each way in {time.monotonic() - started:.1f}s, "
          f"KeyUpdates sent {sent:.0f} received {received:.0f}")


def test_openssl_s_client_reads_across_key_updates_of_our_server_tunnel(pki):
    backend = Backend("echo")
    cert, key = pki["server"]
    server = Daemon(["server", "--name", "ku-in", "--listen", "127.0.0.1:0",
                     "--target", f"127.0.0.1:{backend.port}", "--cert", cert, "--key", key,
                     *bundles(pki), "--allow-id", CLIENT_ID, *KEY_FLAGS], name="server")
    client = None
    try:
        admin, port = admin_port(server), server.wait_listening()
        ccert, ckey = pki["client"]
        started = time.monotonic()
        client = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-cert", str(ccert),
             "-key", str(ckey), "-CAfile", str(pki[B]), "-tls1_3", "-quiet", "-ign_eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        writer = feed(client.stdin, PAYLOAD)
        assert read_digest(client.stdout.read, SIZE) == DIGEST
        writer.join(30)
        check_updates(admin, "ku-in", started)
    finally:
        if client is not None:
            client.kill()
            client.wait()
        server.stop()
        backend.close()


def test_openssl_s_server_reads_across_key_updates_of_our_client_tunnel(pki, tmp_path):
    scert, skey = pki["server"]
    sport = free_port()
    peer = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{sport}", "-cert", str(scert),
         "-key", str(skey), "-CAfile", str(pki[A]), "-Verify", "2", "-tls1_3", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    cert, key = pki["client"]
    client = Daemon(["client", "--name", "ku-out", "--listen", "127.0.0.1:0",
                     "--target", f"127.0.0.1:{sport}", "--cert", cert, "--key", key,
                     *bundles(pki), "--expect-id", SERVER_ID, *KEY_FLAGS], name="client")
    try:
        admin, port = admin_port(client), client.wait_listening()
        wait_for(lambda: listening(sport), timeout=10)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as app:
            feed(app, PAYLOAD)  # app → tunnel → s_server's stdout
            peer_writer = feed(peer.stdin, PAYLOAD)  # s_server's stdin → tunnel → app
            results = {}
            reader = threading.Thread(
                target=lambda: results.update(peer=read_digest(peer.stdout.read, SIZE)),
                daemon=True)
            reader.start()
            assert read_digest(app.recv, SIZE) == DIGEST
            reader.join(60)
            peer_writer.join(30)
            assert results.get("peer") == DIGEST
        check_updates(admin, "ku-out", started)
    finally:
        peer.kill()
        peer.wait()
        client.stop()


def test_go_spiffe_peer_echoes_across_key_updates_of_our_client_tunnel(
        td_a, td_b, spire_entries, spiffe_peer, peer_uid, tunnel_daemons):
    """Go's crypto/tls (the go-spiffe peer, echoing) follows our KeyUpdates and answers our
    requests; the app gets its 64 MiB back intact."""
    client_id = td_a.spiffe_id("/ku-client")
    peer_id = td_b.spiffe_id("/ku-peer")
    spire_entries.create(td_a, "/ku-client", uid=SELF_UID, federates_with=[td_b])
    spire_entries.create(td_b, "/ku-peer", uid=peer_uid, federates_with=[td_a])
    td_a.agent.wait_for_svid(client_id)
    td_b.agent.wait_for_svid(peer_id, uid=peer_uid)
    srv = spiffe_peer.serve(td_b, allow_ids=[client_id], uid=peer_uid)
    d = tunnel_daemons.start(["client", "--name", "ku-go", "--listen", "127.0.0.1:0",
                              "--target", srv.addr, "--workload-api", td_a.socket,
                              "--svid", client_id, "--expect-id", peer_id, *KEY_FLAGS],
                             name="client-to-go")
    admin, port = admin_port(d), d.wait_listening(30)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as app:
        writer = feed(app, PAYLOAD)
        assert read_digest(app.recv, SIZE) == DIGEST
        writer.join(30)
    check_updates(admin, "ku-go", started)
