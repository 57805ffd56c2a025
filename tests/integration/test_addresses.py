"""Addresses beyond host:port, with real daemons: unix-socket listeners and targets in both modes
(traffic end to end, the created socket's mode, stale and foreign files at the path), and
listeners handed over by socket activation, driven by systemd-socket-activate as systemd would.
Runs as any user, on loopback and in a private directory under /tmp."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import shutil
import socket
import stat

import pytest

from daemon import Backend, Daemon, exchange, run_once
from helpers import check_socket_path, free_port, remove_tree, short_tmpdir
from pki import CA

A, B = "a.test", "b.test"
CLIENT_ID = f"spiffe://{A}/client"
SERVER_ID = f"spiffe://{B}/server"
ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    cas = {td: CA(td) for td in (A, B)}
    files = {td: cas[td].write_bundle(d / f"{td}.bundle.pem") for td in cas}
    files["client"] = cas[A].issue(CLIENT_ID).write(d, "client")
    files["server"] = cas[B].issue(SERVER_ID).write(d, "server")
    return files


@pytest.fixture
def sockdir():
    d = short_tmpdir("st-addr-")
    yield d
    remove_tree(d)


@pytest.fixture
def started():
    """Daemons and backends a test starts (append them); stopped or closed at its end."""
    things = []
    yield things
    for t in reversed(things):
        t.stop() if isinstance(t, Daemon) else t.close()


def identity(pki, who):
    cert, key = pki[who]
    return ["--cert", cert, "--key", key, "--bundle", f"{A}={pki[A]}", "--bundle", f"{B}={pki[B]}"]


def server(pki, listen, target, *extra, wrapper=()):
    return Daemon(["server", "--listen", listen, "--target", target, *identity(pki, "server"),
                   "--allow-id", CLIENT_ID, *extra], name="server", wrapper=wrapper)


def client(pki, listen, target, *extra):
    return Daemon(["client", "--listen", listen, "--target", target, *identity(pki, "client"),
                   "--expect-id", SERVER_ID, *extra], name="client")


def listening_on_unix(d: Daemon, path) -> None:
    d.wait_for(rf"listening on unix:{path} target")


def check_round_trip(entry) -> None:
    payload = os.urandom(1 << 20) * 4  # 4 MiB through both tunnels and back
    got = exchange(entry, payload)
    assert len(got) == len(payload)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def stale_socket(path) -> None:
    """A socket file nobody listens on, as a killed process leaves it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fspath(path))
    s.close()


def test_client_listens_and_server_targets_on_unix_sockets(pki, sockdir, started):
    """app → unix:client.sock → client tunnel → TCP mTLS → server tunnel → unix:backend.sock."""
    app_sock = check_socket_path(sockdir / "app.sock")
    backend_sock = check_socket_path(sockdir / "backend.sock")
    backend = Backend("echo", unix_path=backend_sock)
    s = server(pki, "127.0.0.1:0", f"unix:{backend_sock}")
    started += [backend, s]
    c = client(pki, f"unix://{app_sock}", f"127.0.0.1:{s.wait_listening()}", "--listen-mode", "0660")
    started.append(c)
    listening_on_unix(c, app_sock)
    st = os.lstat(app_sock)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_uid == os.getuid()

    check_round_trip(app_sock)
    assert backend.connections == 1
    # A unix peer is named by the listener's path and the peer process's credentials.
    c.wait_for(rf"session=1 from=unix:{app_sock},pid={os.getpid()},uid={os.getuid()} "
               rf"opened peer={SERVER_ID}")
    s.wait_for(r"session=1 from=127\.0\.0\.1:\d+ closed .*bytes_from_peer=4194304")
    assert c.stop() == 0
    assert not os.path.exists(app_sock), "the socket file outlived the tunnel"


