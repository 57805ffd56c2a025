"""The admin endpoint: /healthz, /readyz (503 until an identity arrives), /metrics with the
documented counters, /status JSON. Loopback only."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from daemon import Backend, Daemon, exchange
from test_files_tunnels import CLIENT_ID, bundles, pki, start_client  # noqa: F401 (fixture)


def get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_port(d: Daemon) -> int:
    return int(d.wait_for(r"admin: serving .* on [^ ]+:(\d+)").group(1))


def test_metrics_health_and_status(pki):
    backend = Backend("echo")
    cert, key = pki["server"]
    server = Daemon(["server", "--name", "kafka-in", "--listen", "127.0.0.1:0",
                     "--target", f"127.0.0.1:{backend.port}", "--cert", cert, "--key", key,
                     *bundles(pki, "a.test", "b.test"), "--allow-id", CLIENT_ID,
                     "--admin", "127.0.0.1:0"], name="server")
    try:
        aport = admin_port(server)
        sport = server.wait_listening()
        client, cport = start_client(pki, sport)
        assert exchange(cport, b"metered") == b"metered"
        client.stop()
        # A refused peer: plain TCP garbage instead of TLS.
        with socket.create_connection(("127.0.0.1", sport)) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                s.recv(100)  # the tunnel answers garbage by closing, possibly with a reset
            except ConnectionResetError:
                pass
        server.wait_for("rejected reason=handshake_error")

        assert get(aport, "/healthz") == (200, "ok\n")
        code, body = get(aport, "/readyz")
        assert code == 200 and "tunnel kafka-in: ready" in body
        code, metrics = get(aport, "/metrics")
        assert code == 200
        assert 'spiffe_tunnel_connections_established_total{tunnel="kafka-in"} 1' in metrics
        assert 'spiffe_tunnel_bytes_total{tunnel="kafka-in",direction="from_peer"} 7' in metrics
        assert ('spiffe_tunnel_connections_rejected_total{tunnel="kafka-in",'
                'reason="handshake_error"} 1') in metrics
        assert 'spiffe_tunnel_session_directions_total{tunnel="kafka-in",path="userspace"} 2' \
            in metrics
        assert "spiffe_tunnel_identity_ready 1" in metrics
        code, status = get(aport, "/status")
        s = json.loads(status)
        assert s["identity"]["svids"][0]["spiffe_id"] == "spiffe://b.test/server"
        assert sorted(s["identity"]["trust_domains"]) == ["a.test", "b.test"]
        assert s["tunnels"][0]["name"] == "kafka-in" and s["tunnels"][0]["ready"] is True
        assert get(aport, "/nope")[0] == 404
    finally:
        server.stop()
        backend.close()


def test_not_ready_until_identity_arrives(tmp_path):
    sock = tmp_path / "agent.sock"  # nothing listens here
    d = Daemon(["server", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1",
                "--workload-api", f"unix://{sock}", "--allow-trust-domain", "a.test",
                "--admin", "127.0.0.1:0"], name="server")
    try:
        aport = admin_port(d)
        assert get(aport, "/healthz")[0] == 200
        code, body = get(aport, "/readyz")
        assert code == 503 and "no identity held" in body
        code, metrics = get(aport, "/metrics")
        assert "spiffe_tunnel_identity_ready 0" in metrics or "spiffe_tunnel_identity_ready" \
            not in metrics
    finally:
        assert d.stop() == 0
