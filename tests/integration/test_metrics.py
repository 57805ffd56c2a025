"""/metrics as an operator graphs it, read by prometheus_client's own text-format parser (not
ours): byte counters that rise while a session is still open, handshake and session duration
histograms whose counts match the sessions made, sessions ended by reason, OPA decisions by
outcome with latency, Workload API reconnects, build info, and HEAD without a body. Real daemons
on loopback, PEM-file identities, a real OPA server for the OPA part. (OPA timeouts are checked in
test_opa.py, the Workload API connection gauge against a real SPIRE agent in
test_workload_api.py, the admin endpoint's limits in test_admin.py.)"""

from __future__ import annotations

import re
import socket
import struct

from daemon import REPO, Backend, Daemon, exchange
from helpers import wait_for
from prom import scrape
from test_admin import admin_port
from test_files_tunnels import A, B, CLIENT_ID, SERVER_ID, bundles, pki  # noqa: F401 (fixture)
from test_opa import opa  # noqa: F401 (fixture)


def project_version() -> str:
    cmake = (REPO / "CMakeLists.txt").read_text()
    return re.search(r"project\(spiffe_tunnel VERSION (\S+)", cmake).group(1)


def start_pair(pki, backend_port, server_extra=(), client_extra=(),
               allow=("--allow-id", CLIENT_ID)):
    cert, key = pki["server"]
    server = Daemon(["server", "--name", "kafka-in", "--listen", "127.0.0.1:0",
                     "--target", f"127.0.0.1:{backend_port}", "--cert", cert, "--key", key,
                     *bundles(pki, A, B), *allow, "--admin", "127.0.0.1:0", *server_extra],
                    name="server")
    sadmin, sport = admin_port(server), server.wait_listening()
    ccert, ckey = pki["client"]
    client = Daemon(["client", "--name", "app-out", "--listen", "127.0.0.1:0",
                     "--target", f"127.0.0.1:{sport}", "--cert", ccert, "--key", ckey,
                     *bundles(pki, A, B), "--expect-id", SERVER_ID, "--admin", "127.0.0.1:0",
                     *client_extra], name="client")
    cadmin, cport = admin_port(client), client.wait_listening()
    return server, sadmin, client, cadmin, cport


