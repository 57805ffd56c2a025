"""The Debian package (docs/debian.md).

1. Built with CPack from the release build, checked by lintian (no errors).
2. Installed with `dpkg -i` on this machine: the files, the system user, `systemd-analyze verify`
   of the installed units (no warning about them), `check-config` on the installed example (as
   the service user), the man page; then `dpkg --purge` leaves none of it behind.
3. With systemd as PID 1 in a podman container (a bookworm root file system seeded here by
   scripts/seed-systemd-image.sh): the hardened unit reaches `active` through READY=1, carries a
   connection through a client and a server tunnel, reloads, is kept alive by the watchdog, and
   is restarted by it when one data-path thread is frozen (ptrace, from outside).

Each step's duration and the .deb size are printed at the end of the module."""
from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(REPO / "tests" / "integration"))
from pki import CA  # noqa: E402

BUILD = REPO / "build" / "release"
PACKAGE = "spiffe-tunnel"
USER = "spiffe-tunnel"
OUR_UNITS = ["/lib/systemd/system/spiffe-tunnel.service",
             "/lib/systemd/system/spiffe-tunnel.socket"]
EXPECTED_FILES = [
    "/usr/bin/spiffe-tunnel", *OUR_UNITS, "/etc/spiffe-tunnel/config.yaml",
    "/usr/lib/sysusers.d/spiffe-tunnel.conf", "/usr/lib/modules-load.d/spiffe-tunnel.conf",
    "/usr/share/man/man8/spiffe-tunnel.8.gz", "/usr/share/doc/spiffe-tunnel/copyright",
    "/usr/share/doc/spiffe-tunnel/changelog.Debian.gz",
]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]

TIMINGS: list[tuple[str, float]] = []
FACTS: list[str] = []


@contextlib.contextmanager
def step(name: str):
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS.append((name, time.monotonic() - start))


def run(cmd, *, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {out.returncode}\n"
                             f"stdout: {out.stdout[-3000:]}\nstderr: {out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module", autouse=True)
def report_timings(request):
    yield
    # Straight to the terminal: shown on success too, not only with a failure's captured output.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    lines = [f"  {name:<48} {secs:7.1f} s" for name, secs in TIMINGS]
    text = "\n".join(["", "== Debian package", *FACTS, *lines])
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(text + "\n")


@pytest.fixture(scope="module")
def deb() -> Path:
    """The .deb, made by `cpack -G DEB` in build/release (the build is a no-op after test.sh's)."""
    if not shutil.which("dpkg-deb") or not shutil.which("dpkg-shlibdeps"):
        pytest.fail("dpkg-dev is missing: scripts/setup-deps.sh installs it")
    with step("configure + build (spiffe-tunnel, man page)"):
        run(["cmake", "--preset", "release"], cwd=REPO)
        run(["cmake", "--build", "--preset", "release", "-j2", "--target", "spiffe-tunnel",
             "package_docs"], cwd=REPO, timeout=3000)
    out_dir = BUILD / "deb"
    shutil.rmtree(out_dir, ignore_errors=True)
    with step("cpack -G DEB"):
        run(["cpack", "-G", "DEB", "-B", str(out_dir)], cwd=BUILD)
    debs = list(out_dir.glob("*.deb"))
    assert len(debs) == 1, debs
    FACTS.append(f"  {debs[0].name}: {debs[0].stat().st_size / 1e6:.2f} MB")
    return debs[0]


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def test_package_metadata_and_lintian(deb):
    assert deb_field(deb, "Package") == PACKAGE
    assert deb_field(deb, "Section") == "net"
    depends = deb_field(deb, "Depends")
    # dpkg-shlibdeps found the libraries the binary links.
    for lib in ("libssl3", "libyaml-cpp", "libgrpc++", "libsystemd0", "adduser"):
        assert lib in depends, depends
    contents = run(["dpkg-deb", "-c", str(deb)]).stdout
    for path in EXPECTED_FILES:
        assert "." + path in contents, path
    control = run(["dpkg-deb", "-I", str(deb)]).stdout
    assert "conffiles" in control and "postinst" in control
    if not shutil.which("lintian"):
        pytest.fail("lintian is missing: scripts/setup-deps.sh installs it")
    with step("lintian"):
        out = run(["lintian", "--fail-on", "error", "--tag-display-limit", "0", str(deb)],
                  check=False)
    FACTS.append("  lintian: " + (" ".join(sorted({l.split(":")[2].split()[0] for l in
                                                   out.stdout.splitlines() if l.count(":") >= 2}))
                                  or "clean"))
    assert out.returncode == 0, out.stdout + out.stderr


