"""TLS 1.3 session resumption between tunnels (tls.session_resumption): the second connection of a
pair resumes, data flows both ways, and a ticket stops working when it must -- after a bundle or
SVID change (reason unknown_key), after a reload that no longer allows the peer (not_authorized),
when OPA denies the peer without any reload, and at the end of the ticket lifetime, which never
exceeds the client certificate's validity. Interop with implementations nobody here wrote:
openssl s_client (-sess_out / -sess_in) and Go's crypto/tls (spiffe-peer resume-dial /
resume-serve). Real daemons, files-mode PKI, loopback only; runs as any user."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from daemon import Backend, Daemon, echo_roundtrip, exchange, run_once
from helpers import ManagedProcess, free_port
from pki import CA
from prom import scrape
from test_admin import admin_port
from test_opa import _run_opa
from test_proxy_protocol import peer_bin  # noqa: F401 (fixture: the Go peer, or a skip)

A, B = "a.test", "b.test"
CLIENT_ID, SERVER_ID = f"spiffe://{A}/client", f"spiffe://{B}/server"
RESUMED = "spiffe_tunnel_handshakes_resumed_total"
REFUSED = "spiffe_tunnel_resumptions_refused_total"


@pytest.fixture
def pki(tmp_path):
    """CAs for a.test (client site) and b.test (server site). Each side reads its own copies of
    the bundle files, so a test can change one side's trust material without the other's."""
    d = tmp_path / "pki"
    ca = {A: CA(A), B: CA(B)}
    out = {"dir": d, "ca": ca,
           "client": ca[A].issue(CLIENT_ID).write(d, "client"),
           "server": ca[B].issue(SERVER_ID).write(d, "server")}
    for side in ("client", "server"):
        for td in (A, B):
            out[f"{side}:{td}"] = ca[td].write_bundle(d / side / f"{td}.pem")
    return out


def replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def identity_yaml(pki, side: str) -> str:
    cert, key = pki[side]
    return ("identity:\n  files:\n"
            f"    cert: {cert}\n    key: {key}\n"
            f"    bundles: {{ {A}: {pki[f'{side}:{A}']}, {B}: {pki[f'{side}:{B}']} }}\n")


def tls_yaml(resumption: bool, lifetime: str | None) -> str:
    out = f"    tls:\n      session_resumption: {'true' if resumption else 'false'}\n"
    return out + (f"      session_ticket_lifetime: {lifetime}\n" if lifetime else "")


class Site:
    """One daemon (`run -c`) with one tunnel, an admin endpoint and a config it can rewrite and
    reload (SIGHUP)."""

    def __init__(self, tmp_path: Path, side: str, body: str):
        self.side, self.admin = side, free_port()
        self.file = tmp_path / f"{side}.yaml"
        self.daemon: Daemon | None = None
        self.write(body)

    def write(self, body: str) -> None:
        self.file.write_text(body + f"admin: {{ listen: 127.0.0.1:{self.admin} }}\n"
                             "drain_timeout: 2s\n")

    def start(self) -> "Site":
        self.daemon = Daemon(["run", "-c", self.file], name=self.side)
        self.daemon.wait_for(r"listening on")
        admin_port(self.daemon)
        return self

    def reload(self, body: str) -> None:
        self.write(body)
        mark = self.daemon.mark()
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for(r"reload: done", start=mark)

    def value(self, name: str, **labels) -> float:
        return scrape(self.admin).value(name, **labels) or 0.0

    def opened(self, start: int = 0) -> list[str]:
        """resumed=... of every session-opened line from log index `start` on."""
        with self.daemon._cv:
            lines = self.daemon.lines[start:]
        return [m.group(1) for line in lines
                if " opened " in line and (m := re.search(r"resumed=(\w+)", line))]

    def stop(self) -> None:
        if self.daemon:
            self.daemon.stop()


def server_body(pki, port: int, target: int, resumption: bool = True, lifetime: str | None = None,
                allow: str = CLIENT_ID, extra: str = "") -> str:
    return identity_yaml(pki, "server") + (
        "tunnels:\n  - name: res-in\n    mode: server\n"
        f"    listen: 127.0.0.1:{port}\n    target: 127.0.0.1:{target}\n"
        f"    allow: {{ ids: [{allow}] }}\n" + tls_yaml(resumption, lifetime) + extra)


def client_body(pki, server_port: int, resumption: bool = True) -> str:
    return identity_yaml(pki, "client") + (
        "tunnels:\n  - name: res-out\n    mode: client\n    listen: 127.0.0.1:0\n"
        f"    target: 127.0.0.1:{server_port}\n    expect: {{ ids: [{SERVER_ID}] }}\n"
        + tls_yaml(resumption, None))


class Pair:
    """echo backend <- server tunnel res-in <- client tunnel res-out, both from YAML."""

    def __init__(self, pki, tmp_path, server_resumption=True, client_resumption=True,
                 lifetime=None, server_extra=""):
        self.pki, self.backend = pki, Backend("echo")
        self.sport = free_port()
        self.server_args = dict(port=self.sport, target=self.backend.port,
                                resumption=server_resumption, lifetime=lifetime,
                                extra=server_extra)
        self.server = Site(tmp_path, "server", server_body(pki, **self.server_args)).start()
        self.client = Site(tmp_path, "client",
                           client_body(pki, self.sport, client_resumption)).start()
        self.cport = self.client.daemon.wait_tunnel_port("res-out")

    def connect(self, payload: bytes | None = None) -> tuple[bool, str]:
        """One connection through the pair: (payload came back intact, resumed=... of the
        server's session line)."""
        payload = payload or os.urandom(256 << 10)
        mark = self.server.daemon.mark()
        reply = echo_roundtrip(self.cport, payload)
        line = self.server.daemon.wait_for(r" opened .*resumed=(\w+)", start=mark)
        return reply == payload, line.group(1)

    def close(self) -> None:
        self.client.stop()
        self.server.stop()
        self.backend.close()


@pytest.fixture
def pair_factory(pki, tmp_path):
    made: list[Pair] = []

    def make(**kw) -> Pair:
        made.append(Pair(pki, tmp_path, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close()


def refusals(site: Site, tunnel: str = "res-in") -> dict:
    """Non-zero resumptions_refused_total samples of the tunnel, by reason."""
    return refusals_at(site.admin, tunnel)


def refusals_at(admin: int, tunnel: str = "res-in") -> dict:
    return {d["reason"]: v for d, v in scrape(admin).with_name(REFUSED, tunnel=tunnel) if v}


def attempt(port: int, payload: bytes = b"must not arrive") -> bytes:
    try:
        return exchange(port, payload, timeout=15)
    except OSError:
        return b""


# --------------------------------------------------------------------------- between tunnels

def test_second_connection_resumes_and_data_flows_both_ways(pair_factory):
    p = pair_factory()
    assert p.connect() == (True, "false")  # full handshake; the server sends its ticket
    start = time.monotonic()
    assert p.connect(os.urandom(4 << 20)) == (True, "true")
    resumed_s = time.monotonic() - start
    p.client.daemon.wait_for(r" opened .*resumed=true")
    assert p.server.value(RESUMED, tunnel="res-in") == 1
    assert p.client.value(RESUMED, tunnel="res-out") == 1
    assert refusals(p.server) == {}
    # Later connections: whatever the ticket policy, every byte arrives.
    later = [p.connect() for _ in range(3)]
    assert all(ok for ok, _ in later)
    print(f"resumed connection with 4 MiB each way: {resumed_s:.2f}s; "
          f"connections 3-5 resumed: {[r for _, r in later]}")


def test_concurrent_connections_share_the_ticket(pair_factory):
    """After one full handshake, 24 connections at once on the daemons' I/O threads all resume
    with the one cached ticket, every byte intact."""
    p = pair_factory()
    assert p.connect() == (True, "false")
    payloads = [os.urandom(200_000 + i) for i in range(24)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(lambda b: echo_roundtrip(p.cport, b), payloads))
    assert replies == payloads
    assert p.server.value(RESUMED, tunnel="res-in") == 24
    assert p.client.value(RESUMED, tunnel="res-out") == 24
    assert p.client.opened().count("true") == 24


@pytest.mark.parametrize("server_on,client_on", [(False, True), (True, False)],
                         ids=["server-off", "client-off"])
def test_nothing_resumes_unless_both_ends_enable_it(pair_factory, server_on, client_on):
    p = pair_factory(server_resumption=server_on, client_resumption=client_on)
    assert [p.connect() for _ in range(3)] == [(True, "false")] * 3
    assert p.server.value(RESUMED, tunnel="res-in") == 0
    assert p.client.value(RESUMED, tunnel="res-out") == 0
    assert p.client.opened() == ["false"] * 3


def test_bundle_or_svid_change_refuses_old_tickets(pair_factory, pki):
    """Server side: its bundle of the client's trust domain gains a second CA, later its own SVID
    rotates: each time the client's ticket is refused (unknown_key), the connection takes a full
    handshake and works, and the next one resumes again. Client side: its bundle changes, so its
    cached ticket is gone and it offers none (nothing refused)."""
    p = pair_factory()

    def refused() -> float:
        return p.server.value(REFUSED, tunnel="res-in", reason="unknown_key")

    assert [p.connect()[1] for _ in range(2)] == ["false", "true"]

    def change(site: Site, path: Path, data: bytes, what: str) -> None:
        mark = site.daemon.mark()
        replace_file(path, data)
        site.daemon.wait_for(r"identity: loaded", start=mark)
        time.sleep(0.5)  # logged just before the new snapshot is published
        print(f"{what}: changed")

    second_ca = CA(A).bundle_pem()
    change(p.server, pki[f"server:{A}"], pki["ca"][A].bundle_pem() + second_ca,
           "server's a.test bundle")
    assert p.connect() == (True, "false")
    assert refused() == 1
    assert p.connect() == (True, "true")

    new = pki["ca"][B].issue(SERVER_ID)
    cert, key = pki["server"]
    replace_file(key, new.key_pem())
    change(p.server, cert, new.cert_pem(), "server's SVID")
    assert p.connect() == (True, "false")
    assert refused() == 2
    assert p.connect() == (True, "true")

    change(p.client, pki[f"client:{B}"], pki["ca"][B].bundle_pem() + CA(B).bundle_pem(),
           "client's b.test bundle")
    assert p.connect() == (True, "false")
    assert refused() == 2, "the client offered a ticket from before its snapshot changed"
    assert p.server.value(RESUMED, tunnel="res-in") == 3


def test_reload_that_no_longer_allows_the_client_refuses_its_ticket(pair_factory, pki):
    p = pair_factory()
    assert [p.connect()[1] for _ in range(2)] == ["false", "true"]
    before = p.backend.connections
    p.server.reload(server_body(pki, **p.server_args, allow=f"spiffe://{A}/someone-else"))
    mark = p.server.daemon.mark()
    assert attempt(p.cport) == b""
    p.server.daemon.wait_for(r"rejected reason=not_authorized", start=mark)
    assert p.backend.connections == before
    assert p.server.value(RESUMED, tunnel="res-in") == 1
    # A reload that changes the rules builds a new TLS context: its ticket keys never decrypt
    # a ticket from before (the server-side not_authorized check is covered where the policy
    # changes under a live context: OPA below, and tests/tls/resumption_test.cc).
    assert refusals(p.server) == {"unknown_key": 1}, p.server.daemon.tail(8)
    # Allowed again: a full handshake (no new ticket was issued to a rejected peer), then resumed.
    p.server.reload(server_body(pki, **p.server_args))
    assert [p.connect()[1] for _ in range(2)] in (["true", "true"], ["false", "true"])


def test_reload_that_changes_the_rules_invalidates_tickets_even_of_allowed_peers(pair_factory,
                                                                               pki):
    """A ticket belongs to one TLS context, built for one snapshot and one policy: a reload that
    changes the allow rules at all starts over with full handshakes, then resumes again."""
    p = pair_factory()
    assert [p.connect()[1] for _ in range(2)] == ["false", "true"]
    p.server.reload(server_body(pki, **p.server_args,
                                allow=f"{CLIENT_ID}, spiffe://{A}/someone-else"))
    assert p.connect() == (True, "false"), refusals(p.server)
    assert refusals(p.server) == {"unknown_key": 1}
    assert p.connect() == (True, "true")


def test_client_reload_that_no_longer_expects_the_server_offers_no_ticket(pair_factory, pki):
    p = pair_factory()
    assert [p.connect()[1] for _ in range(2)] == ["false", "true"]
    body = client_body(pki, p.sport).replace(SERVER_ID, f"spiffe://{B}/someone-else")
    p.client.reload(body)
    mark = p.client.daemon.mark()
    assert attempt(p.cport) == b""
    p.client.daemon.wait_for(r"rejected|failed", start=mark)
    # Had the client offered its ticket, the server would have resumed (it still allows the client).
    assert p.server.value(RESUMED, tunnel="res-in") == 1
    assert refusals(p.server) == {}


POLICY = """package tunnels.authz

default allow := false

allow if {
    input.tunnel == "res-in"
    input.peer_spiffe_id in data.tunnels.allowed
}
"""


def test_opa_denial_without_reload_refuses_the_resuming_peer(pair_factory, opa_bin, tmp_path):
    """OPA's data changes (no daemon reload): the next connection still presents a valid ticket
    the allow rules accept, and OPA, asked as for every connection, refuses it."""
    opa_dir = tmp_path / "opa"
    opa_dir.mkdir()
    proc, port = _run_opa(opa_bin, opa_dir, POLICY, json.dumps({"tunnels": {"allowed": [CLIENT_ID]}}))
    try:
        url = f"http://127.0.0.1:{port}/v1/data/tunnels/authz/allow"
        p = pair_factory(server_extra=f"    opa: {{ url: \"{url}\", cache: 0s }}\n")
        assert [p.connect()[1] for _ in range(2)] == ["false", "true"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/data/tunnels/allowed",
                                     data=b"[]", method="PUT",
                                     headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=5).status == 204
        before = p.backend.connections
        mark = p.server.daemon.mark()
        assert attempt(p.cport) == b""
        p.server.daemon.wait_for(rf"rejected reason=not_authorized: peer {CLIENT_ID}: OPA denied",
                                 start=mark)
        assert p.backend.connections == before
        sc = scrape(p.server.admin)
        assert sc.value("spiffe_tunnel_opa_decisions_total", tunnel="res-in", outcome="deny") == 1
        # The denied connection did resume: its ticket was fine, OPA was asked all the same.
        assert sc.value(RESUMED, tunnel="res-in") == 2 and refusals(p.server) == {}
    finally:
        proc.kill()
        proc.wait()


def test_ticket_not_used_after_its_lifetime(pair_factory):
    p = pair_factory(lifetime="2s")
    assert [p.connect()[1] for _ in range(2)] == ["false", "true"]
    time.sleep(3.5)
    assert p.connect() == (True, "false")
    assert p.server.value(RESUMED, tunnel="res-in") == 1
    assert refusals(p.server) == {}, "the client offered its expired ticket"


@pytest.mark.parametrize("args,tls,needle", [
    (["--session-ticket-lifetime", "169h"], None, "session_ticket_lifetime"),
    (["--session-ticket-lifetime", "500ms"], None, "session_ticket_lifetime"),
    ([], "      min_version: \"1.2\"\n      max_version: \"1.2\"\n", "TLS 1.3 only"),
], ids=["lifetime-above-7-days", "lifetime-below-1s", "tls12-only-tunnel"])
def test_bad_resumption_settings_are_refused_at_start(pki, tmp_path, args, tls, needle):
    if tls is None:  # as flags
        cert, key = pki["server"]
        r = run_once(["server", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:9", "--cert",
                      cert, "--key", key, *bundle_flags(pki, "server"),
                      "--allow-id", CLIENT_ID, "--session-resumption", *args])
    else:  # in the tunnel's tls block
        path = tmp_path / "bad.yaml"
        path.write_text(server_body(pki, free_port(), 9) + tls)
        r = run_once(["run", "-c", path])
    assert r.returncode != 0 and needle in r.stderr, r.stderr


# --------------------------------------------------------------------------- openssl s_client

def bundle_flags(pki, side: str) -> list[str]:
    return [a for td in (A, B) for a in ("--bundle", f"{td}={pki[f'{side}:{td}']}")]


def cli_server(pki, target_port: int, *extra: str) -> tuple[Daemon, int, int]:
    cert, key = pki["server"]
    d = Daemon(["server", "--name", "res-in", "--listen", "127.0.0.1:0",
                "--target", f"127.0.0.1:{target_port}", "--cert", cert, "--key", key,
                *bundle_flags(pki, "server"), "--allow-id", CLIENT_ID, "--admin", "127.0.0.1:0", *extra], name="server")
    return d, d.wait_listening(), admin_port(d)


def s_client(pki, port: int, cert_key, *extra: str) -> str:
    cert, key = cert_key
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
         "-cert", str(cert), "-key", str(key), "-CAfile", str(pki[f"server:{B}"]),
         "-verify_return_error", "-ign_eof", *extra],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20)
    return out.stdout + out.stderr


def test_openssl_s_client_resumes_against_server_tunnel(pki, tmp_path):
    backend = Backend("greet")
    server, sport, aport = cli_server(pki, backend.port, "--session-resumption",
                                      "--session-ticket-lifetime", "10m")
    sess = tmp_path / "sess.pem"
    try:
        first = s_client(pki, sport, pki["client"], "-tls1_3", "-sess_out", str(sess), "-msg")
        assert "New, TLSv1.3" in first and "hello from the backend" in first, first
        second = s_client(pki, sport, pki["client"], "-sess_in", str(sess), "-msg")
        assert "Reused, TLSv1.3" in second and "hello from the backend" in second, second
        # One ticket per full handshake, none after a resumption.
        assert [len(re.findall(r"<<< TLS 1.3, Handshake \[length \w+\], NewSessionTicket", out))
                for out in (first, second)] == [1, 0]
        # psk_dhe_ke only: even a client that allows psk_ke gets a fresh (EC)DHE share.
        third = s_client(pki, sport, pki["client"], "-sess_in", str(sess), "-allow_no_dhe_kex")
        assert "Reused, TLSv1.3" in third and "hello from the backend" in third, third
        assert re.search(r"Server Temp Key: \S+", third), third
        assert scrape(aport).value(RESUMED, tunnel="res-in") == 2
        assert server.count(r" opened .*resumed=true") == 2
    finally:
        server.stop()
        backend.close()


def test_tls12_never_resumes(pki, tmp_path):
    """Resumption is TLS 1.3 only: a TLS 1.2 client gets neither a ticket nor a session-ID
    resumption from a server tunnel that has resumption on and allows TLS 1.2."""
    backend = Backend("greet")
    server, sport, aport = cli_server(pki, backend.port, "--session-resumption",
                                      "--tls-min-version", "1.2")
    sess = tmp_path / "sess12.pem"
    try:
        tls12 = ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]
        first = s_client(pki, sport, pki["client"], *tls12, "-sess_out", str(sess))
        assert server.proc.poll() is None, f"server died (rc={server.proc.poll()}):\n{server.tail(5)}"
        assert "New, TLSv1.2" in first and "hello from the backend" in first, first
        # s_client saves a session only when it is resumable (a session ID or a ticket).
        if sess.exists():
            second = s_client(pki, sport, pki["client"], *tls12, "-sess_in", str(sess))
            assert "hello from the backend" in second, second
            assert "New, TLSv1.2" in second, second[second.find("---\nNew"):][:200]
        assert (scrape(aport).value(RESUMED, tunnel="res-in") or 0) == 0
        # No ticket is handed out in a TLS 1.2 handshake in the first place.
        hint = re.search(r"session ticket lifetime hint: \d+", first)
        assert hint is None, f"TLS 1.2 ticket issued ({hint.group(0)}); refusals {refusals_at(aport)}"
    finally:
        server.stop()
        backend.close()