def recv_exactly(s: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        data = s.recv(min(1 << 20, n - got))
        assert data, f"EOF after {got} of {n} bytes"
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def bytes_of(sc: Scrape, tunnel: str) -> tuple[float, float]:
    return (sc.value("spiffe_tunnel_bytes_total", tunnel=tunnel, direction="from_peer"),
            sc.value("spiffe_tunnel_bytes_total", tunnel=tunnel, direction="to_peer"))


def test_bytes_rise_while_open_and_histograms_count_sessions(pki):
    backend = Backend("echo")
    server, sadmin, client, cadmin, cport = start_pair(pki, backend.port)
    try:
        # One long session: counters must follow the traffic before the session ends.
        with socket.create_connection(("127.0.0.1", cport), timeout=30) as s:
            s.sendall(b"a" * 100_000)
            recv_exactly(s, 100_000)
            wait_for(lambda: bytes_of(scrape(sadmin), "kafka-in") == (100_000, 100_000),
                     timeout=10, desc="server byte counters at 100000 while open")
            wait_for(lambda: bytes_of(scrape(cadmin), "app-out") == (100_000, 100_000),
                     timeout=10, desc="client byte counters at 100000 while open")
            open_scrape = scrape(sadmin)
            assert open_scrape.value("spiffe_tunnel_sessions_active", tunnel="kafka-in") == 1
            assert not [v for _, v in open_scrape.with_name("spiffe_tunnel_sessions_closed_total",
                                                            tunnel="kafka-in") if v]
            assert open_scrape.histogram("spiffe_tunnel_session_duration_seconds",
                                         tunnel="kafka-in")[2] == 0
            s.sendall(b"b" * 50_000)
            recv_exactly(s, 50_000)
            wait_for(lambda: bytes_of(scrape(sadmin), "kafka-in") == (150_000, 150_000),
                     timeout=10, desc="server byte counters at 150000 while open")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(10) == b""
        server.wait_for(r"closed peer=\S+ bytes_from_peer=150000 bytes_to_peer=150000 .*\(closed\)")
        # Two short sessions, then one the application resets.
        assert exchange(cport, b"x" * 1000) == b"x" * 1000
        assert exchange(cport, b"y" * 2000) == b"y" * 2000
        with socket.create_connection(("127.0.0.1", cport), timeout=30) as s:
            s.sendall(b"z" * 3000)
            recv_exactly(s, 3000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wait_for(lambda: server.count(r"session=\d+ .* closed peer=") == 4, timeout=10,
                 desc="four closed sessions on the server")
        wait_for(lambda: client.count(r"session=\d+ .* closed peer=") == 4, timeout=10,
                 desc="four closed sessions on the client")

        sent = 150_000 + 1000 + 2000 + 3000
        for port, tunnel, broke in ((sadmin, "kafka-in", "peer_error"),
                                    (cadmin, "app-out", "plain_error")):
            sc = scrape(port)
            assert bytes_of(sc, tunnel) == (sent, sent)
            assert sc.value("spiffe_tunnel_sessions_active", tunnel=tunnel) == 0
            closed = {d["reason"]: v for d, v in
                      sc.with_name("spiffe_tunnel_sessions_closed_total", tunnel=tunnel)}
            assert closed["eof"] == 3 and closed[broke] == 1, closed
            assert sum(closed.values()) == 4, closed
            assert {"idle_timeout", "draining", "aborted"} <= closed.keys()
            hs_buckets, hs_sum, hs_count = sc.histogram(
                "spiffe_tunnel_handshake_duration_seconds", tunnel=tunnel)
            assert hs_count == 4 and 0 < hs_sum < 40
            assert [le for le, _ in hs_buckets][0] == 0.001
            sd_buckets, sd_sum, sd_count = sc.histogram(
                "spiffe_tunnel_session_duration_seconds", tunnel=tunnel)
            assert sd_count == 4 and sd_sum > 0
            assert sd_buckets[-2][0] == 86400
            assert sc.types["spiffe_tunnel_session_duration_seconds"] == "histogram"
            info = sc.with_name("spiffe_tunnel_build_info")
            assert len(info) == 1 and info[0][1] == 1
            assert info[0][0]["version"] == project_version()
            assert info[0][0]["openssl"].startswith("OpenSSL 3")
    finally:
        client.stop()
        server.stop()
        backend.close()


def test_idle_timeout_is_a_close_reason(pki):
    backend = Backend("echo")
    server, sadmin, client, cadmin, cport = start_pair(pki, backend.port,
                                                       server_extra=("--idle-timeout", "1s"))
    try:
        with socket.create_connection(("127.0.0.1", cport), timeout=30) as s:
            s.sendall(b"hello")
            recv_exactly(s, 5)
            assert s.recv(10) == b""  # the server tunnel ends the idle session
        server.wait_for(r"closed peer=.*\(idle timeout \(1s\)\)")
        sc = scrape(sadmin)
        assert sc.value("spiffe_tunnel_sessions_closed_total", tunnel="kafka-in",
                        reason="idle_timeout") == 1
        assert sc.histogram("spiffe_tunnel_session_duration_seconds", tunnel="kafka-in")[2] == 1
        assert sc.value("spiffe_tunnel_session_duration_seconds_sum", tunnel="kafka-in") >= 1.0
    finally:
        client.stop()
        server.stop()
        backend.close()


def head(port: int, path: str) -> bytes:
    """Everything the admin endpoint sends for a HEAD request, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_head_gets_headers_without_body(pki):
    cert, key = pki["server"]
    d = Daemon(["server", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1",
                "--cert", cert, "--key", key, *bundles(pki, A, B), "--allow-id", CLIENT_ID,
                "--admin", "127.0.0.1:0"], name="server")
    try:
        port = admin_port(d)
        d.wait_listening()
        for path, get_body in (("/healthz", b"ok\n"), ("/metrics", None), ("/nope", None)):
            reply = head(port, path)
            head_end = reply.index(b"\r\n\r\n") + 4
            assert reply[head_end:] == b"", f"HEAD {path} sent a body"
            length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", reply).group(1))
            if get_body is not None:
                assert length == len(get_body)
            else:
                assert length > 0
        assert head(port, "/healthz").startswith(b"HTTP/1.1 200 OK\r\n")
        assert head(port, "/nope").startswith(b"HTTP/1.1 404 ")
    finally:
        d.stop()


def test_opa_decisions_by_outcome_with_latency(pki, opa, tmp_path):
    backend = Backend("echo")
    url = f"http://127.0.0.1:{opa}/v1/data/tunnels/authz/allow"
    # OPA is the only rule: every verified peer reaches it.
    server, sadmin, client, cadmin, cport = start_pair(pki, backend.port, allow=(),
                                                       server_extra=("--opa-url", url))
    other = pki["ca"][A].issue("spiffe://a.test/not-in-policy").write(tmp_path, "o")
    ocert, okey = other
    denied = Daemon(["client", "--listen", "127.0.0.1:0", "--target",
                     f"127.0.0.1:{server.wait_listening()}", "--cert", ocert, "--key", okey,
                     *bundles(pki, A, B), "--expect-id", SERVER_ID], name="denied-client")
    try:
        assert exchange(cport, b"one") == b"one"   # asks OPA: allow
        assert exchange(cport, b"two") == b"two"   # cached allow
        try:
            exchange(denied.wait_listening(), b"no")
        except ConnectionResetError:
            pass
        server.wait_for(r"rejected reason=not_authorized: .*OPA denied")
        sc = scrape(sadmin)
        outcomes = {d["outcome"]: v for d, v in
                    sc.with_name("spiffe_tunnel_opa_decisions_total", tunnel="kafka-in")}
        assert outcomes == {"allow": 1, "cached_allow": 1, "deny": 1, "cached_deny": 0,
                            "error": 0, "timeout": 0}, outcomes
        _, total, count = sc.histogram("spiffe_tunnel_opa_decision_duration_seconds",
                                       tunnel="kafka-in")
        assert count == 2 and 0 < total < 4  # the two queries sent, not the cache hit
    finally:
        denied.stop()
        client.stop()
        server.stop()
        backend.close()


def test_workload_api_reconnects_rise_while_unreachable(tmp_path):
    sock = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))  # the socket file exists, nobody accepts: connect is refused
    listener.close()
    d = Daemon(["server", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1",
                "--workload-api", f"unix://{sock}", "--allow-trust-domain", "a.test",
                "--admin", "127.0.0.1:0"], name="server")
    try:
        port = admin_port(d)
        first = wait_for(lambda: scrape(port).value(
            "spiffe_tunnel_workload_api_reconnects_total"), timeout=15,
            desc="a first reconnect")
        wait_for(lambda: scrape(port).value("spiffe_tunnel_workload_api_reconnects_total")
                 > first, timeout=15, desc="reconnects rising")
        sc = scrape(port)
        assert sc.value("spiffe_tunnel_workload_api_connected") == 0
        assert sc.value("spiffe_tunnel_identity_ready") == 0
    finally:
        assert d.stop() == 0