# ---- installed on this machine (no systemd as PID 1) --------------------------------------------

def installed_state() -> str | None:
    out = run(["dpkg-query", "-W", "-f", "${db:Status-Status}", PACKAGE], check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def dpkg(*args: str) -> subprocess.CompletedProcess:
    # Another apt/dpkg on the machine holds the lock for a while at most: wait for it.
    for _ in range(60):
        out = run(["dpkg", *args], check=False)
        if out.returncode == 0 or "lock" not in out.stderr:
            break
        time.sleep(2)
    if out.returncode != 0:
        raise AssertionError(f"dpkg {' '.join(args)}: {out.stdout}{out.stderr}")
    return out


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_install_verify_and_purge_on_this_machine(deb):
    user_existed = user_exists(USER)
    if installed_state() not in (None, "not-installed"):
        dpkg("--purge", PACKAGE)  # left over from an interrupted run
    try:
        with step("dpkg -i (host)"):
            dpkg("-i", str(deb))
        assert installed_state() == "installed"
        listed = run(["dpkg", "-L", PACKAGE]).stdout.split()
        files = [p for p in listed if os.path.isfile(p)]
        for path in EXPECTED_FILES:
            assert path in files, path
        conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE]).stdout
        assert "/etc/spiffe-tunnel/config.yaml" in conffiles
        assert Path("/usr/lib/modules-load.d/spiffe-tunnel.conf").read_text().split()[-1] == "tls"

        user = pwd.getpwnam(USER)
        assert user.pw_uid < 1000 and user.pw_shell.endswith("nologin"), user

        with step("systemd-analyze verify"):
            out = run(["systemd-analyze", "verify", *OUR_UNITS], check=False)
        ours = [l for l in (out.stdout + out.stderr).splitlines() if "spiffe-tunnel" in l]
        assert not ours, "\n".join(ours)
        assert out.returncode == 0, out.stdout + out.stderr
        out = run(["systemd-analyze", "security", "--offline=true", OUR_UNITS[0]], check=False)
        exposure = re.search(r"Overall exposure level for spiffe-tunnel.service: ([0-9.]+)",
                             out.stdout)
        assert exposure, out.stdout + out.stderr
        FACTS.append(f"  systemd-analyze security: exposure {exposure.group(1)}")
        assert float(exposure.group(1)) <= 2.0, out.stdout

        # As installed, and as the user the unit runs as.
        out = run(["runuser", "-u", USER, "--", "/usr/bin/spiffe-tunnel", "check-config", "-c",
                   "/etc/spiffe-tunnel/config.yaml"])
        assert "OK, 2 tunnel(s)" in out.stdout

        env = dict(os.environ, MANWIDTH="100", LC_ALL="C.UTF-8")
        for cmd in (["man", "--warnings", "-l", "/usr/share/man/man8/spiffe-tunnel.8.gz"],
                    ["man", "--warnings", "8", "spiffe-tunnel"]):
            out = run(cmd, env=env)
            text = re.sub(".\b", "", out.stdout)
            assert "check-config" in text and "--workload-api" in text and "SIGHUP" in text
            assert out.stderr.strip() == "", out.stderr

        with step("dpkg --purge (host)"):
            dpkg("--purge", PACKAGE)
        assert installed_state() in (None, "not-installed")
        left = [p for p in listed if os.path.lexists(p) and not os.path.isdir(p)]
        assert not left, left
        for gone in ("/etc/spiffe-tunnel", "/usr/share/doc/spiffe-tunnel"):
            assert not os.path.exists(gone), gone
        state = [str(p) for d in Path("/var/lib/systemd").glob("deb-systemd-helper-*")
                 for p in d.rglob("*spiffe-tunnel*")]
        assert not state, state
    finally:
        if installed_state() not in (None, "not-installed"):
            dpkg("--purge", PACKAGE)
        if not user_existed and user_exists(USER):
            run(["userdel", USER], check=False)
            run(["groupdel", USER], check=False)


