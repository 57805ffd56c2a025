"""PROXY protocol v2 from a server tunnel to its target, decoded by parsers nobody here wrote:
github.com/pires/go-proxyproto (in the Go test peer's `proxy-backend`) and HAProxy's own
`accept-proxy` (Debian's haproxy). A real TLS client (Python's ssl, i.e. OpenSSL) connects with a
client SVID; the tests compare what the parsers decoded with what that client knows of its own
connection: its address and port, the TLS version and cipher it negotiated, the SNI it sent, and
its SPIFFE ID. Runs as any user, on loopback only."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from daemon import Daemon, run_once
from helpers import ManagedProcess, free_port, wait_for
from spire import ToolsUnavailable, locate_peer
from test_files_tunnels import A, B, CLIENT_ID, bundles, pki  # noqa: F401 (fixture)

SNI = "orders-db.internal.test"


@pytest.fixture(scope="module")
def peer_bin():
    try:
        return locate_peer()
    except ToolsUnavailable as exc:
        pytest.skip(f"the go-proxyproto backend needs the Go toolchain: {exc}")


class ProxyBackend:
    """`spiffe-peer proxy-backend`: decodes the header with go-proxyproto, reports it, echoes."""

    def __init__(self, peer_bin, tmp_path, host="127.0.0.1"):
        self.proc = ManagedProcess([peer_bin, "proxy-backend", "--listen", f"{host}:0"],
                                   tmp_path / "proxy-backend.log", name="proxy-backend",
                                   capture_stdout=True).start()
        self.port = int(self.proc.wait_for_line(r"^listening .*:(\d+)$", timeout=15).group(1))

    def report(self, index=0, timeout=15.0):
        """The decoded header of the index-th connection, as the backend printed it."""
        wait_for(lambda: len([l for l in self.proc.lines if l.startswith("proxy ")]) > index,
                 timeout=timeout, desc="proxy report")
        line = [l for l in self.proc.lines if l.startswith("proxy ")][index]
        return json.loads(line[len("proxy "):])

    def stop(self):
        self.proc.stop()


def start_server(pki, target_port, *extra, listen="127.0.0.1:0"):
    cert, key = pki["server"]
    d = Daemon(["server", "--listen", listen, "--target", f"127.0.0.1:{target_port}",
                "--cert", cert, "--key", key, *bundles(pki, A, B), "--allow-id", CLIENT_ID,
                *extra], name="server")
    return d, d.wait_listening()


def tls_exchange(pki, port, payload, *, host="127.0.0.1", tls_max=None, sni=SNI):
    """Connects as the client SVID, sends `payload`, reads until the server closes.

    Returns (reply, facts): facts are what this client knows of its connection.
    """
    cert, key = pki["client"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE: the server is checked by its ID, not a host name
    ctx.load_verify_locations(pki[f"bundle:{B}"])
    ctx.load_cert_chain(cert, key)
    if tls_max:
        ctx.maximum_version = tls_max
    with socket.create_connection((host, port), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            local = s.getsockname()
            facts = {"ip": local[0], "port": local[1], "version": s.version(),
                     "cipher": s.cipher()[0]}
            s.sendall(payload)
            reply = b""
            while len(reply) < len(payload):
                data = s.recv(65536)
                if not data:
                    break
                reply += data
    return reply, facts


@pytest.mark.parametrize("tls_version", ["1.3", "1.2"])
def test_go_proxyproto_decodes_address_tls_facts_and_spiffe_id(pki, peer_bin, tmp_path,
                                                                tls_version):
    backend = ProxyBackend(peer_bin, tmp_path)
    server, port = start_server(pki, backend.port, "--proxy-protocol", "v2",
                                "--tls-min-version", "1.2")
    try:
        payload = os.urandom(200_000)
        tls_max = ssl.TLSVersion.TLSv1_2 if tls_version == "1.2" else None
        reply, facts = tls_exchange(pki, port, payload, tls_max=tls_max)
        assert reply == payload  # the backend saw exactly the peer's bytes after the header
        r = backend.report()
        assert r["proxy"] is True and "error" not in r, r
        assert (r["version"], r["command"], r["family"]) == (2, "PROXY", "tcp4")
        assert r["source"] == {"ip": facts["ip"], "port": facts["port"]}
        assert r["destination"] == {"ip": "127.0.0.1", "port": port}
        assert r["spiffe_id"] == CLIENT_ID
        assert r["authority"] == SNI
        assert facts["version"] == f"TLSv{tls_version}"
        assert r["ssl"] == {"client_ssl": True, "client_cert_conn": True,
                            "client_cert_sess": True, "verified": True,
                            "version": facts["version"], "cipher": facts["cipher"]}
        assert r["crc32c"] == "valid"
        assert r["tlv_types"] == [0x02, 0x20, 0xD0, 0x03]
        server.wait_for(rf"opened peer={CLIENT_ID} .* proxy_protocol=v2")
    finally:
        server.stop()
        backend.stop()


def test_ipv6_listener_sends_an_ipv6_header(pki, peer_bin, tmp_path):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    backend = ProxyBackend(peer_bin, tmp_path)
    server, port = start_server(pki, backend.port, "--proxy-protocol", "v2",
                                listen="[::1]:0")
    try:
        reply, facts = tls_exchange(pki, port, b"over IPv6", host="::1", sni=None)
        assert reply == b"over IPv6"
        r = backend.report()
        assert r["family"] == "tcp6"
        assert r["source"] == {"ip": "::1", "port": facts["port"]}
        assert r["destination"] == {"ip": "::1", "port": port}
        assert r["spiffe_id"] == CLIENT_ID
        assert "authority" not in r  # no SNI sent, no PP2_TYPE_AUTHORITY
        assert r["crc32c"] == "valid"
    finally:
        server.stop()
        backend.stop()


def test_without_proxy_protocol_the_target_gets_only_the_peers_bytes(pki, peer_bin, tmp_path):
    backend = ProxyBackend(peer_bin, tmp_path)
    server, port = start_server(pki, backend.port)
    try:
        payload = b"only the peer's bytes, nothing before them"
        reply, _ = tls_exchange(pki, port, payload)
        assert reply == payload
        r = backend.report()
        assert r["proxy"] is False, r
        line = server.wait_for(rf"opened peer={CLIENT_ID}").group(0)
        assert "proxy_protocol" not in line
    finally:
        server.stop()
        backend.stop()


def test_yaml_tunnel_sends_the_header_and_client_tunnels_refuse_it(pki, peer_bin, tmp_path):
    cert, key = pki["server"]
    backend = ProxyBackend(peer_bin, tmp_path)
    cfg = tmp_path / "server.yaml"
    cfg.write_text(f"""identity:
  files:
    cert: {cert}
    key: {key}
    bundles: {{"{A}": {pki[f'bundle:{A}']}, "{B}": {pki[f'bundle:{B}']}}}