def test_tls_over_unix_sockets_stays_in_userspace(pki, sockdir, started):
    """app → TCP → client tunnel → mTLS over unix:tls.sock → server tunnel → TCP backend."""
    tls_sock = check_socket_path(sockdir / "tls.sock")
    backend = Backend("echo")
    s = server(pki, f"unix:{tls_sock}", f"127.0.0.1:{backend.port}")
    started += [backend, s]
    listening_on_unix(s, tls_sock)
    c = client(pki, "127.0.0.1:0", f"unix:///{tls_sock.lstrip('/')}")
    started.append(c)
    check_round_trip(c.wait_listening())
    for d in (s, c):
        d.wait_for(r"opened peer=.* tls tx=userspace rx=userspace "
                   r"\(kernel TLS needs TCP; this is a unix socket\)")
    c.wait_for(rf"target unix:{tls_sock}")


def test_ktls_on_with_a_unix_tls_side_is_refused(pki, sockdir):
    r = run_once(["server", "--listen", f"unix:{sockdir}/tls.sock", "--target", "127.0.0.1:9",
                  *identity(pki, "server"), "--allow-id", CLIENT_ID, "--ktls", "on"])
    assert r.returncode == 2
    assert ("tunnel \"server\": ktls is \"on\" but the TLS side (unix:" in r.stderr and
            "is a unix socket, which kernel TLS does not support" in r.stderr), r.stderr


def test_a_stale_socket_file_is_replaced(pki, sockdir, started):
    path = check_socket_path(sockdir / "in.sock")
    stale_socket(path)
    backend = Backend("echo")
    s = server(pki, "127.0.0.1:0", f"127.0.0.1:{backend.port}")
    started += [backend, s]
    c = client(pki, f"unix:{path}", f"127.0.0.1:{s.wait_listening()}")
    started.append(c)
    listening_on_unix(c, path)
    assert c.count("removed a stale socket file nobody listened on") == 1
    assert exchange(path, b"after the stale file") == b"after the stale file"

    # While it listens, a second daemon must neither take the path nor remove it.
    r = run_once(["client", "--listen", f"unix:{path}", "--target", "127.0.0.1:9",
                  *identity(pki, "client"), "--expect-id", SERVER_ID])
    assert r.returncode == 1
    assert f"listen unix:{path}: another process is listening on this socket" in r.stderr
    assert exchange(path, b"still served") == b"still served"


def test_a_regular_file_at_the_path_is_refused_and_kept(pki, sockdir):
    path = sockdir / "data.sock"
    path.write_text("not a socket\n")
    r = run_once(["client", "--listen", f"unix:{path}", "--target", "127.0.0.1:9",
                  *identity(pki, "client"), "--expect-id", SERVER_ID])
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert (f"tunnel \"client\": listen unix:{path}: the path exists and is not a socket; "
            f"refusing to replace it") in out, out
    assert path.read_text() == "not a socket\n"


def activation(listen: str, fdname: str) -> list[str]:
    return [ACTIVATE, "-l", listen, f"--fdname={fdname}", "--"]


def connect_soon(address) -> socket.socket:
    """Opens a TCP connection; systemd-socket-activate starts the daemon on the first one."""
    return socket.create_connection(address, timeout=30)


def talk(conn: socket.socket, payload: bytes) -> bytes:
    with conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while data := conn.recv(1 << 16):
            chunks.append(data)
        return b"".join(chunks)


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (Debian: systemd) missing")
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_socket_activation_hands_the_listener_over_by_name(pki, sockdir, started, kind):
    backend = Backend("echo")
    if kind == "tcp":
        address = ("127.0.0.1", free_port())
        listen, target = f"127.0.0.1:{address[1]}", f"127.0.0.1:{address[1]}"
    else:
        address = listen = check_socket_path(sockdir / "activated.sock")
        target = f"unix:{address}"
    s = server(pki, "systemd:web-tls", f"127.0.0.1:{backend.port}",
               wrapper=activation(listen, "web-tls"))
    started += [backend, s]
    s.wait_for(rf"Listening on {listen}")
    c = client(pki, "127.0.0.1:0", target)
    started.append(c)
    # The first connection through the client tunnel is the one that starts the daemon.
    first = connect_soon(("127.0.0.1", c.wait_listening()))
    s.wait_for(r"tunnel=server mode=server listening on systemd:web-tls \(")
    assert talk(first, b"activated") == b"activated"
    check_round_trip(c.wait_listening())
    s.wait_for(r"session=\d+ .* opened peer=" + CLIENT_ID)
    assert s.count("is used by no tunnel") == 0
    assert s.stop() == 0


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (Debian: systemd) missing")
def test_socket_activation_with_a_mismatched_name_fails_startup(pki, started):
    address = ("127.0.0.1", free_port())
    s = server(pki, "systemd:web-tls", "127.0.0.1:9",
               wrapper=activation(f"{address[0]}:{address[1]}", "metrics"))
    started.append(s)
    s.wait_for(r"Listening on ")
    trigger = connect_soon(address)
    assert s.wait_exit(timeout=15) == 1
    trigger.close()
    assert ("tunnel \"server\": listen systemd:web-tls: no passed socket is named \"web-tls\" "
            "(passed: metrics); set FileDescriptorName=web-tls in the .socket unit") in s.log, s.log