def lifetime_hint(sess: Path) -> int:
    text = subprocess.run(["openssl", "sess_id", "-in", str(sess), "-noout", "-text"],
                          capture_output=True, text=True, check=True, timeout=10).stdout
    return int(re.search(r"ticket lifetime hint: (\d+)", text).group(1))


@pytest.mark.parametrize("cert_left,lifetime,lo,hi", [(120, "1h", 100, 120), (3600, "90s", 89, 90)],
                         ids=["cert-ends-first", "configured-lifetime-first"])
def test_ticket_lifetime_is_capped_by_the_client_certificate(pki, tmp_path, cert_left, lifetime,
                                                             lo, hi):
    now = dt.datetime.now(dt.timezone.utc)
    short = pki["ca"][A].issue(CLIENT_ID, not_after=now + dt.timedelta(seconds=cert_left))
    backend = Backend("greet")
    server, sport, _ = cli_server(pki, backend.port, "--session-resumption",
                                  "--session-ticket-lifetime", lifetime)
    sess = tmp_path / "sess.pem"
    try:
        out = s_client(pki, sport, short.write(tmp_path, "short"), "-sess_out", str(sess))
        assert "hello from the backend" in out, out
        hint = lifetime_hint(sess)
        left = (short.cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds()
        print(f"cert valid {left:.0f}s more, configured {lifetime}: lifetime hint {hint}s")
        assert lo <= hint <= hi and hint <= left + 3
    finally:
        server.stop()
        backend.close()


# --------------------------------------------------------------------------- Go's crypto/tls

def go_files(pki, side: str) -> list[str]:
    cert, key = pki[side]
    return ["--cert", str(cert), "--key", str(key), *bundle_flags(pki, side)]


def test_go_client_resumes_against_server_tunnel(pki, tmp_path, peer_bin):
    backend = Backend("echo")
    server, sport, aport = cli_server(pki, backend.port, "--session-resumption")
    try:
        r = subprocess.run([peer_bin, "resume-dial", *go_files(pki, "client"),
                            "--server-id", SERVER_ID, "--addr", f"127.0.0.1:{sport}",
                            "--count", "2", "--message", "crypto/tls"],
                           capture_output=True, text=True, timeout=60)
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and len(lines) == 2, r.stdout + r.stderr
        for i, resumed in ((0, "false"), (1, "true")):
            assert lines[i] == (f'conn {i + 1} resumed={resumed} version=TLS1.3 '
                                f'peer={SERVER_ID} reply="crypto/tls"'), lines
        assert scrape(aport).value(RESUMED, tunnel="res-in") == 1
    finally:
        server.stop()
        backend.close()


def test_client_tunnel_resumes_against_go_server(pki, tmp_path, peer_bin):
    go = ManagedProcess([peer_bin, "resume-serve", *go_files(pki, "server"), "--allow-id",
                         CLIENT_ID, "--listen", "127.0.0.1:0"],
                        tmp_path / "go-server.log", name="resume-serve", capture_stdout=True).start()
    client = None
    try:
        gport = int(go.wait_for_line(r"^listening .*:(\d+)$", timeout=15).group(1))
        client = Site(tmp_path, "client", client_body(pki, gport)).start()
        cport = client.daemon.wait_tunnel_port("res-out")
        for payload in (os.urandom(1 << 20), os.urandom(1 << 20)):
            assert echo_roundtrip(cport, payload) == payload
        accepted = [line for line in go.lines if line.startswith("accepted ")]
        assert accepted == [f"accepted {CLIENT_ID} resumed=false version=TLS1.3",
                            f"accepted {CLIENT_ID} resumed=true version=TLS1.3"], go.lines
        assert client.value(RESUMED, tunnel="res-out") == 1
        assert client.opened() == ["false", "true"]
    finally:
        if client:
            client.stop()
        go.stop()