tunnels:
  - name: orders
    mode: server
    listen: 127.0.0.1:0
    target: 127.0.0.1:{backend.port}
    allow: {{ids: ["{CLIENT_ID}"]}}
    proxy_protocol: v2
""")
    server = Daemon(["run", "-c", cfg], name="server")
    try:
        port = server.wait_tunnel_port("orders")
        server.wait_for(r"tunnel=orders mode=server listening on .* proxy_protocol=v2")
        reply, facts = tls_exchange(pki, port, b"ping")
        assert reply == b"ping"
        r = backend.report()
        assert r["source"]["port"] == facts["port"] and r["spiffe_id"] == CLIENT_ID
    finally:
        server.stop()
        backend.stop()

    client_cfg = tmp_path / "client.yaml"
    client_cfg.write_text(cfg.read_text().replace("mode: server", "mode: client")
                          .replace("allow:", "expect:"))
    out = run_once(["check-config", "-c", client_cfg])
    assert out.returncode == 2
    assert f"{client_cfg}:" in out.stderr
    assert 'tunnel "orders": proxy_protocol is for server tunnels' in out.stderr

    cert_c, key_c = pki["client"]
    out = run_once(["client", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1",
                    "--cert", cert_c, "--key", key_c, *bundles(pki, A, B),
                    "--expect-id", CLIENT_ID, "--proxy-protocol", "v2"])
    assert out.returncode == 2
    assert 'tunnel "client": proxy_protocol is for server tunnels' in out.stderr
    assert "--proxy-protocol" in run_once(["server", "--help"]).stdout
    assert "--proxy-protocol" not in run_once(["client", "--help"]).stdout


HAPROXY_CFG = """defaults
  mode http
  timeout client 10s
  timeout connect 5s
  timeout server 10s
frontend fe
  bind 127.0.0.1:{port} accept-proxy
  http-request return status 200 content-type text/plain lf-string "{samples}"
"""
# What HAProxy 2.6 can say about a PROXY header it accepted (fc_pp_tlv came in 2.9).
HAPROXY_SAMPLES = " ".join(f"{name}=%[{fetch}]" for name, fetch in [
    ("src", "src"), ("src_port", "src_port"), ("dst", "dst"), ("dst_port", "dst_port"),
    ("authority", "fc_pp_authority"), ("proxied", "fc_rcvd_proxy")])


def test_haproxy_accept_proxy_reads_the_header(pki, tmp_path):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (scripts/setup-deps.sh installs it)")
    hport = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=hport, samples=HAPROXY_SAMPLES))
    check = subprocess.run([haproxy, "-c", "-f", cfg], capture_output=True, text=True, timeout=15)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = ManagedProcess([haproxy, "-db", "-f", cfg], tmp_path / "haproxy.log",
                          name="haproxy").start()
    server = None
    try:
        wait_for(lambda: _port_open(hport), timeout=10, desc="haproxy listening")
        server, port = start_server(pki, hport, "--proxy-protocol", "v2")
        request = b"GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
        reply, facts = _tls_request(pki, port, request)
        body = reply.split(b"\r\n\r\n", 1)[1].decode()
        assert reply.startswith(b"HTTP/1.1 200"), reply
        # HAProxy checks PP2_TYPE_CRC32C and drops a header whose checksum is wrong, so a reply
        # at all shows the checksum right.
        assert body == (f"src={facts['ip']} src_port={facts['port']} dst=127.0.0.1 "
                        f"dst_port={port} authority={SNI} proxied=1")
    finally:
        if server:
            server.stop()
        proc.stop()


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tls_request(pki, port, request):
    cert, key = pki["client"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki[f"bundle:{B}"])
    ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname=SNI) as s:
            local = s.getsockname()
            s.sendall(request)
            reply = b""
            while True:
                try:
                    data = s.recv(65536)
                except ssl.SSLEOFError:
                    break
                if not data:
                    break
                reply += data
    return reply, {"ip": local[0], "port": local[1]}
