"""Log lines operators can use (issue #10, item 6): `log_format: json` gives one JSON object per
line with stable fields, parsed here by Python's json module; `log_sessions: false` hides the
per-session lines but keeps rejections; `--log-level` wins over the file's log_level under
`run`; under journald (JOURNAL_STREAM naming stderr) lines reach the journal's native socket with
their priority and fields, and JOURNAL_STREAM naming another file leaves the log on stderr.
Tunnels on PEM files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from daemon import Backend, Daemon, binary, echo_roundtrip
from test_files_tunnels import A, B, CLIENT_ID, SERVER_ID, _tls_client, pki  # noqa: F401

LISTENING = r'"msg":"listening on".*"listen":"[^"]+:(\d+)"'


def identity_yaml(pki, who: str) -> str:
    cert, key = pki[who]
    return (f"identity:\n  files:\n    cert: {cert}\n    key: {key}\n"
            f"    bundles: {{{A}: {pki[f'bundle:{A}']}, {B}: {pki[f'bundle:{B}']}}}\n")


def server_yaml(pki, backend_port: int, extra: str = "", tunnel_extra: str = "") -> str:
    return identity_yaml(pki, "server") + extra + f"""tunnels:
  - name: json-in
    mode: server
    listen: 127.0.0.1:0
    target: 127.0.0.1:{backend_port}
    allow: {{ids: ["{CLIENT_ID}"]}}
{tunnel_extra}"""


def client_yaml(pki, server_port: int) -> str:
    return identity_yaml(pki, "client") + f"""log_format: json
tunnels:
  - name: json-out
    mode: client
    listen: 127.0.0.1:0
    target: 127.0.0.1:{server_port}
    expect: {{ids: ["{SERVER_ID}"]}}
