"""Deployment checks: the Debian package, the container image, the Kubernetes manifests and Helm
chart, and the four-site federation. Each test drives the real tool (dpkg, podman, helm, the
Kubernetes checker, SPIRE, Kafka) and skips only when that tool cannot run on this machine."""
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

_FACTS: list[tuple[str, str]] = []


def pytest_terminal_summary(terminalreporter):
    """Prints what the deployment checks measured (image size, build times, the four-site
    throughput table) on success too; scripts/test.sh shows this section in CI's output."""
    if not _FACTS:
        return
    terminalreporter.section("deployment facts")
    for title, text in _FACTS:
        terminalreporter.write_line(f"{title}:")
        for line in text.rstrip().splitlines():
            terminalreporter.write_line(f"  {line}")


@pytest.fixture(scope="session")
def report():
    """report(title, text): adds a block to the "deployment facts" summary."""
    return lambda title, text: _FACTS.append((title, str(text)))
