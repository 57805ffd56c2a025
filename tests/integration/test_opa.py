"""OPA decisions with a real OPA server (opa run --server): allowed and denied peers, a policy
that changes live (within the cache TTL rules), and OPA unreachable failing closed."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

import pytest

from daemon import Backend, Daemon, exchange
from helpers import free_port
from pki import CA
from prom import scrape
from test_admin import admin_port
from test_files_tunnels import CLIENT_ID, SERVER_ID, bundles, pki, start_client  # noqa: F401 (fixture)

POLICY = """package tunnels.authz

default allow := false

allow if {
    input.tunnel == "kafka-in"
    input.mode == "server"
    input.peer_spiffe_id in data.tunnels.allowed
}
"""


def _run_opa(opa_bin, directory, policy, data):
    (directory / "policy.rego").write_text(policy)
    (directory / "data.json").write_text(data)
    port = free_port()
    proc = subprocess.Popen([str(opa_bin), "run", "--server", "--addr", f"127.0.0.1:{port}",
                             "--log-level", "error", "--skip-version-check",
                             str(directory / "policy.rego"), str(directory / "data.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("OPA did not start")
            time.sleep(0.1)
    return proc, port


@pytest.fixture
def opa(opa_bin, tmp_path):
    proc, port = _run_opa(opa_bin, tmp_path, POLICY,
                          '{"tunnels": {"allowed": ["%s"]}}' % CLIENT_ID)
    yield port
    proc.kill()
    proc.wait()


def start_opa_server(pki, backend, opa_url, *extra):
    cert, key = pki["server"]
    d = Daemon(["server", "--name", "kafka-in", "--listen", "127.0.0.1:0",
                "--target", f"127.0.0.1:{backend.port}", "--cert", cert, "--key", key,
                *bundles(pki, "a.test", "b.test"), "--opa-url", opa_url, *extra], name="server")
    return d, d.wait_listening()


def test_opa_allows_and_denies(pki, opa, tmp_path):
    backend = Backend("echo")
    url = f"http://127.0.0.1:{opa}/v1/data/tunnels/authz/allow"
    server, sport = start_opa_server(pki, backend, url)
    try:
        client, cport = start_client(pki, sport)
        assert exchange(cport, b"opa says yes") == b"opa says yes"
        client.stop()
        # Verified by the bundle, but not in OPA's data: denied, backend untouched.
        other = pki["ca"]["a.test"].issue("spiffe://a.test/not-in-policy").write(tmp_path, "o")
        before = backend.connections
        client2, cport2 = start_client(pki, sport, cert_key=other)
        try:
            reply = exchange(cport2, b"opa says no")
        except ConnectionResetError:
            reply = b""
        assert reply == b""
        server.wait_for(r"rejected reason=not_authorized: peer spiffe://a.test/not-in-policy: "
                        r"OPA denied")
        assert backend.connections == before
        client2.stop()
    finally:
        server.stop()
        backend.close()


def test_opa_unreachable_fails_closed(pki):
    backend = Backend("echo")
    url = f"http://127.0.0.1:{free_port()}/v1/data/tunnels/authz/allow"  # nothing listens
    server, sport = start_opa_server(pki, backend, url, "--opa-timeout", "500ms")
    try:
        client, cport = start_client(pki, sport)
        try:
            reply = exchange(cport, b"x")
        except ConnectionResetError:
            reply = b""
        assert reply == b""
        server.wait_for(r"rejected reason=opa_unavailable: .*unreachable")
        assert backend.connections == 0
        client.stop()
    finally:
        server.stop()
        backend.close()


def test_opa_silent_times_out_and_denies(pki):
    backend = Backend("echo")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/data/x/allow"
    server, sport = start_opa_server(pki, backend, url, "--opa-timeout", "300ms",
                                     "--admin", "127.0.0.1:0")
    try:
        client, cport = start_client(pki, sport)
        try:
            exchange(cport, b"x", timeout=10)
        except ConnectionResetError:
            pass
        server.wait_for(r"rejected reason=opa_unavailable: .*did not answer within 300 ms")
        assert backend.connections == 0
        # Counted as its own outcome, with the time it took in the latency histogram.
        sc = scrape(admin_port(server))
        assert sc.value("spiffe_tunnel_opa_decisions_total", tunnel="kafka-in",
                        outcome="timeout") == 1
        buckets, total, count = sc.histogram("spiffe_tunnel_opa_decision_duration_seconds",
                                             tunnel="kafka-in")
        assert count == 1 and 0.3 <= total < 2
        assert dict(buckets)[0.25] == 0 and dict(buckets)[0.5] == 1
        client.stop()
    finally:
        server.stop()
        backend.close()
        silent.close()


# Allows the client only while the tunnel presents SERVER_ID: the decision depends on the local
# SVID, so a cached decision must not outlive a rotation to another ID.
LOCAL_ID_POLICY = """package tunnels.authz

default allow := false

allow if {
    input.local_spiffe_id == "%s"
    input.peer_spiffe_id == "%s"
}
""" % (SERVER_ID, CLIENT_ID)


def test_opa_cache_is_keyed_by_the_local_svid(pki, opa_bin, tmp_path):
    proc, port = _run_opa(opa_bin, tmp_path, LOCAL_ID_POLICY, "{}")
    first = pki["ca"]["b.test"].issue(SERVER_ID)
    cert, key = first.write(tmp_path, "svid")
    backend = Backend("echo")
    url = f"http://127.0.0.1:{port}/v1/data/tunnels/authz/allow"
    server = Daemon(["server", "--name", "kafka-in", "--listen", "127.0.0.1:0",
                     "--target", f"127.0.0.1:{backend.port}", "--cert", cert, "--key", key,
                     *bundles(pki, "a.test", "b.test"), "--opa-url", url], name="server")
    sport = server.wait_listening()
    client, cport = start_client(pki, sport, expect=("--expect-trust-domain", "b.test"))
    try:
        assert exchange(cport, b"as server") == b"as server"
        # The tunnel's SVID rotates to another ID within the cache TTL (30 s by default).
        second = pki["ca"]["b.test"].issue("spiffe://b.test/server-v2")
        c2, k2 = second.write(tmp_path / "staging", "svid")
        os.rename(k2, key)
        os.rename(c2, cert)
        server.wait_for(r"identity: loaded spiffe://b.test/server-v2")
        time.sleep(0.5)  # the line is logged just before the new snapshot is published
        try:
            reply = exchange(cport, b"as server-v2")
        except ConnectionResetError:
            reply = b""
        assert reply == b"", server.log
        server.wait_for(r"rejected reason=not_authorized: peer spiffe://a.test/client: OPA denied")
        assert "OPA allowed (cached)" not in server.log
    finally:
        client.stop()
        server.stop()
        backend.close()
        proc.kill()
        proc.wait()
