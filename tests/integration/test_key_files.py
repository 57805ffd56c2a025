"""Private key files on disk: the daemon refuses a key file that group or others may access
(identity.files.key_permissions: strict, the default), starts with a warning when told to only
warn, and `spiffe-tunnel demo` writes its keys readable by their owner only."""

from __future__ import annotations

import os
import stat
import subprocess

from daemon import Backend, Daemon, binary, exchange, run_once
from test_files_tunnels import A, B, CLIENT_ID, SERVER_ID, bundles, pki, start_client  # noqa: F401


def _server_args(pki, cert, key, backend_port, *extra):
    return ["server", "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{backend_port}",
            "--cert", cert, "--key", key, *bundles(pki, A, B), "--allow-id", CLIENT_ID, *extra]


def test_key_file_readable_by_others_is_refused(pki, tmp_path):
    cert, key = pki["ca"][B].issue(SERVER_ID).write(tmp_path, "svid")
    os.chmod(key, 0o644)
    r = run_once(_server_args(pki, cert, key, 9))
    assert r.returncode > 0, r.stderr
    err = r.stderr.strip()
    assert f"{key} has mode 0644, so group or others may access the private key" in err, err
    assert f"chmod 600 {key}" in err and "key_permissions: warn" in err, err
    assert len(err.splitlines()) <= 3, err


def test_key_file_readable_by_group_is_refused_from_a_config_file(pki, tmp_path):
    cert, key = pki["ca"][B].issue(SERVER_ID).write(tmp_path, "svid")
    os.chmod(key, 0o640)
    config = tmp_path / "config.yaml"
    config.write_text(f"""identity:
  files:
    cert: {cert}
    key: {key}
    bundles: {{{A}: {pki[f"bundle:{A}"]}}}
tunnels:
  - {{name: web, mode: server, listen: "127.0.0.1:0", target: "127.0.0.1:9",
     allow: {{ids: ["{CLIENT_ID}"]}}}}
""")
    r = run_once(["run", "--config", str(config)])
    assert r.returncode > 0, r.stderr
    assert f"{key} has mode 0640" in r.stderr, r.stderr


def test_warn_mode_starts_with_a_warning_and_serves(pki, tmp_path):
    cert, key = pki["ca"][B].issue(SERVER_ID).write(tmp_path, "svid")
    os.chmod(key, 0o644)
    backend = Backend("echo")
    server = Daemon(_server_args(pki, cert, key, backend.port, "--key-permissions", "warn"),
                    name="server")
    try:
        sport = server.wait_listening()
        server.wait_for(rf"private key file {key} has mode 0644: group or others may access it")
        client, cport = start_client(pki, sport)
        try:
            assert exchange(cport, b"still served") == b"still served"
        finally:
            client.stop()
    finally:
        server.stop()
        backend.close()


def test_demo_writes_keys_for_their_owner_only(tmp_path):
    # A umask that would leave new files world-readable must not matter for keys.
    d = tmp_path / "demo"
    proc = subprocess.run([str(binary()), "demo", "--dir", str(d)], capture_output=True,
                          text=True, timeout=60, preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = sorted(d.glob("*/svid.key"))
    assert len(keys) == 3
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
