"""Deployment checks: the Debian package, the container image, the Kubernetes manifests and Helm
chart, and the four-site federation. Each test drives the real tool (dpkg, podman, helm, the
Kubernetes checker, SPIRE, Kafka) and skips only when that tool cannot run on this machine."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]
