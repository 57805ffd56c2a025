"""`spiffe-tunnel wait-ready` against a real SPIRE agent (issue #10, item 4).

  registration   started before its entry exists: still waiting until the entry is created,
                 then exits 0 with one line naming the SVID and the bundles
  no entry       times out (exit 2) saying the agent answered but issued no SVID
  wrong SVID     times out naming the SVID asked for and listing those held
  bundle         a trust domain nobody federates with times out naming it and the held ones
  no agent       times out saying there is no connection, with gRPC's last error
  signals        SIGTERM ends it at once (143); usage errors exit 1

Each SPIRE scenario gets a private trust domain, so no other test's uid-0 entries reach it.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from daemon import binary, run_once
from spire import SELF_UID

pytestmark = pytest.mark.integration

START_TIMEOUT = 45.0


def start_wait(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(binary()), "wait-ready", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"wait-ready still running after {timeout}s:\n{out}\n{err}")
    return proc.returncode, out, err


def test_returns_once_the_entry_is_registered_and_not_before(spire_domain):
    td = spire_domain("td-wait.test")
    want = td.spiffe_id("/waiter")
    proc = start_wait("--workload-api", td.socket, "--svid", want, "--timeout", "90s")
    try:
        time.sleep(4.0)  # the agent answers PermissionDenied meanwhile
        assert proc.poll() is None, proc.communicate()
        td.create_entry(want, uid=SELF_UID)
        created = time.monotonic()
        rc, out, err = finish(proc, START_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"ready: SVID {want} valid until "), out
    assert "; bundles td-wait.test; from workload-api " + td.socket in lines[0], out
    assert time.monotonic() - created < START_TIMEOUT
    # what it logged while waiting: the agent had no identity for it yet
    assert "has no identity for this workload yet (PermissionDenied" in err, err


def test_times_out_with_no_svid_reason_when_nothing_is_registered(spire_domain):
    td = spire_domain("td-noentry.test")
    start = time.monotonic()
    rc, out, err = finish(start_wait("--workload-api", td.socket, "--timeout", "4s"), 30)
    assert rc == 2, err
    assert out == ""
    assert 3.5 < time.monotonic() - start < 20
    reason = err.strip().splitlines()[-1]
    assert reason.startswith("spiffe-tunnel wait-ready: not ready after 4s: connected to "
                             f"workload-api {td.socket}, but it issued no SVID to this workload "
                             "(PermissionDenied"), err
    assert f"unix:uid:{SELF_UID}" in reason


def test_times_out_naming_the_svid_and_the_unfederated_bundle(spire_domain):
    td = spire_domain("td-held.test")
    held = td.spiffe_id("/held")
    td.create_entry(held, uid=SELF_UID)
    td.agent.wait_for_svid(held)

    # the SVID is there, but not the one asked for
    rc, _, err = finish(start_wait("--workload-api", td.socket, "--svid", td.spiffe_id("/other"),
                                   "--timeout", "3s"), 30)
    assert rc == 2
    assert (f"delivered an identity, but no SVID with SPIFFE ID {td.spiffe_id('/other')} is "
            f"held; the identity source has: {held}") in err, err

    # the SVID is there, and so is its own bundle, but nobody federates td-c.test
    rc, out, err = finish(start_wait("--workload-api", td.socket, "--trust-domain",
                                     "td-held.test", "--trust-domain", "td-c.test",
                                     "--timeout", "3s"), 30)
    assert rc == 2 and out == ""
    assert ("delivered an identity, but no bundle for trust domain td-c.test; bundles held: "
            "td-held.test") in err, err

    # and without the unfederated domain it is ready at once
    rc, out, err = finish(start_wait("--workload-api", td.socket, "--trust-domain",
                                     "td-held.test", "--timeout", "20s"), 30)
    assert rc == 0, err
    assert out.startswith(f"ready: SVID {held} "), out


def test_times_out_with_no_connection_reason_without_an_agent(tmp_path):
    sock = f"unix://{tmp_path}/nothing-here.sock"
    rc, out, err = finish(start_wait("--workload-api", sock, "--timeout", "2s"), 20)
    assert rc == 2
    reason = err.strip().splitlines()[-1]
    assert reason.startswith(f"spiffe-tunnel wait-ready: not ready after 2s: no connection to "
                             f"workload-api {sock} (last error: Unavailable"), err
    assert "is the agent running" in reason


def test_sigterm_and_sigint_end_it_promptly(tmp_path):
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = start_wait("--workload-api", f"unix://{tmp_path}/none.sock", "--timeout", "5m")
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(sig)
        rc, _, err = finish(proc, 10)
        assert rc == code, err
        assert time.monotonic() - sent < 2.0
        # gRPC may still be connecting when the signal comes
        assert (f"{sig.name} before ready: no connection to " in err
                or f"{sig.name} before ready: no answer from " in err), err


@pytest.mark.parametrize("args,message", [
    (["--svid", "spiffe://a.test/x", "--svid-hint", "h"], "choose either --svid or --svid-hint"),
    (["--timeout", "soon"], "flag --timeout: "),
    (["--trust-domain", "Not A Domain"], "flag --trust-domain: "),
    (["--workload-api", "unix:relative.sock", "--timeout", "1s"], "unix:relative.sock"),
    (["--bogus"], "The following argument was not expected: --bogus"),
    (["--log-level", "loud"], "flag --log-level: "),
])
def test_usage_errors_exit_1(args, message):
    r = run_once(["wait-ready", *args])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr


def test_without_any_address_names_spiffe_endpoint_socket():
    import os
    env = {k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"}
    r = subprocess.run([str(binary()), "wait-ready", "--timeout", "1s"], capture_output=True,
                       text=True, timeout=10, env=env)
    assert r.returncode == 1
    assert "SPIFFE_ENDPOINT_SOCKET" in r.stderr
