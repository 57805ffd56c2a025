"""Helpers for tests that run commands inside a User-Mode Linux guest with kTLS (scripts/uml-run).

The guest's root is the host's root (hostfs), so host binaries and files are visible at the same
paths, except /tmp, /run, /dev/shm: those are guest-private. The host's /tmp stays reachable in the
guest at $UML_HOST_TMP (/run/uml/host-tmp); uml-run translates the working directory for you, and
guest_path() translates other host paths. Each uml_run() call boots one guest (about 2 s).
See tests/integration/README-uml.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UML_RUN = REPO_ROOT / "scripts" / "uml-run"
GUEST_HOST_TMP = "/run/uml/host-tmp"

# Exit codes of scripts/uml-run itself (anything else is the command's own status).
EXIT_TIMEOUT = 124
EXIT_HARNESS = 125


def uml_kernel() -> str | None:
    """Path of the UML kernel binary, or None when user-mode-linux is not installed."""
    return os.environ.get("UML_RUN_KERNEL") or shutil.which("linux.uml")


def uml_available() -> bool:
    """True when a UML kernel and its tls.ko are installed."""
    if uml_kernel() is None:
        return False
    return any(Path("/usr/lib/uml/modules").glob("*/kernel/net/tls/tls.ko*"))


requires_uml = pytest.mark.skipif(
    not uml_available(), reason="user-mode-linux (linux.uml + tls.ko) not installed")


def guest_path(path: str | os.PathLike[str]) -> str:
    """How a host path is spelled inside the guest (only /tmp/... changes)."""
    p = os.path.realpath(os.fspath(path))
    if p == "/tmp" or p.startswith("/tmp/"):
        return GUEST_HOST_TMP + p[len("/tmp"):]
    return p


def uml_run(cmd: str | Sequence[str],
            env: Mapping[str, str] | None = None,
            timeout: int = 300,
            *,
            cwd: str | os.PathLike[str] | None = None,
            mem: str | None = None,
            tls_module: bool = True,
            extra_args: Iterable[str] = (),
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Boots one UML guest, runs cmd in it and returns its stdout, stderr and exit status.

    cmd is an argv list, or a string run with `bash -c`. env entries are added to the guest
    command's clean environment. timeout covers boot + command; on expiry uml-run kills the guest
    and returns EXIT_TIMEOUT. cwd (default: the current directory) must be a host path.
    """
    argv: list[str] = [str(UML_RUN), "--timeout", str(timeout)]
    if mem:
        argv += ["--mem", mem]
    if not tls_module:
        argv.append("--no-tls-module")
    if cwd is not None:
        argv += ["--cwd", os.fspath(cwd)]
    for name, value in (env or {}).items():
        argv += ["--env", f"{name}={value}"]
    argv += list(extra_args)
    argv.append("--")
    argv += ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    # The outer timeout only guards against uml-run itself hanging; it kills the guest first.
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout + 60, check=check)


def parse_tls_stat(text: str) -> dict[str, int]:
    """Parses /proc/net/tls_stat lines ("TlsTxSw    3") into {"TlsTxSw": 3, ...}.

    Lines that are not "Tls<Name> <integer>" are ignored, so the text may contain other output.
    """
    stats: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("Tls") and parts[1].isdigit():
            stats[parts[0]] = int(parts[1])
    return stats


def tls_stat_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """after - before for every counter in after (a counter missing before counts as 0)."""
    return {k: v - before.get(k, 0) for k, v in after.items()}


def make_mtls_certs(directory: str | os.PathLike[str]) -> Path:
    """Writes a throwaway P-256 CA plus server and client certificates (ca.crt, server.crt/key,
    client.crt/key) into directory with the openssl CLI and returns the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=uml-test-ca")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt")
    return d


@pytest.fixture
def mtls_certs(tmp_path: Path) -> Path:
    """A directory with a throwaway CA and server/client certificates (see make_mtls_certs)."""
    return make_mtls_certs(tmp_path / "pki")