# ---- under systemd as PID 1 (podman) -----------------------------------------------------------

def podman_works() -> bool:
    return bool(shutil.which("podman")) and run(PODMAN[:1] + ["info"], check=False).returncode == 0


def seeded_image(deb: Path) -> str:
    """The systemd image with the package's dependencies, named by what went into it."""
    deps = sorted({alt.split()[0] for dep in deb_field(deb, "Depends").split(",")
                   for alt in dep.split("|")[:1]})
    script = REPO / "scripts" / "seed-systemd-image.sh"
    digest = hashlib.sha256((" ".join(deps) + script.read_text()).encode()).hexdigest()[:12]
    image = f"localhost/spiffe-tunnel-systemd-test:{digest}"
    with step("seed systemd image (mmdebstrap; cached)"):
        run(["bash", str(script), image, *deps], timeout=900)
    return image


class Machine:
    """A running container with systemd as PID 1."""

    def __init__(self, name: str):
        self.name = name

    def sh(self, script: str, *, check=True, timeout=120) -> subprocess.CompletedProcess:
        return run(["podman", "exec", self.name, "bash", "-c", script], check=check,
                   timeout=timeout)

    def put(self, path: str, data: bytes | str, mode: int = 0o644, group: str = "root",
            owner: str = "root"):
        with tempfile.NamedTemporaryFile() as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            run(["podman", "cp", f.name, f"{self.name}:{path}"])
        self.sh(f"chown {owner}:{group} {path} && chmod {mode:o} {path}")

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value spiffe-tunnel").stdout.strip()

    def journal(self) -> str:
        return self.sh("journalctl -u spiffe-tunnel --no-pager -o cat").stdout

    def echo_through(self, port: int) -> str:
        out = self.sh(f"exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'ping {port}\\n' >&3; "
                      "read -t 10 line <&3; echo \"$line\"", check=False)
        return out.stdout.strip()

    def wait_for(self, what: str, cond, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.journal()[-4000:]}")
            time.sleep(0.25)


@pytest.fixture(scope="module")
def systemd_image(deb) -> str:
    if not podman_works():
        pytest.skip("podman cannot run on this machine")
    return seeded_image(deb)


