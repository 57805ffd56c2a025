"""The container image: built with podman from deploy/container/Dockerfile through
scripts/build-image.sh (base image seeded by mmdebstrap), then run the way a restricted pod runs
it: read-only root filesystem, every capability dropped, no-new-privileges, the image's numeric
user. The built-in demo must pass inside it; the image must hold no shell."""
import io
import json
import os
import pathlib
import resource
import shutil
import subprocess
import tarfile
import time
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
# Run-time hardening every container here gets; the user comes from the image. Without
# CAP_SYS_RESOURCE, runc cannot apply podman's default process limit, hence an explicit one.
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--network", "none", "--ulimit", f"nofile={NOFILE}:{NOFILE}",
            "--ulimit", "nproc=4096:4096"]
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def project_version():
    for line in (REPO / "CMakeLists.txt").read_text().splitlines():
        if line.startswith("project(spiffe_tunnel VERSION "):
            return line.split()[2]
    raise AssertionError("no version in CMakeLists.txt")


def podman(*args, check=True, timeout=120):
    return subprocess.run(PODMAN + list(args), capture_output=True, text=True, check=check,
                          timeout=timeout)


def build_image():
    """Runs scripts/build-image.sh; returns seconds taken and the script's last line (the size)."""
    start = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts/build-image.sh")], cwd=REPO,
                          env=dict(os.environ, JOBS="2"), capture_output=True, text=True,
                          timeout=1800)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return took, proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def image(report):
    if shutil.which("podman") is None or shutil.which("mmdebstrap") is None:
        pytest.skip("podman or mmdebstrap not installed (scripts/setup-deps.sh)")
    name = f"spiffe-tunnel:{project_version()}"
    had_layers = podman("image", "exists", "docker.io/library/debian:bookworm",
                        check=False).returncode == 0
    took, line = build_image()
    report("container image build",
           f"{'base image present, layer cache as left' if had_layers else 'cold'}: {took:.1f} s"
           f"\n{line}")
    took, _ = build_image()
    report("container image rebuild, sources unchanged", f"{took:.1f} s")
    return name


def inspect(image):
    return json.loads(podman("image", "inspect", image).stdout)[0]


def run(image, *args, extra=(), timeout=120):
    """Runs the image hardened, as its own user, removed afterwards (also on timeout)."""
    name = f"st-image-test-{uuid.uuid4().hex[:8]}"
    user = inspect(image)["Config"]["User"]
    try:
        return podman("run", "--rm", "--name", name, *HARDENED, "--user", user, *extra, image,
                      *args, check=False, timeout=timeout)
    finally:
        podman("rm", "--force", "--ignore", name, check=False)


def test_image_size_and_metadata(image, report):
    info = inspect(image)
    size = info["Size"]
    report("container image size", f"{image}: {size} bytes ({size / 1048576:.1f} MiB), "
           f"{len(info['RootFS']['Layers'])} layer(s)")
    assert size < MAX_IMAGE_BYTES
    config = info["Config"]
    assert config["Entrypoint"] == ["/usr/bin/spiffe-tunnel"]
    assert config["Cmd"] == ["run", "-c", "/etc/spiffe-tunnel/config.yaml"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.title"] == "spiffe-tunnel"


def test_user_is_numeric_and_not_root(image):
    user = inspect(image)["Config"]["User"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    assert gid.isdigit() and int(gid) != 0, user
    # The process really runs as that user, with no capabilities at all.
    proc = run(image, "--version")
    assert proc.returncode == 0, proc.stderr


def test_entrypoint_is_the_daemon(image):
    proc = run(image, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"spiffe-tunnel {project_version()}"


def test_no_shell_in_the_image(image):
    proc = run(image, "-c", "true", extra=("--entrypoint", "/bin/sh"))
    assert proc.returncode != 0
    assert "no such file" in (proc.stdout + proc.stderr).lower(), proc.stderr
    files = image_files(image)
    shells = {"bin/sh", "bin/bash", "usr/bin/sh", "usr/bin/bash", "bin/dash", "usr/bin/dash"}
    assert not shells & set(files)
    assert not [f for f in files if f.endswith(("/apt", "/dpkg", "/busybox"))]
    print(f"\nimage files: {len(files)}; executables: "
          f"{[f for f, mode in files.items() if mode & 0o111 and f.startswith('usr/bin')]}")


def image_files(image):
    """Paths (without the leading /) of the image's regular files and symlinks, with modes."""
    name = f"st-image-export-{uuid.uuid4().hex[:8]}"
    try:
        podman("create", "--name", name, image)
        export = subprocess.run(PODMAN + ["export", name], capture_output=True, check=True,
                                timeout=120).stdout
    finally:
        podman("rm", "--force", "--ignore", name, check=False)
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        return {m.name.lstrip("./"): m.mode for m in tar.getmembers() if m.isfile() or m.issym()}


def assert_demo_passed(proc):
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "site A gets   : hello from site A through mutual TLS" in out, out
    assert "stranger.demo : refused (as it should be)" in out, out
    assert "demo OK" in out, out


def test_demo_runs_read_only_without_capabilities(image):
    # With --read-only, podman mounts a tmpfs on /tmp (as a pod would mount an emptyDir); the
    # demo's certificates and logs go there.
    proc = run(image, "demo")
    print("\n" + proc.stdout)
    assert_demo_passed(proc)


def test_demo_uses_tmpdir(image):
    # No tmpfs on /tmp: the only writable place is the one $TMPDIR names.
    proc = run(image, "demo", extra=("--read-only-tmpfs=false", "--tmpfs",
                                     "/scratch:rw,size=16m,mode=1777", "--env", "TMPDIR=/scratch"))
    assert_demo_passed(proc)
    assert "certificates in /scratch/spiffe-tunnel-demo-" in proc.stdout


def test_default_command_reads_the_mounted_config(image):
    # Without a configuration the default command says which file it wanted.
    proc = run(image)
    assert proc.returncode != 0
    assert "/etc/spiffe-tunnel/config.yaml" in proc.stderr, proc.stderr
    example = REPO / "config/spiffe-tunnel.example.yaml"
    proc = run(image, "check-config", "-c", "/etc/spiffe-tunnel/config.yaml",
               extra=("--volume", f"{example}:/etc/spiffe-tunnel/config.yaml:ro"))
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