"""


def start(tmp_path, name: str, yaml: str, *flags: str) -> Daemon:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml)
    return Daemon(["run", "-c", path, *flags], name=name)


def records(d: Daemon) -> list[dict]:
    """Every log line of `d`, each parsed as one JSON object (any other line fails the test)."""
    out = []
    for line in d.log.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{d.name}: not a JSON line: {line!r} ({exc})")
        assert isinstance(rec, dict), line
        assert list(rec)[:3] == ["time", "level", "msg"], line
        assert rec["level"] in ("trace", "debug", "info", "warn", "error", "critical"), line
        assert rec["time"].endswith("Z") and len(rec["time"]) == len("2026-01-01T00:00:00.000Z")
        out.append(rec)
    return out


def with_msg(recs: list[dict], msg: str) -> list[dict]:
    return [r for r in recs if r["msg"] == msg]


def intruder(pki, tmp_path):
    return pki["ca"][A].issue(f"spiffe://{A}/intruder").write(tmp_path, "intruder")


@dataclass
class Pair:
    """app → client tunnel json-out → server tunnel json-in → echo backend; both log JSON."""
    server: Daemon
    client: Daemon
    sport: int
    cport: int
    backend: Backend


@contextlib.contextmanager
def json_pair(pki, tmp_path, server_extra: str = "", tunnel_extra: str = ""):
    backend = Backend("echo")
    server = start(tmp_path, "server", server_yaml(pki, backend.port, "log_format: json\n" +
                                                   server_extra, tunnel_extra))
    client = None
    try:
        sport = int(server.wait_for(LISTENING).group(1))
        client = start(tmp_path, "client", client_yaml(pki, sport))
        cport = int(client.wait_for(LISTENING).group(1))
        yield Pair(server, client, sport, cport, backend)
    finally:
        if client:
            client.stop()
        server.stop()
        backend.close()


def test_json_lines_carry_session_fields(pki, tmp_path):
    with json_pair(pki, tmp_path) as p:
        payload = os.urandom(300_000) + b'"quotes"\n\\ and a newline'
        started = time.monotonic()
        assert echo_roundtrip(p.cport, payload) == payload
        elapsed_ms = (time.monotonic() - started) * 1000
        p.server.wait_for(r'"msg":"closed"')
        p.client.wait_for(r'"msg":"closed"')
        cert, key = intruder(pki, tmp_path)
        assert _tls_client(p.sport, cert, key) == b""
        p.server.wait_for(r'"msg":"rejected"')

    srv = records(p.server)
    [listening] = with_msg(srv, "listening on")
    assert listening["tunnel"] == "json-in" and listening["mode"] == "server"
    assert listening["target"] == f"127.0.0.1:{p.backend.port}"
    [opened] = with_msg(srv, "opened")
    assert opened["level"] == "info"
    assert opened["tunnel"] == "json-in" and isinstance(opened["session"], int)
    assert opened["peer_id"] == CLIENT_ID
    assert opened["from"].startswith("127.0.0.1:")
    assert opened["tls_version"] == "TLSv1.3" and opened["authorized_by"]
    [closed] = with_msg(srv, "closed")
    assert closed["session"] == opened["session"] and closed["from"] == opened["from"]
    assert closed["peer_id"] == CLIENT_ID
    assert closed["bytes_from_peer"] == len(payload)
    assert closed["bytes_to_peer"] == len(payload)
    assert isinstance(closed["duration_ms"], int) and 0 <= closed["duration_ms"] <= elapsed_ms + 1000
    assert closed["reason"] == "eof" and closed["detail"] == "closed"
    assert closed["path"] == "userspace/userspace"
    [rejected] = with_msg(srv, "rejected")
    assert rejected["level"] == "warn"
    assert rejected["tunnel"] == "json-in" and rejected["reason"] == "not_authorized"
    assert f"spiffe://{A}/intruder" in rejected["detail"]
    # lines without fields are objects too, with their text as msg
    assert any(r["msg"].startswith("received SIGTERM") for r in srv), srv

    cli = records(p.client)
    [closed] = with_msg(cli, "closed")
    assert closed["tunnel"] == "json-out" and closed["peer_id"] == SERVER_ID
    assert closed["bytes_from_peer"] == len(payload) and closed["bytes_to_peer"] == len(payload)


def test_log_sessions_false_hides_sessions_but_keeps_rejections(pki, tmp_path):
    with json_pair(pki, tmp_path, "log_sessions: false\n") as p:
        for _ in range(3):
            assert echo_roundtrip(p.cport, b"quiet please") == b"quiet please"
        p.client.wait_for(r'"msg":"closed"')  # the client's own tunnel still logs sessions
        cert, key = intruder(pki, tmp_path)
        assert _tls_client(p.sport, cert, key) == b""
        p.server.wait_for(r'"msg":"rejected"')
        time.sleep(0.3)
    srv = records(p.server)
    assert with_msg(srv, "opened") == [] and with_msg(srv, "closed") == []
    [rejected] = with_msg(srv, "rejected")
    assert rejected["reason"] == "not_authorized"
    assert len(with_msg(records(p.client), "closed")) == 3


def test_tunnel_log_sessions_overrides_the_global_value(pki, tmp_path):
    with json_pair(pki, tmp_path, "log_sessions: true\n", "    log_sessions: false\n") as p:
        assert echo_roundtrip(p.cport, b"x") == b"x"
        p.client.wait_for(r'"msg":"closed"')
        time.sleep(0.3)
    srv = records(p.server)
    assert with_msg(srv, "opened") == [] and with_msg(srv, "closed") == []
    assert with_msg(srv, "listening on")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_log_level_flag_wins_over_the_file(pki, tmp_path):
    backend = Backend("echo")
    port = free_port()
    yaml = server_yaml(pki, backend.port, "log_level: warn\nlog_format: json\n").replace(
        "listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}")
    try:
        # The file alone: warn, so the info line "listening on" never comes.
        quiet = start(tmp_path, "quiet", yaml)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and quiet.proc.poll() is None, quiet.log
                time.sleep(0.1)
        time.sleep(0.5)
        quiet.stop()
        assert with_msg(records(quiet), "listening on") == []
        assert all(r["level"] in ("warn", "error", "critical") for r in records(quiet))

        # --log-level debug beats it, and --log-format text beats log_format: json.
        loud = start(tmp_path, "loud", yaml, "--log-level", "debug")
        loud.wait_for(LISTENING)
        loud.stop()
        assert with_msg(records(loud), "listening on")
        text = start(tmp_path, "text", yaml, "--log-level", "info", "--log-format", "text")
        text.wait_for(rf"info tunnel=json-in mode=server listening on 127\.0\.0\.1:{port} ")
        text.stop()
    finally:
        backend.close()


def test_journal_stream_of_another_file_keeps_stderr(pki, tmp_path):
    """JOURNAL_STREAM is only believed when it names stderr itself (systemd.exec(5))."""
    backend = Backend("echo")
    st = os.stat(tmp_path)
    path = tmp_path / "server.yaml"
    path.write_text(server_yaml(pki, backend.port))
    d = Daemon(["run", "-c", path], name="server",
               env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        d.wait_listening()
    finally:
        d.stop()
        backend.close()


def parse_journal_datagram(data: bytes) -> dict:
    """journald's native protocol (systemd.journal-fields(7), sd_journal_sendv): KEY=value lines,
    or KEY\\n + 64-bit little-endian length + value + \\n for values holding a newline."""
    fields, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key, size = line, int.from_bytes(data[nl + 1:nl + 9], "little")
            value = data[nl + 9:nl + 9 + size]
            i = nl + 9 + size + 1
        fields[key.decode()] = value.decode()
    return fields


def test_journald_gets_priority_and_fields(pki, tmp_path):
    """The daemon runs in a private mount namespace where /run/systemd/journal is this test's
    directory, so its native journal socket is a datagram socket the test reads; stderr is a pipe
    whose device:inode is in JOURNAL_STREAM, as systemd sets it up."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    jdir = tmp_path / "journal"
    jdir.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(jdir / "socket"))
    entries: list[dict] = []
    cv = threading.Condition()

    def receive():
        while True:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                return
            with cv:
                entries.append(parse_journal_datagram(data))
                cv.notify_all()

    threading.Thread(target=receive, daemon=True).start()

    def wait_entry(pred, timeout=15.0) -> dict:
        with cv:
            assert cv.wait_for(lambda: any(pred(e) for e in entries), timeout), entries
            return next(e for e in entries if pred(e))

    backend = Backend("echo")
    cfg = tmp_path / "server.yaml"
    cfg.write_text(server_yaml(pki, backend.port))
    r, w = os.pipe()
    st = os.fstat(w)
    script = ('mount -t tmpfs none /run && mkdir -p /run/systemd/journal && '
              f'mount --bind {jdir} /run/systemd/journal && exec "$0" "$@"')
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script, str(binary()), "run", "-c",
                             str(cfg)], stdin=subprocess.DEVNULL, stdout=w, stderr=w,
                            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    os.close(w)
    client = None
    try:
        listening = wait_entry(lambda e: e.get("MSG") == "listening on")
        assert listening["PRIORITY"] == "6" and listening["SYSLOG_IDENTIFIER"] == "spiffe-tunnel"
        assert listening["TUNNEL"] == "json-in" and listening["MODE"] == "server"
        assert listening["MESSAGE"].startswith("tunnel=json-in mode=server listening on ")
        sport = int(listening["LISTEN"].rsplit(":", 1)[1])
        client = start(tmp_path, "client", client_yaml(pki, sport))
        cport = int(client.wait_for(LISTENING).group(1))
        assert echo_roundtrip(cport, b"to the journal") == b"to the journal"
        closed = wait_entry(lambda e: e.get("MSG") == "closed")
        assert closed["PEER_ID"] == CLIENT_ID
        assert closed["BYTES_FROM_PEER"] == closed["BYTES_TO_PEER"] == str(len(b"to the journal"))
        assert closed["REASON"] == "eof" and int(closed["DURATION_MS"]) >= 0
        assert " closed peer=" + CLIENT_ID + " bytes_from_peer=14 " in closed["MESSAGE"]
        cert, key = intruder(pki, tmp_path)
        assert _tls_client(sport, cert, key) == b""
        rejected = wait_entry(lambda e: e.get("MSG") == "rejected")
        assert rejected["PRIORITY"] == "4" and rejected["REASON"] == "not_authorized"
    finally:
        if client:
            client.stop()
        proc.send_signal(15)
        proc.wait(timeout=15)
        with os.fdopen(r, "rb") as f:
            stderr = f.read().decode(errors="replace")
        sock.close()
        backend.close()
    # everything went to the journal; stderr stayed empty
    assert stderr == "", stderr
    assert any(e.get("MESSAGE", "").startswith("received SIGTERM") for e in entries)


def test_rejection_after_verification_names_the_peer(pki, tmp_path):
    """A peer refused after its handshake (here: OPA unreachable, so the decision fails closed)
    is named in the JSON line's peer_id; the text line keeps it in its detail."""
    backend = Backend("echo")
    cert, key = pki["server"]
    opa_url = f"http://127.0.0.1:{free_port()}/v1/data/tunnels/authz/allow"  # nothing listens
    server = Daemon(["server", "--name", "opa-in", "--listen", "127.0.0.1:0", "--target",
                     f"127.0.0.1:{backend.port}", "--cert", cert, "--key", key, "--bundle",
                     f"{A}={pki[f'bundle:{A}']}", "--opa-url", opa_url, "--log-format", "json"],
                    name="server")
    try:
        sport = int(server.wait_for(LISTENING).group(1))
        ccert, ckey = pki["client"]
        assert _tls_client(sport, ccert, ckey) == b""
        server.wait_for(r'"msg":"rejected"')
    finally:
        server.stop()
        backend.close()
    [rejected] = with_msg(records(server), "rejected")
    assert rejected["reason"] == "opa_unavailable" and rejected["peer_id"] == CLIENT_ID
    assert rejected["detail"].startswith(f"peer {CLIENT_ID} refused: ")
