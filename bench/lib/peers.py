"""Tunnel pairs under test: how to start each side of each peer.

A pair is `app client → client side (listen L) → server side (listen S) → target T`. Each peer
turns (L, S, T) into two command lines. TLS peers use the same SVIDs and the same pinning:
TLS 1.3 only, TLS_AES_128_GCM_SHA256, and the peer's certificate chain verified against the other
trust domain's CA on both ends. The plain rows do full handshakes (no tickets, no session cache,
no client-side reuse); the `-resume` rows turn each peer's session resumption on at its best
setting, and the multiplexed spiffe-tunnel row carries connections as HTTP/2 CONNECT streams.

A peer may have a `check`: called while the pair still runs, after the connection tests, it
returns (handshakes that were resumed or streams, handshakes seen, how it was counted), so the
report can show that a `-resume` row resumed and a multiplexed row did not hand-shake per
connection.
"""

from __future__ import annotations

import re
import socket
import urllib.request
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
    admin: Optional[tuple] = None  # spiffe-tunnel's admin endpoint (metrics), if any
    log: Optional[Path] = None  # a per-pair log file that check() reads


@dataclass
class Peer:
    name: str
    tls: bool
    forks: bool  # one process (or thread) per connection: memory is measured as PSS
    sides: Optional[Callable] = None  # (pki, workdir, L, S, T) -> [server Side, client Side]
    max_idle: int = 10_000  # idle-connection test size (thread/process-per-connection designs)
    note: str = ""
    tests: Optional[frozenset] = None  # only these tests (None: all)
    check: Optional[Callable] = None  # (sides, stdout logs) -> (resumed, handshakes, how) or None


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(admin: tuple, metric: str, tunnel: str) -> Optional[float]:
    """One series of a spiffe-tunnel's /metrics (summed over other labels); None if absent."""
    with urllib.request.urlopen(f"http://{_hp(admin)}/metrics", timeout=5) as r:
        text = r.read().decode()
    vals = [float(m.group(2)) for m in re.finditer(rf'^{metric}\{{([^}}]*)\}} (\S+)$', text, re.M)
            if f'tunnel="{tunnel}"' in m.group(1)]
    return sum(vals) if vals else None


# --- spiffe-tunnel ------------------------------------------------------------------------------
def spiffe_tunnel_sides(binary: Path, threads: Optional[int], busy_poll: str = "",
                        resume: bool = False):
    def sides(pki: Pki, wd: Path, L, S, T):
        common = [str(binary), "--log-level", "warn"]
        if threads:
            common += ["--threads", str(threads)]
        if busy_poll:
            common += ["--busy-poll", busy_poll]
        tls = ["--cipher-suites", SUITE, "--ktls", "auto"]
        admin = None
        if resume:  # the check reads the server end's resumption counter
            tls += ["--session-resumption"]
            admin = ("127.0.0.1", free_port())
        srv = common + (["--admin", _hp(admin)] if admin else []) + ["server", "--listen", _hp(S), "--target", _hp(T),
                        "--cert", str(pki.server_cert), "--key", str(pki.server_key),
                        "--bundle", f"client.bench={pki.ca_client}",
                        "--allow-id", pki.client_id] + tls
        cli = common + ["client", "--listen", _hp(L), "--target", _hp(S),
                        "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                        "--bundle", f"server.bench={pki.ca_server}",
                        "--expect-id", pki.server_id] + tls
        return [Side("server", srv, admin=admin), Side("client", cli)]
    return sides


def spiffe_tunnel_check(sides, logs):
    """Resumed handshakes at the server end, from its own counter (the ground truth)."""
    admin = sides[0].admin
    total = scrape(admin, "spiffe_tunnel_handshake_duration_seconds_count", "server")
    resumed = scrape(admin, "spiffe_tunnel_handshakes_resumed_total", "server")
    if resumed is None:
        return None  # this build has no resumption counter: unverified
    return resumed, total or 0, "server end's `spiffe_tunnel_handshakes_resumed_total`"