def test_install_without_systemd_or_sysusers(deb, systemd_image):
    """A chroot-like install (no init, no systemd-sysusers): adduser makes the user, nothing calls
    systemctl, and purge works."""
    script = f"""set -e
rm -f /usr/bin/systemd-sysusers /bin/systemd-sysusers
test ! -d /run/systemd/system
dpkg -i /mnt/{deb.name}
getent passwd {USER}
getent group {USER}
/usr/bin/spiffe-tunnel check-config -c /etc/spiffe-tunnel/config.yaml
dpkg --purge {PACKAGE}
test ! -e /etc/spiffe-tunnel
"""
    with step("dpkg -i/--purge without systemd (adduser)"):
        out = run(PODMAN + ["run", "--rm", "--ulimit", "nofile=16384:16384", "--ulimit",
                            "nproc=4096:4096", "-v", f"{deb.parent}:/mnt:ro", systemd_image,
                            "bash", "-c", script], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "systemctl" not in out.stderr, out.stderr


@pytest.fixture(scope="module")
def machine(systemd_image):
    image = systemd_image
    name = f"st-deb-test-{os.getpid()}"
    # --privileged: the container stands in for a VM, whose systemd has every capability it
    # needs for the unit's sandboxing (mount namespaces, seccomp, capability sets). The ulimits
    # stay within this machine's hard limits.
    with step("boot systemd in podman"):
        run(PODMAN + ["run", "-d", "--name", name, "--systemd=always", "--privileged",
                      "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096",
                      image, "/sbin/init"])
        m = Machine(name)
        try:
            m.wait_for("systemd to finish booting", lambda: m.sh(
                "systemctl is-system-running", check=False).stdout.strip() in
                ("running", "degraded"))
        except BaseException:
            run(["podman", "rm", "-f", name], check=False)
            raise
    try:
        yield m
    finally:
        run(["podman", "rm", "-f", "-t", "0", name], check=False)


# An echo service for the tunnels' target: systemd's own socket activation runs cat per connection.
ECHO_SOCKET = "[Socket]\nListenStream=127.0.0.1:7000\nAccept=yes\n"
ECHO_SERVICE = "[Service]\nExecStart=/bin/cat\nStandardInput=socket\nStandardOutput=socket\n"
# The one change to the shipped unit: a short watchdog interval keeps the test short.
TEST_DROP_IN = "[Service]\nWatchdogSec=3s\nRestartSec=1s\n"


def tunnel_config(extra_client_port: int | None = None) -> str:
    extra = "" if extra_client_port is None else f"""
  - name: echo-out-2
    mode: client
    listen: 127.0.0.1:{extra_client_port}
    target: 127.0.0.1:8443
    expect: {{ ids: [spiffe://vm.test/tunnel] }}
"""
    return f"""identity:
  files:
    cert: /etc/spiffe-tunnel/svid.pem
    key: /etc/spiffe-tunnel/svid.key
    bundles:
      vm.test: /etc/spiffe-tunnel/vm.test.pem
admin:
  listen: 127.0.0.1:9901
threads: 2
tunnels:
  - name: echo-in
    mode: server
    listen: 127.0.0.1:8443
    target: 127.0.0.1:7000
    allow: {{ ids: [spiffe://vm.test/tunnel] }}
  - name: echo-out
    mode: client
    listen: 127.0.0.1:8000
    target: 127.0.0.1:8443
    expect: {{ ids: [spiffe://vm.test/tunnel] }}
""" + extra


def test_unit_runs_under_systemd(machine, deb):
    m = machine
    run(["podman", "cp", str(deb), f"{m.name}:/tmp/{deb.name}"])
    with step("dpkg -i (systemd container)"):
        m.sh(f"dpkg -i /tmp/{deb.name}")
    assert m.sh("getent passwd spiffe-tunnel").stdout.startswith("spiffe-tunnel:")
    # Installed, not enabled: the example configuration needs editing first.
    assert m.sh("systemctl is-enabled spiffe-tunnel", check=False).stdout.strip() == "disabled"

    ca = CA("vm.test")
    svid = ca.issue("spiffe://vm.test/tunnel")
    m.put("/etc/spiffe-tunnel/svid.pem", svid.cert_pem())
    # The service user's own key, readable by it alone (a group-readable key is refused).
    m.put("/etc/spiffe-tunnel/svid.key", svid.key_pem(), 0o600, group=USER, owner=USER)
    m.put("/etc/spiffe-tunnel/vm.test.pem", ca.bundle_pem())
    m.put("/etc/spiffe-tunnel/config.yaml", tunnel_config())
    m.put("/etc/systemd/system/echo.socket", ECHO_SOCKET)
    m.put("/etc/systemd/system/echo@.service", ECHO_SERVICE)
    m.sh("mkdir -p /etc/systemd/system/spiffe-tunnel.service.d")
    m.put("/etc/systemd/system/spiffe-tunnel.service.d/test.conf", TEST_DROP_IN)
    m.sh("systemctl daemon-reload && systemctl start echo.socket")

    # Type=notify: start returns once READY=1 came (every listener bound, identity loaded).
    with step("systemctl start (until READY=1)"):
        m.sh("systemctl start spiffe-tunnel", timeout=90)
    assert m.show("ActiveState") == "active"
    assert "2 tunnel(s) listening" in m.show("StatusText")
    assert m.show("User") == USER
    assert m.echo_through(8000) == "ping 8000"
    assert "opened peer=spiffe://vm.test/tunnel" in m.journal()
    pid = m.show("MainPID")
    # The sandbox is in force on the running daemon: seccomp filter, no new privileges, its own
    # user, CAP_NET_BIND_SERVICE (bit 10) as its only capability.
    status = Path(f"/proc/{host_pid_of(pid)}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    uid = m.sh(f"id -u {USER}").stdout.strip()
    assert fields["Seccomp"].strip() == "2" and fields["NoNewPrivs"].strip() == "1", status
    assert fields["Uid"].split()[0] == uid and int(fields["CapEff"], 16) == 1 << 10, status

    # Reload: a valid file adds a tunnel without a restart; an invalid one fails the reload.
    m.put("/etc/spiffe-tunnel/config.yaml", tunnel_config(extra_client_port=8001))
    with step("systemctl reload"):
        m.sh("systemctl reload spiffe-tunnel")
    assert m.echo_through(8001) == "ping 8001"
    m.put("/etc/spiffe-tunnel/config.yaml", "tunnels: [ {name: broken} ]\n")
    assert m.sh("systemctl reload spiffe-tunnel", check=False).returncode != 0
    assert m.show("ActiveState") == "active" and m.show("MainPID") == pid
    assert m.echo_through(8000) == "ping 8000"
    m.put("/etc/spiffe-tunnel/config.yaml", tunnel_config(extra_client_port=8001))

    # The watchdog (3 s here) keeps a healthy daemon alive ...
    with step("watchdog: healthy daemon for 3 intervals"):
        time.sleep(9)
    assert m.show("MainPID") == pid and m.show("NRestarts") == "0"
    assert "Watchdog timeout" not in m.journal()

    # ... and restarts it when one data-path thread stops running.
    with step("watchdog: frozen data thread -> restart"), frozen_thread(pid, "spiffe-io-1"):
        m.wait_for("the watchdog restart", lambda: m.show("NRestarts") == "1"
                   and m.show("ActiveState") == "active" and m.show("MainPID") != pid,
                   timeout=60)
    journal = m.journal()
    assert "data-path thread spiffe-io-1 is stuck" in journal, journal[-3000:]
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert m.echo_through(8001) == "ping 8001"

    # An upgrade (the same package again) keeps the edited conffile and restarts the daemon.
    pid = m.show("MainPID")
    with step("dpkg -i again (upgrade, try-restart)"):
        m.sh(f"dpkg --force-confold -i /tmp/{deb.name}")
    assert "echo-out-2" in m.sh("cat /etc/spiffe-tunnel/config.yaml").stdout
    m.wait_for("the restarted daemon", lambda: m.show("ActiveState") == "active")
    assert m.show("MainPID") != pid
    assert m.echo_through(8001) == "ping 8001"

    with step("dpkg --purge (systemd container)"):
        m.sh("dpkg --purge spiffe-tunnel")
    assert m.sh("systemctl is-active spiffe-tunnel", check=False).stdout.strip() == "inactive"
    assert m.sh("test ! -e /etc/spiffe-tunnel/config.yaml && test ! -e /usr/bin/spiffe-tunnel",
                check=False).returncode == 0


# Stops one thread (PTRACE_SEIZE + PTRACE_INTERRUPT stop that thread only, not the process) and
# keeps it stopped while this tracer lives. It reaps the thread when the process is killed (a
# traced thread's exit waits for its tracer) and then exits; ending the tracer detaches it.
TRACER = r"""
import ctypes, os, sys, time
PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 0x4206, 0x4207, 0x40000000
tid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(PTRACE_SEIZE, tid, None, None) or libc.ptrace(PTRACE_INTERRUPT, tid, None, None):
    sys.exit("ptrace: " + os.strerror(ctypes.get_errno()))
print("frozen", flush=True)
while True:
    try:
        pid, status = os.waitpid(tid, os.WNOHANG | WALL)
    except ChildProcessError:
        break
    if pid == tid and not os.WIFSTOPPED(status):
        break
    time.sleep(0.05)
"""


def host_pid_of(container_pid: str) -> int:
    """The host pid of the daemon that runs as `container_pid` in the container's pid namespace."""
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            text = status.read_text()
            nspid = re.search(r"^NSpid:\s+(.*)$", text, re.M)
            if (re.search(r"^Name:\s+spiffe-tunnel$", text, re.M) and nspid
                    and len(nspid.group(1).split()) > 1
                    and nspid.group(1).split()[-1] == container_pid):
                return int(status.parent.name)
    raise AssertionError(f"no spiffe-tunnel with pid {container_pid} in a container")


@contextlib.contextmanager
def frozen_thread(container_pid: str, thread_name: str):
    """Stops the daemon's thread named `thread_name` while the block runs."""
    host_pid = host_pid_of(container_pid)
    tids = [int(t.name) for t in Path(f"/proc/{host_pid}/task").iterdir()
            if (t / "comm").read_text().strip() == thread_name]
    assert len(tids) == 1, tids
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(tids[0])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "frozen"
        yield
    finally:
        tracer.kill()
        tracer.wait()
