"""The kernel TLS data path, proven in a User-Mode Linux guest (this host's kernel has no kTLS).

One guest boot runs every case of ktls_scenario.py; the assertions here read its JSON results:
64 MiB each way intact per cipher, /proc/net/tls_stat TX and RX counters rising for both tunnel
ends, both directions on kTLS + splice; the same with --ktls off and without the tls module on
the userspace path; close_notify, half-close and reset on both paths; a third-party
openssl s_server's session tickets dropped and its KeyUpdate closing the session cleanly; and
the memory an idle connection costs on the kernel path, beside the userspace record layer; and
the AEAD usage limit of a kernel direction this kernel cannot re-key (reason aead_limit); and
session resumption with kTLS: a full and a resumed connection, both offloaded both ways.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from uml import guest_path, requires_uml, uml_run

pytestmark = requires_uml

HERE = Path(__file__).resolve().parent
MIB = int(os.environ.get("KTLS_SCENARIO_MIB", "64"))
OFFLOAD_CASES = ["tls13-aes128gcm", "tls13-aes256gcm", "tls13-chacha20", "tls12-aes128gcm"]


def _run(cases, tls_module=True, timeout=900):
    # The guest has its own /tmp: a checkout under the host's /tmp is reached through guest_path.
    cmd = [sys.executable, guest_path(HERE / "ktls_scenario.py"), *cases]
    if not tls_module:
        # The kernel would load tls on the first TCP_ULP request; forbid module loading so the
        # guest behaves like a kernel without kTLS.
        cmd = ["bash", "-c", 'echo /bin/false > /proc/sys/kernel/modprobe && exec "$@"', "-", *cmd]
    env = {"KTLS_SCENARIO_MIB": str(MIB)}
    if "SPIFFE_TUNNEL_BIN" in os.environ:
        env["SPIFFE_TUNNEL_BIN"] = guest_path(os.environ["SPIFFE_TUNNEL_BIN"])
    r = uml_run(cmd,
                env=env, tls_module=tls_module, timeout=timeout,
                mem="1G")
    results = {}
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            d = json.loads(line)
            results[d["case"]] = d
    assert r.returncode == 0 and set(results) == set(cases), \
        f"rc={r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    for d in results.values():
        assert "error" not in d, json.dumps(d, indent=1)
    return results


@pytest.fixture(scope="module")
def with_module():
    return _run(OFFLOAD_CASES + ["ktls-off", "halfclose", "reset", "reset-userspace",
                                 "s_server_nst_keyupdate", "idle_memory", "aead_limit"])


@pytest.fixture(scope="module")
def without_module():
    return _run(["tls13-aes128gcm", "halfclose", "reset", "ktls_on_without_module"],
                tls_module=False)


@pytest.mark.parametrize("case", OFFLOAD_CASES)
def test_bulk_transfer_is_offloaded_both_ways(with_module, case):
    r = with_module[case]
    assert r["intact"] and r["bytes_back"] == MIB << 20 and r["backend_bytes"] == MIB << 20
    # One TX and one RX kTLS socket per tunnel end.
    assert r["tls_stat_delta"]["TlsTxSw"] >= 2, r
    assert r["tls_stat_delta"]["TlsRxSw"] >= 2, r
    assert r["tls_stat_delta"]["TlsDecryptError"] == 0
    assert r["server_tls"] == [["ktls", "ktls"]] and r["client_tls"] == [["ktls", "ktls"]]
    assert r["server_closed"] == [["ktls+splice/ktls+splice", "closed"]]
    assert r["client_closed"] == [["ktls+splice/ktls+splice", "closed"]]
    print(f"{case}: {MIB} MiB each way in {r['seconds']}s inside UML")


def test_ktls_off_uses_userspace(with_module):
    r = with_module["ktls-off"]
    assert r["intact"]
    assert r["tls_stat_delta"].get("TlsTxSw", 0) == 0 and r["tls_stat_delta"].get("TlsRxSw", 0) == 0
    assert r["server_closed"] == [["userspace/userspace", "closed"]]
    assert r["client_closed"] == [["userspace/userspace", "closed"]]


def test_without_tls_module_falls_back_to_userspace(without_module):
    r = without_module["tls13-aes128gcm"]
    assert r["intact"] and r["tls_stat_delta"] == {}
    assert r["server_tls"] == [["userspace", "userspace"]]
    assert r["server_closed"] == [["userspace/userspace", "closed"]]


def test_ktls_on_refuses_to_start_without_module(without_module):
    r = without_module["ktls_on_without_module"]
    assert r["rc"] == 1
    assert 'ktls is "on"' in r["log"] and "modprobe tls" in r["log"]


@pytest.mark.parametrize("fixture", ["with_module", "without_module"])
def test_half_close_on_both_paths(request, fixture):
    r = request.getfixturevalue(fixture)["halfclose"]
    assert r["ok"]
    expected = "ktls" if fixture == "with_module" else "userspace"
    assert r["server_tls"] == [[expected, expected]]


@pytest.mark.parametrize("fixture,case", [("with_module", "reset"),
                                          ("with_module", "reset-userspace"),
                                          ("without_module", "reset")])
def test_app_reset_closes_the_pair_and_tunnels_keep_serving(request, fixture, case):
    r = request.getfixturevalue(fixture)[case]
    assert "Connection reset by peer" in r["client_reason"]
    assert "without close_notify" in r["server_reason"]
    assert r["still_alive"]


def test_third_party_tickets_dropped_and_keyupdate_closes(with_module):
    r = with_module["s_server_nst_keyupdate"]
    assert r["client_tls"] == [["ktls", "ktls"]]
    assert r["data_after_tickets"], "data after the server's NewSessionTickets did not arrive"
    assert "KeyUpdate" in r["close_reason"]
    assert r["app_after_keyupdate"] in ("", "error 104")


def test_idle_kernel_tls_connection_costs_no_more_than_userspace_one(with_module):
    """Once the kernel holds both directions the SSL object goes, as with the userspace record
    layer: both ends together stay within issue #5's 24 KiB per idle connection."""
    r = with_module["idle_memory"]
    n = r["connections"] + 1  # and the warm-up connection
    # Every session of the first pair ran on the kernel path, every one of the second in userspace.
    assert r["ktls"]["sessions"] == {"server": {"ktls/ktls": n}, "client": {"ktls/ktls": n}}, r
    assert r["userspace"]["sessions"] == {"server": {"userspace/userspace": n},
                                          "client": {"userspace/userspace": n}}, r
    ktls, user = r["ktls"]["kib_per_conn"], r["userspace"]["kib_per_conn"]
    print(f"idle connection, both ends: {ktls} KiB with kTLS, {user} KiB with the userspace "
          f"record layer ({r['connections']} connections, RSS {r['ktls']['rss_kib']} / "
          f"{r['userspace']['rss_kib']} KiB)")
    assert 0 < ktls <= 24, r
    assert 0 < user <= 24, r