def spiffe_tunnel_mux_sides(binary: Path, threads: Optional[int]):
    """A client tunnel with `multiplex:` towards a server tunnel with multiplex on (run -c)."""
    def sides(pki: Pki, wd: Path, L, S, T):
        def conf(role, listen, target, cert, key, bundle, rule, mux):
            admin = ("127.0.0.1", free_port())
            path = wd / f"mux-{role}.yaml"
            path.write_text(
                "identity:\n  files:\n"
                f"    cert: {cert}\n    key: {key}\n    bundles: {{ {bundle} }}\n"
                f"log_level: warn\nadmin: {{ listen: \"{_hp(admin)}\" }}\n"
                + (f"threads: {threads}\n" if threads else "") +
                f"tunnels:\n  - name: {role}\n    mode: {role}\n    listen: {_hp(listen)}\n"
                f"    target: {_hp(target)}\n    {rule}\n    max_connections: 100000\n"
                f"    tls: {{ cipher_suites: {SUITE}, ktls: auto }}\n    multiplex: {mux}\n")
            return Side(role, [str(binary), "run", "-c", str(path)], admin=admin)
        return [conf("server", S, T, pki.server_cert, pki.server_key,
                     f"client.bench: {pki.ca_client}", f"allow: {{ ids: [\"{pki.client_id}\"] }}",
                     "{}"),
                conf("client", L, S, pki.client_cert, pki.client_key,
                     f"server.bench: {pki.ca_server}", f"expect: {{ ids: [\"{pki.server_id}\"] }}",
                     f"{{ authority: \"{_hp(T)}\" }}")]
    return sides


def spiffe_tunnel_mux_check(sides, logs):
    """Streams per carrying-connection handshake at the server end."""
    admin = sides[0].admin
    hs = scrape(admin, "spiffe_tunnel_handshake_duration_seconds_count", "server") or 0
    streams = scrape(admin, "spiffe_tunnel_streams_opened_total", "server") or 0
    return streams, streams + hs, "server end's `streams_opened_total` vs its handshakes"


# --- stunnel ------------------------------------------------------------------------------------
def stunnel_sides(resume: bool = False):
    """resume: the client keeps its session (`sessionResume = yes`, stunnel's default), the server
    caches sessions and issues TLS 1.3 tickets; the server logs at `info`, whose "previous session
    reused" line the check counts."""
    def sides(pki: Pki, wd: Path, L, S, T):
        def conf(role, accept, connect, cert, key, ca, client):
            path = wd / f"stunnel-{role}.conf"
            tls = ("sessionResume = yes\n"
                   if resume else "sessionResume = no\noptions = NO_TICKET\n")
            debug = "info" if resume and not client else "3"
            # `syslog = no`: with no syslog daemon, glibc's LOG_CONS would send every `info` line
            # to the (serial) console, which costs milliseconds per connection.
            path.write_text(
                f"foreground = yes\npid =\ndebug = {debug}\noutput = {wd}/stunnel-{role}.out\n"
                + ("syslog = no\n" if resume else "") +
                f"[t]\nclient = {'yes' if client else 'no'}\naccept = {_hp(accept)}\n"
                f"connect = {_hp(connect)}\ncert = {cert}\nkey = {key}\nCAfile = {ca}\n"
                "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n"
                f"ciphersuites = {SUITE}\n{tls}TIMEOUTidle = 3600\n")
            return path
        s = conf("server", S, T, pki.server_cert, pki.server_key, pki.ca_client, False)
        c = conf("client", L, S, pki.client_cert, pki.client_key, pki.ca_server, True)
        return [Side("server", ["stunnel4", str(s)], log=wd / "stunnel-server.out"),
                Side("client", ["stunnel4", str(c)])]
    return sides


def stunnel_check(sides, logs):
    text = sides[0].log.read_text(errors="replace")
    return (text.count("accepted: previous session reused"),
            text.count("accepted: previous session reused") +
            text.count("accepted: new session negotiated"), "server log (`debug = info`)")


