"""Reload on SIGHUP (and `spiffe-tunnel reload`): unchanged tunnels keep their listener and
sessions, policy changes end exactly the sessions they no longer allow, removed tunnels drain,
added ones serve, and a reload that cannot be applied changes nothing. The mTLS clients are
Python's ssl module (OpenSSL driven by code nobody here wrote); systemd's notifications are read
from a NOTIFY_SOCKET the test binds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from daemon import Backend, Daemon, run_once
from helpers import free_port, short_tmpdir, wait_for
from pki import CA

A, B = "a.test", "b.test"
ALICE, BOB = f"spiffe://{A}/alice", f"spiffe://{A}/bob"
SERVER_ID = f"spiffe://{B}/server"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_a, ca_b = CA(A), CA(B)
    return {
        "dir": d,
        "bundle:a": ca_a.write_bundle(d / "a.pem"),
        "bundle:b": ca_b.write_bundle(d / "b.pem"),
        "server": ca_b.issue(SERVER_ID).write(d, "server"),
        "alice": ca_a.issue(ALICE).write(d, "alice"),
        "bob": ca_a.issue(BOB).write(d, "bob"),
    }


class Notifications:
    """A NOTIFY_SOCKET: collects the daemon's sd_notify datagrams."""

    def __init__(self) -> None:
        self.dir = short_tmpdir("notify-")
        self.path = str(self.dir / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def all(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.sock.close()


def tunnel_yaml(name: str, port: int, target: int, allow: list[str], extra: str = "") -> str:
    ids = ", ".join(allow)
    return (f"  - name: {name}\n    mode: server\n    listen: 127.0.0.1:{port}\n"
            f"    target: 127.0.0.1:{target}\n    allow: {{ ids: [{ids}] }}\n{extra}")


def config_yaml(pki, admin_port: int, tunnels: list[str], globals_: str = "") -> str:
    cert, key = pki["server"]
    return ("identity:\n  files:\n"
            f"    cert: {cert}\n    key: {key}\n"
            f"    bundles: {{ {A}: {pki['bundle:a']}, {B}: {pki['bundle:b']} }}\n"
            f"admin: {{ listen: 127.0.0.1:{admin_port} }}\n"
            f"drain_timeout: 60s\n{globals_}tunnels:\n" + "".join(tunnels))


def tls_client(pki, who: str, port: int, timeout: float = 30.0) -> ssl.SSLSocket:
    """An mTLS connection to a server tunnel as `who`, verified against b.test's bundle."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # an X509-SVID names its SPIFFE ID, not a DNS name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(str(pki["bundle:b"]))
    cert, key = pki[who]
    ctx.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw)


def echo_ok(s: ssl.SSLSocket, payload: bytes = b"ping") -> bool:
    """True when `payload` comes back through the session; False when the session has ended."""
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            data = s.recv(len(payload) - len(got))
            if not data:
                return False
            got += data
        return got == payload
    except (OSError, ssl.SSLError):
        return False


def metric(admin_port: int, name: str, labels: str = "") -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
    rx = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    m = rx.search(body.decode())
    return float(m.group(1)) if m else 0.0


def active_sessions(admin_port: int, tunnel: str) -> int:
    status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status",
                                               timeout=5).read())
    return next(t["active_sessions"] for t in status["tunnels"] if t["name"] == tunnel)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


class Site:
    """A server daemon running `run -c FILE`, with its ports, its backends and NOTIFY_SOCKET."""

    def __init__(self, pki, tmp_path: Path):
        self.pki = pki
        self.file = tmp_path / "spiffe-tunnel.yaml"
        self.echo, self.other = Backend("echo"), Backend("echo")
        self.admin = free_port()
        self.ports = {n: free_port() for n in ("bulk", "policy", "gone", "moved", "added")}
        self.notify = Notifications()
        self.daemon: Daemon | None = None

    def write(self, tunnels: list[str], globals_: str = "") -> None:
        self.file.write_text(config_yaml(self.pki, self.admin, tunnels, globals_))

    def start(self) -> Daemon:
        self.daemon = Daemon(["run", "-c", self.file], env={"NOTIFY_SOCKET": self.notify.path},
                             name="site")
        self.daemon.wait_for(r"tunnel=gone mode=server listening")
        wait_for(lambda: any("READY=1" in m for m in self.notify.all()), timeout=10)
        return self.daemon

    def reload(self, expect: str = r"reload: done") -> None:
        mark = self.daemon.mark()
        self.daemon.proc.send_signal(signal.SIGHUP)
        self.daemon.wait_for(expect, start=mark)

    def close(self) -> None:
        if self.daemon:
            self.daemon.stop()
        self.echo.close()
        self.other.close()
        self.notify.close()


@pytest.fixture
def site(pki, tmp_path):
    s = Site(pki, tmp_path)
    p, e = s.ports, s.echo.port
    s.initial = [tunnel_yaml("bulk", p["bulk"], e, [ALICE]),
                 tunnel_yaml("policy", p["policy"], e, [ALICE, BOB]),
                 tunnel_yaml("gone", p["gone"], e, [ALICE]),
                 tunnel_yaml("moved", p["moved"], e, [ALICE])]
    s.write(s.initial)
    s.start()
    yield s
    s.close()


class Transfer:
    """64 MiB through an echo path in two halves, so that a test can act in between. Lock-step
    (send a block, read it back): one SSLSocket must not be read and written by two threads."""

    SIZE = 64 << 20
    BLOCK = 1 << 20

    def __init__(self, s: ssl.SSLSocket):
        self.s = s
        self.block = os.urandom(self.BLOCK)
        self.received = hashlib.sha256()
        self.count = 0

    def send_half(self) -> None:
        for _ in range(self.SIZE // 2 // self.BLOCK):
            self.s.sendall(self.block)
            got = 0
            while got < self.BLOCK:
                data = self.s.recv(self.BLOCK - got)
                if not data:
                    return
                self.received.update(data)
                got += len(data)
            self.count += got

    def finish(self) -> tuple[int, bool]:
        expected = hashlib.sha256(self.block * (self.SIZE // self.BLOCK)).hexdigest()
        return self.count, self.received.hexdigest() == expected


def test_reload_applies_each_change_to_its_tunnel_only(site, pki):
    p = site.ports
    bulk = tls_client(pki, "alice", p["bulk"])
    transfer = Transfer(bulk)
    transfer.send_half()
    policy_alice = tls_client(pki, "alice", p["policy"])
    policy_bob = tls_client(pki, "bob", p["policy"])
    gone = tls_client(pki, "alice", p["gone"])
    moved_old = tls_client(pki, "alice", p["moved"])
    for s in (policy_alice, policy_bob, gone, moved_old):
        assert echo_ok(s)
    assert site.other.connections == 0

    e = site.echo.port
    site.write([site.initial[0],
                tunnel_yaml("policy", p["policy"], e, [ALICE]),  # bob no longer allowed
                tunnel_yaml("moved", p["moved"], site.other.port, [ALICE]),  # new target
                tunnel_yaml("added", p["added"], e, [BOB])])
    before = len(site.notify.all())
    site.reload()
    log = site.daemon.log
    assert "reload: done: 1 unchanged, 1 policy changed, 1 replaced, 1 removed, 1 added" in log
    assert 'tunnel "bulk"' not in log.split("SIGHUP: reloading")[-1]

    # Unchanged: the transfer started before the reload completes intact on the same session.
    transfer.send_half()
    assert transfer.finish() == (Transfer.SIZE, True)

    # Policy: bob's session ends with the reason, alice's goes on; bob cannot connect again.
    site.daemon.wait_for(rf"ending reason=policy_changed: peer {re.escape(BOB)} is no longer")
    assert site.daemon.count(r"ending reason=policy_changed") == 1
    assert not echo_ok(policy_bob)
    assert echo_ok(policy_alice)
    assert not echo_ok(tls_client(pki, "bob", p["policy"]))
    assert echo_ok(tls_client(pki, "alice", p["policy"]))

    # Removed: no new connections, the open session still works.
    assert refused(p["gone"])
    assert echo_ok(gone)

    # Replaced on the same address: new sessions reach the new target, the old one the old.
    assert echo_ok(tls_client(pki, "alice", p["moved"]))
    assert site.other.connections == 1
    assert echo_ok(moved_old)

    # Added: serves its own peer.
    assert echo_ok(tls_client(pki, "bob", p["added"]))

    # systemd saw the reload begin and end.
    msgs = site.notify.all()[before:]
    assert re.search(r"RELOADING=1\nMONOTONIC_USEC=\d+", msgs[0]), msgs
    assert any(m.startswith("READY=1") for m in msgs[1:]), msgs
    assert metric(site.admin, "spiffe_tunnel_config_reloads_total", '{result="success"}') == 1
    assert metric(site.admin, "spiffe_tunnel_sessions_closed_total",
                  '{tunnel="policy",reason="policy_changed"}') == 1

    # The removed tunnel's last session ends: its version goes away.
    gone.close()
    site.daemon.wait_for(r"tunnel=gone previous version drained")
    for s in (bulk, policy_alice, policy_bob, moved_old):
        s.close()


def test_a_session_mid_handshake_gets_the_new_policy(site, pki):
    """A peer authorized by the old policy but not yet pumping is checked once it is."""
    p = site.ports
    raw = socket.create_connection(("127.0.0.1", p["policy"]), timeout=10)  # TCP only, no TLS yet
    wait_for(lambda: active_sessions(site.admin, "policy") == 1, timeout=10)  # accepted
    e = site.echo.port
    site.write([site.initial[0], tunnel_yaml("policy", p["policy"], e, [ALICE]), *site.initial[2:]])
    site.reload()
    # The connection was accepted under the old context (which allows bob); its handshake now
    # runs with that context, and the new policy ends the session right after.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(pki["bundle:b"]))
    ctx.load_cert_chain(*(str(x) for x in pki["bob"]))
    bob = ctx.wrap_socket(raw)
    assert not echo_ok(bob)
    site.daemon.wait_for(rf"ending reason=policy_changed: peer {re.escape(BOB)}")


def test_a_reload_that_cannot_apply_changes_nothing(site, pki):
    p, e = site.ports, site.echo.port
    live = tls_client(pki, "alice", p["bulk"])
    assert echo_ok(live)

    # Unknown keys in two tunnels: each error names file, line and column; nothing changes.
    mark = site.daemon.mark()
    site.write([site.initial[0], site.initial[1] + "    bogus_key: 1\n", site.initial[2],
                site.initial[3] + "    other_key: 2\n"])
    site.reload(expect=r"reload failed, the running configuration stays: .*spiffe-tunnel\.yaml:\d+:\d+")
    site.daemon.wait_for(r"reload failed.*spiffe-tunnel\.yaml:\d+:\d+: .*other_key", start=mark)
    assert site.daemon.count(r"reload failed.*spiffe-tunnel\.yaml:\d+:\d+: .*bogus_key",
                             start=mark) == 1

    # A port already in use by someone else, next to a policy change: neither applies.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    site.write([site.initial[0], tunnel_yaml("policy", p["policy"], e, [ALICE]),
                *site.initial[2:], tunnel_yaml("first", p["added"], e, [ALICE]),
                tunnel_yaml("added", taken, e, [ALICE])])
    site.reload(expect=r"reload failed, the running configuration stays: .*added.*(in use|Address)")
    squatter.close()
    assert refused(p["added"])  # bound for tunnel "first" while preparing, released again
    assert echo_ok(tls_client(pki, "bob", p["policy"]))  # the old policy still allows bob
    assert echo_ok(live)
    for name in ("bulk", "policy", "gone", "moved"):
        assert echo_ok(tls_client(pki, "alice", p[name])), name
    assert metric(site.admin, "spiffe_tunnel_config_reload_failures_total") == 2  # one per reload
    assert metric(site.admin, "spiffe_tunnel_config_reloads_total", '{result="failure"}') == 2
    assert metric(site.admin, "spiffe_tunnel_config_last_reload_successful") == 0
    assert any(m.startswith("READY=1") for m in site.notify.all()[-1:])

    # Settings that need a restart are named; the rest of the file applies.
    site.write(site.initial, globals_="threads: 7\n")
    site.reload()
    assert "reload: threads changed; this takes a restart" in site.daemon.log
    assert metric(site.admin, "spiffe_tunnel_config_last_reload_successful") == 1
    live.close()


def test_reload_command_validates_before_it_signals(site, pki, tmp_path):
    pid = site.daemon.proc.pid
    bad = tmp_path / "bad.yaml"
    bad.write_text(site.file.read_text().replace("drain_timeout: 60s", "drain_timeout: soon"))
    mark = site.daemon.mark()
    r = run_once(["reload", "-c", bad, "--pid", pid])
    assert r.returncode != 0
    assert re.search(r"bad\.yaml:\d+:\d+: .*drain_timeout", r.stderr), r.stderr
    time.sleep(0.5)  # a SIGHUP, had one been sent, is taken within one 200 ms tick
    assert site.daemon.count(r"SIGHUP", start=mark) == 0

    site.write(site.initial[:3])  # "moved" removed
    r = run_once(["reload", "-c", site.file, "--pid", pid])
    assert r.returncode == 0, r.stderr
    assert "OK, 3 tunnel(s)" in r.stdout
    site.daemon.wait_for(r"reload: done: 3 unchanged, 0 policy changed, 0 replaced, 1 removed",
                         start=mark)


def test_sighup_with_flag_tunnels_keeps_serving(pki):
    backend = Backend("echo")
    cert, key = pki["server"]
    d = Daemon(["server", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{backend.port}",
                "--cert", cert, "--key", key, "--bundle", f"{A}={pki['bundle:a']}",
                "--allow-id", ALICE], name="server")
    try:
        port = d.wait_listening()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(r"no file to reload")
        assert echo_ok(tls_client(pki, "alice", port))
    finally:
        d.stop()
        backend.close()


def test_reload_of_a_unix_socket_tunnel_keeps_its_socket_file(site, pki):
    """A replaced unix: listener hands over its socket file (the old version must not remove it);
    a removed one takes the file away."""
    path = site.notify.dir / "orders.sock"
    e = site.echo.port
    unix_tunnel = (f"  - name: orders\n    mode: server\n    listen: unix:{path}\n"
                   f"    listen_mode: \"0600\"\n    target: 127.0.0.1:{{target}}\n"
                   f"    allow: {{{{ ids: [{ALICE}] }}}}\n")

    def connect() -> ssl.SSLSocket:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(pki["bundle:b"]))
        ctx.load_cert_chain(*(str(x) for x in pki["alice"]))
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(10)
        raw.connect(str(path))
        return ctx.wrap_socket(raw)

    site.write(site.initial + [unix_tunnel.format(target=e)])
    site.reload()
    old = connect()
    assert echo_ok(old)
    assert site.other.connections == 0

    site.write(site.initial + [unix_tunnel.format(target=site.other.port)])  # replaced
    site.reload(expect=r"reload: done: 4 unchanged, 0 policy changed, 1 replaced")
    old.close()
    site.daemon.wait_for(r"tunnel=orders previous version drained")
    assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    assert echo_ok(connect())
    assert site.other.connections == 1

    site.write(site.initial)  # removed
    site.reload(expect=r"reload: done: 4 unchanged, 0 policy changed, 0 replaced, 1 removed")
    assert not path.exists()


def test_log_sessions_changes_by_reload_without_touching_the_tunnel(site, pki):
    p = site.ports
    kept = tls_client(pki, "alice", p["bulk"])
    assert echo_ok(kept)
    quiet = site.initial[0] + "    log_sessions: false\n"
    site.write([quiet, *site.initial[1:]])
    site.reload(expect=r"reload: done: 4 unchanged, 0 policy changed, 0 replaced")
    assert 'reload: tunnel "bulk" log_sessions off' in site.daemon.log
    mark = site.daemon.mark()
    assert echo_ok(tls_client(pki, "alice", p["bulk"]))       # new session: not logged
    assert echo_ok(tls_client(pki, "alice", p["policy"]))     # other tunnel: logged
    site.daemon.wait_for(r"tunnel=policy session=\d+ .* opened", start=mark)
    assert site.daemon.count(r"tunnel=bulk session=\d+ .* opened", start=mark) == 0
    assert echo_ok(kept)  # the open session was not touched
    kept.close()
