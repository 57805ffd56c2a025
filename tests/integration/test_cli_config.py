"""The shipped example configuration validates, config errors point at file:line:column, and
`spiffe-tunnel run -c` runs several tunnels from one file."""

from __future__ import annotations

from daemon import REPO, Backend, Daemon, exchange, run_once
from test_files_tunnels import CLIENT_ID, SERVER_ID, pki  # noqa: F401 (fixture)


def test_example_config_validates():
    r = run_once(["check-config", "-c", REPO / "config" / "spiffe-tunnel.example.yaml"])
    assert r.returncode == 0, r.stderr
    assert "OK, 2 tunnel(s)" in r.stdout


def test_busy_poll_flag_is_checked_for_config_files_too():
    r = run_once(["check-config", "-c", REPO / "config" / "spiffe-tunnel.example.yaml",
                  "--busy-poll", "1s"])
    assert r.returncode > 0
    assert "flag --busy-poll" in r.stderr and '"1s" is not a busy-poll window' in r.stderr, r.stderr


def test_config_error_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("identity:\n  workload_api: unix:///run/agent.sock\ntunnels:\n"
                   "  - name: t1\n    mode: server\n    listen: 127.0.0.1:0\n"
                   "    target: 127.0.0.1:1\n    allow:\n      ids: [\"spiffe://UPPER/x\"]\n")
    r = run_once(["check-config", "-c", bad])
    assert r.returncode == 2
    assert f"{bad}:9:" in r.stderr and "spiffe://UPPER/x" in r.stderr, r.stderr


def test_run_many_tunnels_from_one_file(pki, tmp_path):
    backend = Backend("echo")
    cert, key = pki["server"]
    ccert, ckey = pki["client"]
    # One daemon holding the server identity runs the server tunnel; a second daemon runs two
    # client tunnels towards it (different names, same identity).
    server_cfg = tmp_path / "server.yaml"
    server_cfg.write_text(f"""
identity:
  files:
    cert: {cert}
    key: {key}
    bundles: {{a.test: {pki['bundle:a.test']}, b.test: {pki['bundle:b.test']}}}
tunnels:
  - name: in
    mode: server
    listen: 127.0.0.1:0
    target: 127.0.0.1:{backend.port}
    allow: {{ids: [{CLIENT_ID}]}}
""")
    server = Daemon(["run", "-c", server_cfg], name="server")
    try:
        sport = server.wait_listening()
        client_cfg = tmp_path / "client.yaml"
        client_cfg.write_text(f"""
identity:
  files: {{cert: {ccert}, key: {ckey}, bundles: {{a.test: {pki['bundle:a.test']}, b.test: {pki['bundle:b.test']}}}}}
tunnels:
  - {{name: out-1, mode: client, listen: "127.0.0.1:0", target: "127.0.0.1:{sport}", expect: {{ids: [{SERVER_ID}]}}}}
  - {{name: out-2, mode: client, listen: "127.0.0.1:0", target: "127.0.0.1:{sport}", expect: {{trust_domains: [b.test]}}}}
""")
        client = Daemon(["run", "-c", client_cfg], name="client")
        try:
            ports = [int(m) for m in
                     (client.wait_for(r"tunnel=out-1 .*listening on [^ ]+:(\d+)").group(1),
                      client.wait_for(r"tunnel=out-2 .*listening on [^ ]+:(\d+)").group(1))]
            for p in ports:
                assert exchange(p, b"via " + str(p).encode()) == b"via " + str(p).encode()
            client.wait_for(r"tunnel=out-2 session=1 .* opened peer=spiffe://b.test/server "
                            r"\(trust domain b.test is listed\)")
        finally:
            client.stop()
    finally:
        server.stop()
        backend.close()
