"""Proves the SPIRE / go-spiffe harness works against the real components.

Run: cd /work/main && python3 -m pytest -q tests/integration/test_spire_harness.py
(-s shows the TIMING lines used for README.md.)
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from helpers import HarnessError, wait_for
from spire import SELF_UID, federate

pytestmark = pytest.mark.integration


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def timing(what: str, seconds: float) -> None:
    print(f"TIMING {what}: {seconds:.2f}s")


def test_domains_started(td_a, td_b, td_c):
    for td in (td_a, td_b, td_c):
        assert td.server.healthcheck() and td.agent.healthcheck()
        timing(f"{td.name} server start->healthy", td.server.startup_seconds)
        timing(f"{td.name} agent start->healthy", td.agent.startup_seconds)
    # td_a and td_b hold each other's bundle; td_c holds none
    assert td_a.server.has_bundle_for(td_b) and td_b.server.has_bundle_for(td_a)
    assert not td_c.server.has_bundle_for(td_a) and not td_a.server.has_bundle_for(td_c)
    # real federation: each server's bundle client fetched from the other's https_spiffe endpoint
    assert {r["trust_domain"] for r in td_a.server.federation_list()} == {td_b.name}
    wait_for(lambda: td_a.server.bundle_refresh_count(td_b) >= 1, timeout=15,
             desc="td-a bundle client refreshing td-b's bundle")
    wait_for(lambda: td_b.server.bundle_refresh_count(td_a) >= 1, timeout=15,
             desc="td-b bundle client refreshing td-a's bundle")


def test_federated_peers_echo(td_a, td_b, spire_entries, spiffe_peer, peer_uid):
    daemon_id, peer_id = td_a.spiffe_id("/daemon"), td_b.spiffe_id("/peer")

    t0 = time.monotonic()
    spire_entries.create(td_a, "/daemon", uid=SELF_UID, federates_with=[td_b])
    td_a.agent.wait_for_svid(daemon_id)
    timing(f"entry create -> SVID at workload (uid {SELF_UID})", time.monotonic() - t0)
    t0 = time.monotonic()
    spire_entries.create(td_b, "/peer", uid=peer_uid, federates_with=[td_a])
    svid = td_b.agent.wait_for_svid(peer_id, uid=peer_uid)
    timing(f"entry create -> SVID at workload (uid {peer_uid})", time.monotonic() - t0)
    assert svid["chain_len"] == 1

    # uid separation: root on td_b's agent does not get the peer's identity
    try:
        root_ids = [s["id"] for s in td_b.agent.fetch_x509(uid=None, timeout=2)["svids"]]
    except HarnessError:  # PermissionDenied "no identity issued"
        root_ids = []
    assert peer_id not in root_ids
    # the daemon's X509 context carries td-b's bundle (federatesWith)
    assert td_b.id in td_a.agent.fetch_x509()["bundles"]

    srv = spiffe_peer.serve(td_b, allow_ids=[daemon_id], uid=peer_uid)
    assert srv.svid_id == peer_id
    msg = "hello from td-a to td-b"
    res = spiffe_peer.dial(td_a, srv.addr, expect_ids=[peer_id], message=msg)
    assert res.ok, res.stderr
    assert res.stdout == msg
    srv.wait_accepted(daemon_id)

    # authorization is enforced on both sides
    res = spiffe_peer.dial(td_a, srv.addr, expect_ids=[td_b.spiffe_id("/someone-else")])
    assert not res.ok and "unexpected ID" in res.stderr
    other = spiffe_peer.serve(td_b, allow_ids=[td_a.spiffe_id("/not-the-daemon")], uid=peer_uid)
    res = spiffe_peer.dial(td_a, other.addr, expect_ids=[peer_id])
    # TLS 1.3: the client finishes first; the server's refusal arrives as an alert (or, racing
    # with our write, as a reset), so the reason is asserted on the server side.
    assert not res.ok, res.stdout
    other.process.wait_for_line(r"^rejected .*unexpected ID", timeout=5)


def test_non_federated_domain_rejected(td_a, td_b, td_c, spire_domain, spire_entries, spiffe_peer,
                                       peer_uid):
    daemon_id = td_a.spiffe_id("/daemon")
    spire_entries.create(td_a, "/daemon", uid=SELF_UID, federates_with=[td_b])
    spire_entries.create(td_b, "/peer", uid=peer_uid, federates_with=[td_a])
    spire_entries.create(td_c, "/stranger", uid=peer_uid)
    td_a.agent.wait_for_svid(daemon_id)
    td_b.agent.wait_for_svid("/peer", uid=peer_uid)
    td_c.agent.wait_for_svid("/stranger", uid=peer_uid)

    # td-a's daemon refuses a td-c server: it has no td-c bundle
    srv_c = spiffe_peer.serve(td_c, allow_any=True, uid=peer_uid)
    res = spiffe_peer.dial(td_a, srv_c.addr, expect_any=True)
    assert not res.ok
    assert 'no X.509 bundle for trust domain "td-c.test"' in res.stderr

    # a td-c client cannot use td-b's server either (and the server logs the failed handshake)
    srv_b = spiffe_peer.serve(td_b, allow_any=True, uid=peer_uid)
    res = spiffe_peer.dial(td_c, srv_b.addr, expect_any=True, uid=peer_uid)
    assert not res.ok
    srv_b.process.wait_for_line(r"^rejected ", timeout=5)
    assert srv_b.accepted() == []

    # server-side rejection by trust: td-d trusts td-b (one-way bundle_set), td-b does not trust
    # td-d, so the td-d client verifies the server but the server refuses the client's SVID.
    d = spire_domain("td-d.test")
    d.server.bundle_set(td_b, td_b.server.bundle_show("spiffe"))
    d.create_entry("/client", uid=SELF_UID, federates_with=[td_b])
    d.agent.wait_for_svid("/client")
    res = spiffe_peer.dial(d, srv_b.addr, expect_any=True, message="let me in")
    assert not res.ok, res.stdout
    srv_b.process.wait_for_line(r'^rejected .*no X\.509 bundle for trust domain "td-d\.test"', timeout=5)
    assert srv_b.accepted() == []


def test_short_ttl_rotation(td_c, spire_entries):
    """-x509SVIDTTL 30: lifetime 40 s (10 s backdate), the agent renews at ~half life (~10 s)."""
    sid = td_c.spiffe_id("/rotating")
    spire_entries.create(td_c, "/rotating", uid=SELF_UID, ttl=30)
    first = td_c.agent.wait_for_svid(sid)
    assert (_ts(first["not_after"]) - _ts(first["not_before"])).total_seconds() == 40

    # the SPIRE CLI's view (independent of go-spiffe), with the PEM files written out
    out1 = td_c.agent.workdir / "fetch-1"
    cli1 = [s for s in td_c.agent.api_fetch_x509(write_dir=out1) if s["id"] == sid]
    assert cli1 and (out1 / "svid.0.pem").exists() and (out1 / "bundle.0.pem").exists()

    seen = [(time.monotonic(), first["serial"], _ts(first["not_before"]))]

    def rotated_twice():
        cur = next(s for s in td_c.agent.fetch_x509()["svids"] if s["id"] == sid)
        if cur["serial"] != seen[-1][1]:
            seen.append((time.monotonic(), cur["serial"], _ts(cur["not_before"])))
        return len(seen) >= 3

    wait_for(rotated_twice, timeout=45, interval=0.25, desc="two rotations of a 30 s SVID")
    # issuance times come from the certificates (not_before = issued - 10 s)
    gaps = [(seen[i + 1][2] - seen[i][2]).total_seconds() for i in (0, 1)]
    for g in gaps:
        timing("rotation interval (TTL 30s, from not_before)", g)
        assert 5 <= g <= 20, gaps

    out2 = td_c.agent.workdir / "fetch-2"
    cli2 = [s for s in td_c.agent.api_fetch_x509(write_dir=out2) if s["id"] == sid]
    assert cli2 and cli2[0]["serial"] != cli1[0]["serial"]


def test_agent_restart_reuses_its_svid(spire_domain):
    """stop()/start() keeps data_dir: no second join token, workloads keep their entries."""
    d = spire_domain("td-r.test")
    d.create_entry("/w", uid=SELF_UID)
    d.agent.wait_for_svid("/w")
    d.agent.stop()
    assert not d.agent.healthcheck()
    t0 = time.monotonic()
    d.agent.start()
    timing("agent restart (stored SVID) -> healthy", time.monotonic() - t0)
    assert d.agent.tokens_used == 1
    assert "SVID loaded" in d.agent.log_path.read_text()
    d.agent.wait_for_svid("/w")

    d.agent.reattest()  # fresh token + empty data_dir, same node alias -> entries still match
    assert d.agent.tokens_used == 2
    d.agent.wait_for_svid("/w")


def test_static_federation(spire_domain, spiffe_peer):
    x, y = spire_domain("td-x.test"), spire_domain("td-y.test")
    federate(x, y, mode="static")
    assert x.server.has_bundle_for(y) and y.server.has_bundle_for(x)
    x.create_entry("/x", uid=SELF_UID, federates_with=[y])
    y.create_entry("/y", uid=SELF_UID, federates_with=[x])
    x.agent.wait_for_svid("/x")
    y.agent.wait_for_svid("/y")
    srv = spiffe_peer.serve(y, allow_ids=[x.spiffe_id("/x")])
    res = spiffe_peer.dial(x, srv.addr, expect_ids=[y.spiffe_id("/y")], message="static")
    assert res.ok and res.stdout == "static", res.stderr