def test_systemd_listener_without_activation_fails_startup(pki):
    r = run_once(["server", "--listen", "systemd:web-tls", "--target", "127.0.0.1:9",
                  *identity(pki, "server"), "--allow-id", CLIENT_ID])
    assert r.returncode == 1
    assert "listen systemd:web-tls: no sockets were passed to this process" in r.stdout + r.stderr


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate (Debian: systemd) missing")
def test_a_passed_socket_no_tunnel_uses_is_closed_and_a_name_given_twice_fails(pki, started):
    used, unused = ("127.0.0.1", free_port()), ("127.0.0.1", free_port())
    backend = Backend("echo")
    wrapper = [ACTIVATE, "-l", f"{used[0]}:{used[1]}", "-l", f"{unused[0]}:{unused[1]}",
               "--fdname=web-tls:spare", "--"]
    s = server(pki, "systemd:web-tls", f"127.0.0.1:{backend.port}", wrapper=wrapper)
    started += [backend, s]
    s.wait_for(r"Listening on ")
    trigger = connect_soon(used)
    s.wait_for(r'socket activation: descriptor 4 \("spare"\) is used by no tunnel; closing it')
    s.wait_for(r"listening on systemd:web-tls \(")
    trigger.close()
    # The daemon held the only copy of the spare socket (systemd-socket-activate exec'd it).
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(unused, timeout=5).close()
    s.stop()

    twice = [ACTIVATE, "-l", f"127.0.0.1:{free_port()}", "-l", f"127.0.0.1:{free_port()}",
             "--fdname=web-tls:web-tls", "--"]
    again = server(pki, "systemd:web-tls", "127.0.0.1:9", wrapper=twice)
    started.append(again)
    first = again.wait_for(r"Listening on 127\.0\.0\.1:(\d+)")
    trigger = connect_soon(("127.0.0.1", int(first.group(1))))
    assert again.wait_exit(timeout=15) == 1
    trigger.close()
    assert ("listen systemd:web-tls: several passed sockets are named \"web-tls\"; a tunnel "
            "listens on exactly one") in again.log, again.log


def test_a_yaml_configured_unix_listener_gets_its_mode_owner_and_group(pki, sockdir, started):
    """listen_mode/listen_owner/listen_group from a `run -c` file. Changing the owner needs
    privilege: as root the socket goes to nobody:nogroup, otherwise to the user's own ids."""
    path = check_socket_path(sockdir / "owned.sock")
    root = os.geteuid() == 0
    owner, group = ("nobody", "nogroup") if root else (str(os.getuid()), str(os.getgid()))
    cert, key = pki["client"]
    config = sockdir / "config.yaml"
    config.write_text(f"""identity:
  files:
    cert: {cert}
    key: {key}
    bundles:
      {A}: {pki[A]}
      {B}: {pki[B]}
tunnels:
  - name: app-out
    mode: client
    listen: unix://{path}
    listen_mode: "0640"
    listen_owner: {owner}
    listen_group: {group}
    target: 127.0.0.1:9
    expect:
      ids: [{SERVER_ID}]
""")
    d = Daemon(["run", "-c", config], name="run")
    started.append(d)
    d.wait_for(rf"tunnel=app-out mode=client listening on unix:{path} target 127\.0\.0\.1:9")
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    if root:
        assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid,
                                          grp.getgrnam("nogroup").gr_gid)
    else:
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert d.stop() == 0
    assert not os.path.exists(path)
