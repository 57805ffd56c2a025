"""scripts/fuzz.sh: builds the libFuzzer targets (preset `fuzz`) and runs each from its committed
seed corpus for FUZZ_SECONDS (default 30) under ASan+UBSan, two at a time. One test per target, so a finding
names its target; the reproducer stays in build/fuzz/crashes/."""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(REPO, "scripts", "fuzz.sh")
TARGETS = ["spiffe_id", "bundle", "config", "workload_response", "record_layer",
           "server_handshake"]
SECONDS = int(os.environ.get("FUZZ_SECONDS", "30"))

pytestmark = pytest.mark.skipif(shutil.which("clang++-14") is None,
                                reason="clang-14 (scripts/setup-deps.sh) is not installed")


@pytest.fixture(scope="module")
def built():
    """Builds every target once (a cold build takes several minutes on two cores)."""
    proc = subprocess.run([SCRIPT, "--build-only"] + TARGETS, cwd=REPO,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_every_target_has_a_seed_corpus():
    for t in TARGETS:
        seeds = os.listdir(os.path.join(REPO, "tests", "fuzz", "corpus", t))
        assert seeds, t
        assert os.path.exists(os.path.join(REPO, "tests", "fuzz", f"{t}_fuzz.cc")), t


@pytest.fixture(scope="module")
def runs(built):
    """Runs every target for SECONDS, two at a time (each fuzzer is one thread; the machine
    has two cores), and returns each target's finished process."""
    def run(target):
        return subprocess.run([SCRIPT, "--no-build", "--seconds", str(SECONDS), target], cwd=REPO,
                              capture_output=True, text=True, timeout=SECONDS + 600)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(TARGETS, pool.map(run, TARGETS)))


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(runs, target):
    proc = runs[target]
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith(target)][-1]
    runs_done = int(re.search(r"runs=(\d+)", line).group(1))
    cov = int(re.search(r"cov=(\d+)", line).group(1))
    # The seeds alone reach well into the code under test; a target that runs nothing or
    # covers nothing is broken, not clean.
    assert runs_done > 0 and cov > 20, line
