"""Tunnel pairs under test: how to start each side of each peer.

A pair is `app client → client side (listen L) → server side (listen S) → target T`. Each peer
turns (L, S, T) into two command lines. TLS peers use the same SVIDs and the same pinning:
TLS 1.3 only, TLS_AES_128_GCM_SHA256, no session resumption (no tickets, no session cache, no
client-side reuse), and the peer's certificate chain verified against the other trust domain's CA
on both ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

SUITE = "TLS_AES_128_GCM_SHA256"


@dataclass
class Pki:
    dir: Path
    server_cert: Path
    server_key: Path
    server_combined: Path  # cert + key in one PEM (haproxy)
    client_cert: Path
    client_key: Path
    client_combined: Path
    ca_server: Path  # root of the server's trust domain (trusted by the client side)
    ca_client: Path  # root of the client's trust domain (trusted by the server side)
    server_id: str
    client_id: str
    openssl_conf: Path  # pins TLS 1.3 + suite + no tickets for tools without such options


@dataclass
class Side:
    name: str
    argv: list[str]
    env: Optional[dict] = None


@dataclass
class Peer:
    name: str
    tls: bool
    forks: bool  # one process (or thread) per connection: memory is measured as PSS
    sides: Optional[Callable] = None  # (pki, workdir, L, S, T) -> [server Side, client Side]
    max_idle: int = 10_000  # idle-connection test size (thread/process-per-connection designs)
    note: str = ""
    tests: Optional[frozenset] = None  # only these tests (None: all)


def _hp(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def mint_pki(directory: Path, repo: Path) -> Pki:
    import sys
    sys.path.insert(0, str(repo / "tests" / "integration"))
    from pki import CA  # noqa: E402  (the integration tests' independent SVID minting)

    directory.mkdir(parents=True, exist_ok=True)
    ca_s, ca_c = CA("server.bench"), CA("client.bench")
    sid, cid = "spiffe://server.bench/tunnel-server", "spiffe://client.bench/tunnel-client"
    # A DNS SAN next to the SPIFFE ID lets nginx/socat, which insist on checking a host name,
    # verify the server; the SVID rules allow extra SAN types beside the one URI.
    srv = ca_s.issue(sid, dns=["tunnel.bench"])
    cli = ca_c.issue(cid, dns=["client.bench"])
    srv.write(directory, "server")
    cli.write(directory, "client")
    (directory / "server-combined.pem").write_bytes(srv.cert_pem() + srv.key_pem())
    (directory / "client-combined.pem").write_bytes(cli.cert_pem() + cli.key_pem())
    ca_s.write_bundle(directory / "ca-server.pem")
    ca_c.write_bundle(directory / "ca-client.pem")
    conf = directory / "openssl-pin.cnf"
    conf.write_text(
        "openssl_conf = pin\n[pin]\nssl_conf = ssl_sect\n[ssl_sect]\n"
        "system_default = sys_default\n[sys_default]\n"
        f"MinProtocol = TLSv1.3\nCiphersuites = {SUITE}\nOptions = -SessionTicket\n"
        "NumTickets = 0\n")
    return Pki(directory, directory / "server.pem", directory / "server.key",
               directory / "server-combined.pem", directory / "client.pem",
               directory / "client.key", directory / "client-combined.pem",
               directory / "ca-server.pem", directory / "ca-client.pem", sid, cid, conf)


# --- spiffe-tunnel ------------------------------------------------------------------------------
def spiffe_tunnel_sides(binary: Path, threads: Optional[int], busy_poll: str = ""):
    def sides(pki: Pki, wd: Path, L, S, T):
        common = [str(binary), "--log-level", "warn"]
        if threads:
            common += ["--threads", str(threads)]
        if busy_poll:
            common += ["--busy-poll", busy_poll]
        tls = ["--cipher-suites", SUITE, "--ktls", "auto"]
        srv = common + ["server", "--listen", _hp(S), "--target", _hp(T),
                        "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                        "--bundle", f"client.bench={pki.ca_client}",
                        "--allow-id", pki.client_id] + tls
        cli = common + ["client", "--listen", _hp(L), "--target", _hp(S),
                        "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                        "--bundle", f"server.bench={pki.ca_server}",
                        "--expect-id", pki.server_id] + tls
        return [Side("server", srv), Side("client", cli)]
    return sides


# --- stunnel ------------------------------------------------------------------------------------
def stunnel_sides(pki: Pki, wd: Path, L, S, T):
    def conf(role, accept, connect, cert, key, ca, client):
        path = wd / f"stunnel-{role}.conf"
        path.write_text(
            f"foreground = yes\npid =\ndebug = 3\noutput = {wd}/stunnel-{role}.out\n"
            f"[t]\nclient = {'yes' if client else 'no'}\naccept = {_hp(accept)}\n"
            f"connect = {_hp(connect)}\ncert = {cert}\nkey = {key}\nCAfile = {ca}\n"
            "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n"
            f"ciphersuites = {SUITE}\nsessionResume = no\noptions = NO_TICKET\n"
            "TIMEOUTidle = 3600\n")
        return path
    s = conf("server", S, T, pki.server_cert, pki.server_key, pki.ca_client, False)
    c = conf("client", L, S, pki.client_cert, pki.client_key, pki.ca_server, True)
    return [Side("server", ["stunnel4", str(s)]), Side("client", ["stunnel4", str(c)])]


# --- haproxy ------------------------------------------------------------------------------------
_HAPROXY_GLOBAL = ("global\n  maxconn 9950\n  nbthread 2\n  tune.ssl.cachesize 0\n"
                   "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                   "  timeout server 1h\n  maxconn 9950\n")
_HAPROXY_TLS = f"ssl-min-ver TLSv1.3 ciphersuites {SUITE} no-tls-tickets"


def haproxy_sides(tls: bool, busy_polling: bool = False):
    glob = _HAPROXY_GLOBAL.replace("global\n", "global\n  busy-polling\n", 1) if busy_polling \
        else _HAPROXY_GLOBAL

    def sides(pki: Pki, wd: Path, L, S, T):
        tag = ("haproxy" if tls else "relay-haproxy") + ("-bp" if busy_polling else "")
        srv_bind = (f"  bind {_hp(S)}" + (f" ssl crt {pki.server_combined} ca-file {pki.ca_client}"
                                          f" verify required {_HAPROXY_TLS}" if tls else ""))
        cli_server = (f"  server s {_hp(S)}" + (f" ssl crt {pki.client_combined} ca-file "
                                                f"{pki.ca_server} verify required no-ssl-reuse "
                                                f"{_HAPROXY_TLS}" if tls else ""))
        s = wd / f"{tag}-server.cfg"
        s.write_text(glob + f"frontend f\n{srv_bind}\n  default_backend b\n"
                     f"backend b\n  server s {_hp(T)}\n")
        c = wd / f"{tag}-client.cfg"
        c.write_text(glob + f"frontend f\n  bind {_hp(L)}\n  default_backend b\n"
                     f"backend b\n{cli_server}\n")
        return [Side("server", ["haproxy", "-db", "-f", str(s)]),
                Side("client", ["haproxy", "-db", "-f", str(c)])]
    return sides


# --- nginx (stream module) ----------------------------------------------------------------------
def nginx_sides(pki: Pki, wd: Path, L, S, T):
    def tls(prefix):
        return (f"    {prefix}protocols TLSv1.3;\n"
                f"    {prefix}conf_command Ciphersuites {SUITE};\n")

    def conf(role, body):
        d = wd / f"nginx-{role}"
        d.mkdir(exist_ok=True)
        (d / "nginx.conf").write_text(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
            "user root;\nworker_processes 2;\nworker_rlimit_nofile 100000;\ndaemon off;\n"
            f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
            "events { worker_connections 50000; multi_accept on; }\n"
            f"stream {{\n  server {{\n{body}\n    proxy_timeout 1h;\n  }}\n}}\n")
        return ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]
    srv = conf("server",
               f"    listen {_hp(S)} ssl;\n    proxy_pass {_hp(T)};\n"
               f"    ssl_certificate {pki.server_cert};\n    ssl_certificate_key {pki.server_key};\n"
               f"    ssl_client_certificate {pki.ca_client};\n    ssl_verify_client on;\n"
               f"    ssl_session_cache off;\n    ssl_session_tickets off;\n" + tls("ssl_"))
    cli = conf("client",
               f"    listen {_hp(L)};\n    proxy_pass {_hp(S)};\n    proxy_ssl on;\n"
               f"    proxy_ssl_certificate {pki.client_cert};\n"
               f"    proxy_ssl_certificate_key {pki.client_key};\n"
               f"    proxy_ssl_trusted_certificate {pki.ca_server};\n    proxy_ssl_verify on;\n"
               f"    proxy_ssl_name tunnel.bench;\n    proxy_ssl_session_reuse off;\n"
               + tls("proxy_ssl_"))
    return [Side("server", srv), Side("client", cli)]


# --- socat --------------------------------------------------------------------------------------
def socat_sides(tls: bool):
    def sides(pki: Pki, wd: Path, L, S, T):
        env = {"OPENSSL_CONF": str(pki.openssl_conf)}
        if tls:
            srv = ["socat", f"OPENSSL-LISTEN:{S[1]},bind={S[0]},fork,reuseaddr,backlog=4096,"
                   f"cert={pki.server_cert},key={pki.server_key},cafile={pki.ca_client},verify=1",
                   f"TCP:{_hp(T)},nodelay"]
            cli = ["socat", f"TCP-LISTEN:{L[1]},bind={L[0]},fork,reuseaddr,backlog=4096,nodelay",
                   f"OPENSSL:{_hp(S)},cert={pki.client_cert},key={pki.client_key},"
                   f"cafile={pki.ca_server},verify=1,commonname=tunnel.bench,nodelay"]
        else:
            srv = ["socat", f"TCP-LISTEN:{S[1]},bind={S[0]},fork,reuseaddr,backlog=4096,nodelay",
                   f"TCP:{_hp(T)},nodelay"]
            cli = ["socat", f"TCP-LISTEN:{L[1]},bind={L[0]},fork,reuseaddr,backlog=4096,nodelay",
                   f"TCP:{_hp(S)},nodelay"]
        return [Side("server", srv, env), Side("client", cli, env)]
    return sides


def all_peers(binary: Path, threads: Optional[int]) -> list[Peer]:
    return [
        Peer("direct", False, False, None, note="app client → app server, no tunnel"),
        Peer("relay-haproxy", False, False, haproxy_sides(False),
             note="plain TCP relay pair, haproxy mode tcp, 2 threads each, no splice"),
        Peer("relay-socat", False, True, socat_sides(False), max_idle=1000,
             note="plain TCP relay pair, socat fork per connection"),
        Peer("spiffe-tunnel", True, False, spiffe_tunnel_sides(binary, threads)),
        Peer("stunnel", True, True, stunnel_sides, max_idle=1000,
             note="stunnel4, one thread per connection"),
        Peer("haproxy", True, False, haproxy_sides(True), note="haproxy mode tcp, 2 threads each"),
        Peer("nginx", True, False, nginx_sides, note="nginx stream module, 2 workers each"),
        Peer("socat", True, True, socat_sides(True), max_idle=1000,
             note="socat OPENSSL, fork per connection"),
        # Busy polling trades CPU for latency: measured in the connection/latency test only, and
        # against the one peer that has the same option.
        Peer("spiffe-tunnel-bp", True, False, spiffe_tunnel_sides(binary, threads, "200us"),
             note="spiffe-tunnel --busy-poll 200us", tests=frozenset({"conn"})),
        Peer("haproxy-bp", True, False, haproxy_sides(True, busy_polling=True),
             note="haproxy mode tcp, 2 threads each, `busy-polling`", tests=frozenset({"conn"})),
    ]
