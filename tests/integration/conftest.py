"""pytest fixtures for the integration tests (real SPIRE, go-spiffe peer).

SPIRE fixtures (see README.md in this directory for the full API):

  spire_tools    session  Tools(spire_server, spire_agent, spiffe_peer, opa) from the
                          $SPIFFE_TUNNEL_TOOLS cache; builds what is missing with
                          scripts/build-tools.sh; skips only if Go is absent.
  opa_bin        session  Path of the OPA binary (built on demand).
  spire_root     session  short temp dir (/tmp/st-XXXX) for every socket, config and log.
                          Kept after the run when SPIFFE_TUNNEL_KEEP_TMP=1.
  td_a, td_b     session  TrustDomain (server + agent) for td-a.test / td-b.test, federated
                          through their https_spiffe bundle endpoints.
  td_c           session  TrustDomain td-c.test, federated with nobody.
  spire_domain   function factory: spire_domain("td-x.test", **server_kw) -> a private
                          TrustDomain, stopped after the test (for tests that restart or
                          reconfigure SPIRE).
  spire_entries  function EntryTracker: .create(td, "/path", uid=..., ...) -> entry id;
                          entries are deleted after the test.
  spiffe_peer    function SpiffePeer: .serve(td_or_agent, ...) / .dial(td_or_agent, addr, ...);
                          servers are stopped after the test.

Daemon fixtures (section "daemon" below):

  tunnel_daemons function DaemonSet: .start(args, env=, name=) -> daemon.Daemon (spiffe-tunnel);
                          stopped by PID after the test, log tails attached to failures.

Fixtures for the daemon binary belong in their own section below (or in a separate plugin
module listed in pytest_plugins) -- keep this file a table of contents.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import log_tail, remove_tree, short_tmpdir  # noqa: E402
from spire import (PEER_UID, EntryTracker, SpiffePeer, ToolsUnavailable, TrustDomain,  # noqa: E402
                   federate, locate_tools)

TD_A, TD_B, TD_C = "td-a.test", "td-b.test", "td-c.test"
_private_seq = itertools.count(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs real SPIRE / go-spiffe binaries")


# =========================================================================== SPIRE

@pytest.fixture(scope="session")
def spire_tools():
    try:
        return locate_tools(build=True)
    except ToolsUnavailable as exc:
        pytest.skip(f"SPIRE integration tests need the Go toolchain: {exc}")


@pytest.fixture(scope="session")
def opa_bin(spire_tools):
    """Path of the OPA binary (built into the tools cache on first use)."""
    if spire_tools.opa is not None:
        return spire_tools.opa
    try:
        return locate_tools(build=True, with_opa=True).opa
    except ToolsUnavailable as exc:
        pytest.skip(f"OPA is not built and cannot be: {exc}")


@pytest.fixture(scope="session")
def spire_root():
    root = short_tmpdir("st-")
    yield root
    if os.environ.get("SPIFFE_TUNNEL_KEEP_TMP") == "1":
        print(f"\nSPIRE work dir kept: {root}")
    else:
        remove_tree(root)


@pytest.fixture(scope="session")
def _federated_ab(spire_tools, spire_root):
    a = TrustDomain.start(TD_A, spire_root / "a", spire_tools)
    try:
        b = TrustDomain.start(TD_B, spire_root / "b", spire_tools)
    except BaseException:
        a.stop()
        raise
    try:
        federate(a, b, mode="endpoint")
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture(scope="session")
def td_a(_federated_ab) -> TrustDomain:
    return _federated_ab[0]


@pytest.fixture(scope="session")
def td_b(_federated_ab) -> TrustDomain:
    return _federated_ab[1]


@pytest.fixture(scope="session")
def td_c(spire_tools, spire_root) -> TrustDomain:
    c = TrustDomain.start(TD_C, spire_root / "c", spire_tools)
    yield c
    c.stop()


@pytest.fixture
def spire_domain(spire_tools, spire_root):
    """Factory for private trust domains, stopped at the end of the test."""
    started: list[TrustDomain] = []

    def make(trust_domain: str, **server_kw) -> TrustDomain:
        workdir = spire_root / f"p{next(_private_seq)}"
        td = TrustDomain.start(trust_domain, workdir, spire_tools, **server_kw)
        started.append(td)
        return td

    yield make
    for td in reversed(started):
        td.stop()


@pytest.fixture
def spire_entries():
    tracker = EntryTracker()
    yield tracker
    tracker.cleanup()


@pytest.fixture
def spiffe_peer(spire_tools, spire_root):
    peer = SpiffePeer(spire_tools, spire_root)
    yield peer
    peer.stop_all()


@pytest.fixture(scope="session")
def peer_uid() -> int:
    """uid for the go-spiffe peer (its entries use unix:uid:<peer_uid>); needs root + setpriv."""
    from helpers import can_switch_uid
    if not can_switch_uid():
        pytest.skip("running the peer under another uid needs root and setpriv (util-linux)")
    return PEER_UID


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tails of the SPIRE logs of the trust domains the test used."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, TrustDomain):
            for path in (value.server.log_path, value.agent.log_path):
                report.sections.append((f"{name}: {path.name}", log_tail(path, 25)))
        elif callable(getattr(value, "report_sections", None)):  # e.g. daemon.DaemonSet
            report.sections.extend((f"{name}: {title}", text) for title, text in value.report_sections())


# =========================================================================== daemon
# The binary is build/release/spiffe-tunnel or $SPIFFE_TUNNEL_BIN (daemon.binary()). Module-scoped
# daemons build their own daemon.DaemonSet; a fixture value with report_sections() gets its log
# tails attached to a failing test's report (pytest_runtest_makereport above).

@pytest.fixture
def tunnel_daemons():
    from daemon import DaemonSet
    daemons = DaemonSet()
    yield daemons
    daemons.stop_all()