# --- haproxy ------------------------------------------------------------------------------------
_HAPROXY_GLOBAL = ("global\n  maxconn 9950\n  nbthread 2\n  tune.ssl.cachesize 0\n"
                   "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                   "  timeout server 1h\n  maxconn 9950\n")
_HAPROXY_TLS = f"ssl-min-ver TLSv1.3 ciphersuites {SUITE} no-tls-tickets"
# Resumption at haproxy's best: its defaults (client-side reuse, tickets, a 20,000-entry cache);
# the server frontend logs ssl_fc_is_resumed per connection to stdout.
_HAPROXY_GLOBAL_RESUME = ("global\n  maxconn 9950\n  nbthread 2\n  log stdout format raw local0\n"
                          "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                          "  timeout server 1h\n  maxconn 9950\n")
_HAPROXY_TLS_RESUME = f"ssl-min-ver TLSv1.3 ciphersuites {SUITE}"


def haproxy_sides(tls: bool, busy_polling: bool = False, resume: bool = False):
    glob = _HAPROXY_GLOBAL_RESUME if resume else _HAPROXY_GLOBAL
    if busy_polling:
        glob = glob.replace("global\n", "global\n  busy-polling\n", 1)
    opts = _HAPROXY_TLS_RESUME if resume else _HAPROXY_TLS
    reuse = "" if resume else "no-ssl-reuse "

    def sides(pki: Pki, wd: Path, L, S, T):
        tag = ("haproxy" if tls else "relay-haproxy") + ("-bp" if busy_polling else "") + \
            ("-resume" if resume else "")
        srv_bind = (f"  bind {_hp(S)}" + (f" ssl crt {pki.server_combined} ca-file {pki.ca_client}"
                                          f" verify required {opts}" if tls else ""))
        cli_server = (f"  server s {_hp(S)}" + (f" ssl crt {pki.client_combined} ca-file "
                                                f"{pki.ca_server} verify required {reuse}"
                                                f"{opts}" if tls else ""))
        log = "  log global\n  log-format \"resumed=%[ssl_fc_is_resumed]\"\n" if resume else ""
        s = wd / f"{tag}-server.cfg"
        s.write_text(glob + f"frontend f\n{srv_bind}\n{log}  default_backend b\n"
                     f"backend b\n  server s {_hp(T)}\n")
        c = wd / f"{tag}-client.cfg"
        c.write_text(glob + f"frontend f\n  bind {_hp(L)}\n  default_backend b\n"
                     f"backend b\n{cli_server}\n")
        return [Side("server", ["haproxy", "-db", "-f", str(s)]),
                Side("client", ["haproxy", "-db", "-f", str(c)])]
    return sides


def haproxy_check(sides, logs):
    text = logs[0]
    return (text.count("resumed=1"), text.count("resumed=1") + text.count("resumed=0"),
            "server frontend log, `%[ssl_fc_is_resumed]`")


# --- nginx (stream module) ----------------------------------------------------------------------
def nginx_sides(resume: bool = False):
    """resume: nginx's defaults (client `proxy_ssl_session_reuse on`, server tickets on) plus a
    shared session cache; the server logs `$ssl_session_reused` per connection."""
    def sides(pki: Pki, wd: Path, L, S, T):
        def tls(prefix):
            return (f"    {prefix}protocols TLSv1.3;\n"
                    f"    {prefix}conf_command Ciphersuites {SUITE};\n")

        def conf(role, body):
            d = wd / f"nginx-{role}"
            d.mkdir(exist_ok=True)
            logfmt = (f"  log_format r \"resumed=$ssl_session_reused\";\n"
                      f"  access_log {d}/access.log r;\n" if resume and role == "server" else "")
            (d / "nginx.conf").write_text(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
                "user root;\nworker_processes 2;\nworker_rlimit_nofile 100000;\ndaemon off;\n"
                f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
                "events { worker_connections 50000; multi_accept on; }\n"
                f"stream {{\n{logfmt}  server {{\n{body}\n    proxy_timeout 1h;\n  }}\n}}\n")
            return Side(role, ["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-e",
                               str(d / "error.log")], log=d / "access.log")
        srv_tls = ("    ssl_session_cache shared:bench:10m;\n    ssl_session_tickets on;\n"
                   if resume else "    ssl_session_cache off;\n    ssl_session_tickets off;\n")
        srv = conf("server",
                   f"    listen {_hp(S)} ssl;\n    proxy_pass {_hp(T)};\n"
                   f"    ssl_certificate {pki.server_cert};\n"
                   f"    ssl_certificate_key {pki.server_key};\n"
                   f"    ssl_client_certificate {pki.ca_client};\n    ssl_verify_client on;\n"
                   + srv_tls + tls("ssl_"))
        cli = conf("client",
                   f"    listen {_hp(L)};\n    proxy_pass {_hp(S)};\n    proxy_ssl on;\n"
                   f"    proxy_ssl_certificate {pki.client_cert};\n"
                   f"    proxy_ssl_certificate_key {pki.client_key};\n"
                   f"    proxy_ssl_trusted_certificate {pki.ca_server};\n"
                   f"    proxy_ssl_verify on;\n    proxy_ssl_name tunnel.bench;\n"
                   f"    proxy_ssl_session_reuse {'on' if resume else 'off'};\n"
                   + tls("proxy_ssl_"))
        return [srv, cli]
    return sides


def nginx_check(sides, logs):
    text = sides[0].log.read_text() if sides[0].log.exists() else ""
    return (text.count("resumed=r"), text.count("resumed=r") + text.count("resumed=."),
            "server access log, `$ssl_session_reused`")


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
    conn, conn_bulk = frozenset({"conn"}), frozenset({"conn", "bulk"})
    return [
        Peer("direct", False, False, None, note="app client → app server, no tunnel"),
        Peer("relay-haproxy", False, False, haproxy_sides(False),
             note="plain TCP relay pair, haproxy mode tcp, 2 threads each, no splice"),
        Peer("relay-socat", False, True, socat_sides(False), max_idle=1000,
             note="plain TCP relay pair, socat fork per connection"),
        Peer("spiffe-tunnel", True, False, spiffe_tunnel_sides(binary, threads),
             note="dedicated connections, a full mTLS handshake each (the default)"),
        # Right after dedicated spiffe-tunnel, so their bulk runs are next to each other in
        # every repetition (the rotation never separates them) for the paired ratio.
        Peer("spiffe-tunnel-mux", True, False, spiffe_tunnel_mux_sides(binary, threads),
             tests=conn_bulk, check=spiffe_tunnel_mux_check,
             note="client `multiplex: {authority: TARGET}` → server `multiplex: {}`: one HTTP/2 "
                  "CONNECT stream per connection over the carrying mTLS connections (defaults: "
                  "1 per data thread, 100 streams each)"),
        Peer("stunnel", True, True, stunnel_sides(), max_idle=1000,
             note="stunnel4, one thread per connection; full handshakes (`sessionResume = no`, "
                  "`options = NO_TICKET`)"),
        Peer("haproxy", True, False, haproxy_sides(True),
             note="haproxy mode tcp, 2 threads each; full handshakes (`no-ssl-reuse "
                  "no-tls-tickets`, `tune.ssl.cachesize 0`)"),
        Peer("nginx", True, False, nginx_sides(),
             note="nginx stream module, 2 workers each; full handshakes "
                  "(`proxy_ssl_session_reuse off`, no session cache, no tickets)"),
        Peer("socat", True, True, socat_sides(True), max_idle=1000,
             note="socat OPENSSL, fork per connection; full handshakes (no tickets)"),
        # Busy polling trades CPU for latency: measured in the connection/latency test only, and
        # against the one peer that has the same option.
        Peer("spiffe-tunnel-bp", True, False, spiffe_tunnel_sides(binary, threads, "200us"),
             note="spiffe-tunnel --busy-poll 200us", tests=conn),
        Peer("haproxy-bp", True, False, haproxy_sides(True, busy_polling=True),
             note="haproxy mode tcp, 2 threads each, `busy-polling`", tests=conn),
        # New connections past the handshake: resumption (every peer at its best setting) and
        # spiffe-tunnel's multiplexed pair (also in the bulk test, against dedicated).
        Peer("spiffe-tunnel-resume", True, False,
             spiffe_tunnel_sides(binary, threads, resume=True), tests=conn,
             check=spiffe_tunnel_check,
             note="`--session-resumption` on both ends (`tls: {session_resumption: true}`): "
                  "TLS 1.3 PSK with (EC)DHE, tickets only between fully verified tunnels"),
        Peer("stunnel-resume", True, True, stunnel_sides(resume=True), max_idle=1000, tests=conn,
             check=stunnel_check,
             note="stunnel4 with its session cache and TLS 1.3 tickets (`sessionResume = yes`, "
                  "the default; default cache size); server end logs at `info`, `syslog = no`"),
        Peer("haproxy-resume", True, False, haproxy_sides(True, resume=True), tests=conn,
             check=haproxy_check,
             note="haproxy at its defaults: client-side session reuse, TLS 1.3 tickets, "
                  "20,000-entry session cache; server frontend logs `ssl_fc_is_resumed`"),
        Peer("nginx-resume", True, False, nginx_sides(resume=True), tests=conn,
             check=nginx_check,
             note="nginx with `proxy_ssl_session_reuse on` (its default), tickets on (default) "
                  "and `ssl_session_cache shared:bench:10m`; server logs `$ssl_session_reused`"),
    ]