def test_kernel_aes_gcm_session_ends_at_the_aead_limit_and_others_go_on(with_module):
    """key_update_records 128 on kernel AES-GCM pairs (TLS 1.3 and 1.2): the kernel (6.1) cannot
    re-key, so the session ends with reason aead_limit once a kernel key has protected 128 records (read with
    getsockopt(SOL_TLS)); a sibling pair with the default limit, running at the same time, and a
    ChaCha20-Poly1305 pair with the same low limit (not capped) carry all 8 MiB each way."""
    r = with_module["aead_limit"]
    limit = r["limit"]
    spent = []
    for name in ("limited", "tls12"):  # TLS 1.3 and TLS 1.2, AES-128-GCM
        assert r[f"{name}_server_tls"] == [["ktls", "ktls"]], r
        endings = r[f"{name}_server_ending"] + r[f"{name}_client_ending"]
        assert endings and all(reason == "aead_limit" for reason, _ in endings), r
        spent += [int(m.group(1)) for _, detail in endings
                  if (m := re.search(r"has protected (\d+) records", detail))]
        assert not r[name]["intact"] and r[name]["bytes_back"] < r["size"], r
    # Read every 8 records' worth of pump steps: the session ends near the limit, not far past.
    assert spent and all(limit <= n <= 2 * limit for n in spent), r
    for name in ("sibling", "chacha"):
        assert r[name]["intact"], r
        assert not r[f"{name}_server_ending"] and not r[f"{name}_client_ending"], r
        assert r[f"{name}_server_tls"] == [["ktls", "ktls"]], r
    print(f"aead_limit: ended after {spent} records (limit {limit}), "
          f"{r['limited']['bytes_back']} of {r['size']} bytes back; sibling and ChaCha20 intact")


@pytest.fixture(scope="module")
def resumption():
    return _run(["resumption"])["resumption"]


def test_resumed_session_runs_on_ktls_both_ways(resumption):
    """--session-resumption on both ends, ktls auto: the first connection (full handshake, the
    client reads the server's NewSessionTicket before the kernel takes its receive direction) and
    the second (resumed) are offloaded both ways at both ends, with every byte intact."""
    r = resumption
    assert r["server_resumed"] == ["false", "true"] and r["client_resumed"] == ["false", "true"], r
    for conn in r["conns"]:
        assert conn["intact"] and conn["bytes_back"] == 8 << 20, r
    assert r["backend_bytes"] == 16 << 20
    assert r["server_tls"] == [["ktls", "ktls"]] * 2 and r["client_tls"] == [["ktls", "ktls"]] * 2, r
    # Two kernel sockets per direction per connection (client and server end).
    assert r["tls_stat_delta"]["TlsTxSw"] >= 4 and r["tls_stat_delta"]["TlsRxSw"] >= 4, r
    assert r["tls_stat_delta"]["TlsDecryptError"] == 0, r
    assert r["server_closed"] == [["ktls+splice/ktls+splice", "closed"]] * 2, r
    assert r["client_closed"] == [["ktls+splice/ktls+splice", "closed"]] * 2, r
    # Against a server tunnel that issues no tickets the client's wait for one is bounded.
    nt = r["no_ticket"]
    assert nt["echo"] and nt["intact"] and nt["client_tls"] == [["ktls", "ktls"]] * 3, r
    assert nt["first_byte_s"] < 2.0 and nt["again_first_byte_s"] is not None, r
    assert nt["again_first_byte_s"] < 2.0, r
    print(f"full then resumed connection on kTLS: {[c['seconds'] for c in r['conns']]}s "
          f"for 8 MiB each way inside UML; first byte from a server without tickets after "
          f"{nt['first_byte_s']}s, on the next connection {nt['again_first_byte_s']}s")
