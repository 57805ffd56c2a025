"""Kubernetes: the plain manifests (deploy/kubernetes) and the Helm chart (deploy/helm/spiffe-tunnel)
validated without a cluster, by the real tools:

- `helm lint --strict` and `helm template` (Helm v3, built by scripts/build-tools.sh) for the
  chart's value sets in ci/ (the hub's Kafka sidecar, a producer sidecar, a gateway Deployment, a
  gateway DaemonSet);
- tests/k8scheck over every plain manifest and every rendering: each object decoded strictly
  into its k8s.io/api type (unknown fields, duplicate fields, unknown kinds are errors) and every
  pod spec evaluated by k8s.io/pod-security-admission at "restricted", version latest;
- `spiffe-tunnel check-config` over every spiffe-tunnel config the manifests and renderings carry;
- the hub's and kyushu's configs and the broker's settings equal to docs/four-sites.md's blocks
  (the ones scripts/four-sites.sh runs), so the two descriptions of the deployment cannot drift;
- the checker itself, shown to reject an unknown field, a privileged container, a pod without
  runAsNonRoot and the hostPath alternative, each with the admission controller's wording.
"""
import copy
import hashlib
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
CHART = REPO / "deploy" / "helm" / "spiffe-tunnel"
FOUR_SITES = REPO / "docs" / "four-sites.md"
VALUE_SETS = ["hub-kafka", "producer", "gateway-deployment", "gateway-daemonset"]
RESTRICTED = 'violates PodSecurity "restricted:latest"'


def _tool_path(target: str) -> pathlib.Path:
    out = subprocess.run(["bash", str(REPO / "scripts" / "build-tools.sh"), f"{target}-path"],
                         check=True, capture_output=True, text=True)
    return pathlib.Path(out.stdout.strip())


@pytest.fixture(scope="module")
def tools() -> dict:
    """helm and k8scheck from the tools cache, built by scripts/build-tools.sh when missing."""
    helm, k8scheck = _tool_path("helm"), _tool_path("k8scheck")
    if not (os.access(helm, os.X_OK) and os.access(k8scheck, os.X_OK)):
        if shutil.which("go") is None:
            pytest.skip("helm/k8scheck not built and no Go toolchain to build them")
        subprocess.run(["bash", str(REPO / "scripts" / "build-tools.sh"), "helm", "k8scheck"],
                       check=True, stdout=subprocess.DEVNULL, timeout=30 * 60)
    return {"helm": helm, "k8scheck": k8scheck}


@pytest.fixture(scope="module")
def daemon() -> pathlib.Path:
    env = os.environ.get("SPIFFE_TUNNEL_BIN")
    path = pathlib.Path(env) if env else REPO / "build" / "release" / "spiffe-tunnel"
    if not path.exists():
        pytest.fail(f"{path} does not exist: build the daemon first")
    return path


def k8scheck(tools, *args, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools["k8scheck"]), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=60)


def helm(tools, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools["helm"]), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def render(tools, value_set: str, *extra) -> str:
    out = helm(tools, "template", value_set, CHART, "--namespace", "site",
               "-f", CHART / "ci" / f"{value_set}-values.yaml", *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout


def objects(text: str) -> list:
    return [d for d in yaml.safe_load_all(text) if d]


def one(docs: list, kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['kind'] for d in docs]}"
    return found[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def plain_manifests() -> list:
    return sorted(MANIFESTS.rglob("*.yaml"))


def workload_of(docs: list) -> dict:
    return next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet"))


# ---------------------------------------------------------------------------------------------
# The plain manifests


def test_plain_manifests_decode_strictly_and_meet_restricted(tools):
    files = plain_manifests()
    assert {f.relative_to(MANIFESTS).as_posix() for f in files} >= {
        "hokkaido/kafka.yaml", "hokkaido/spire.yaml", "kyushu/producer.yaml", "kyushu/spire.yaml"}
    out = k8scheck(tools, *files)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(
        '2 pod spec(s) checked against PodSecurity "restricted:latest": OK'), out.stdout


def test_plain_manifests_run_the_tunnel_as_a_native_sidecar(tools):
    hub = objects((MANIFESTS / "hokkaido" / "kafka.yaml").read_text())
    spec = pod_spec(one(hub, "StatefulSet"))
    sidecar = spec["initContainers"][0]
    assert sidecar["name"] == "spiffe-tunnel" and sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["containerPort"] for p in sidecar["ports"]} == {9443, 9444, 9901}
    assert set(sidecar["resources"]) == {"requests", "limits"}
    assert spec["volumes"][0]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}
    assert {"name": "spiffe-workload-api", "mountPath": "/run/spire/agent/public",
            "readOnly": True} in sidecar["volumeMounts"]
    # Services publish the mTLS ports only: never Kafka's 9092-9095 nor admin 9901.
    for svc in (d for d in hub if d["kind"] == "Service"):
        assert [p["port"] for p in svc["spec"]["ports"]] == [9443, 9444], svc["metadata"]["name"]


@pytest.mark.parametrize("path", ["hokkaido/kafka.yaml", "kyushu/producer.yaml"])
def test_plain_manifest_checksum_matches_its_config(path):
    docs = objects((MANIFESTS / path).read_text())
    config = one(docs, "ConfigMap")["data"]["config.yaml"]
    annotation = workload_of(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == hashlib.sha256(config.encode()).hexdigest(), \
        f"{path}: update checksum/config to the sha256 of the ConfigMap's config.yaml"


# ---------------------------------------------------------------------------------------------
# The Helm chart


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_strict(tools, value_set):
    out = helm(tools, "lint", "--strict", CHART, "-f", CHART / "ci" / f"{value_set}-values.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_rendering_decodes_strictly_and_meets_restricted(tools, value_set):
    out = k8scheck(tools, "-", stdin=render(tools, value_set))
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'checked against PodSecurity "restricted:latest": OK' in out.stdout


@pytest.mark.parametrize("value_set,kind,sidecar", [
    ("hub-kafka", "StatefulSet", True), ("producer", "Deployment", True),
    ("gateway-deployment", "Deployment", False), ("gateway-daemonset", "DaemonSet", False)])
def test_helm_renders_the_mode_asked_for(tools, value_set, kind, sidecar):
    docs = objects(render(tools, value_set))
    values = yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text())
    workload = one(docs, kind)
    spec = pod_spec(workload)
    tunnel = spec["initContainers"][0] if sidecar else spec["containers"][0]
    assert tunnel["name"] == "spiffe-tunnel"
    assert tunnel.get("restartPolicy") == ("Always" if sidecar else None)
    if sidecar:
        assert [c["name"] for c in spec["containers"]] == [c["name"] for c in values["workload"]["containers"]]
    else:
        assert "initContainers" not in spec and len(spec["containers"]) == 1
    assert spec["automountServiceAccountToken"] is False
    # The config reaches the ConfigMap verbatim.
    assert one(docs, "ConfigMap")["data"]["config.yaml"] == values["config"]
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    assert ("checksum/config" in annotations) == (values.get("configReload", "restart") == "restart")
    services = [d for d in docs if d["kind"] == "Service"]
    assert [p["port"] for s in services for p in s["spec"]["ports"]] == [p["port"] for p in values["ports"]]


def test_helm_checksum_follows_the_config(tools, tmp_path):
    def checksum(*extra):
        docs = objects(render(tools, "producer", *extra))
        return one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    values = yaml.safe_load((CHART / "ci" / "producer-values.yaml").read_text())
    values["config"] = values["config"].replace("127.0.0.1:19092", "127.0.0.1:19093")
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
    assert checksum() == checksum()
    assert checksum() != checksum("-f", tmp_path / "v.yaml")


def test_helm_notes_name_the_reload_command_and_the_host_path_risk(tools, tmp_path):
    """NOTES.txt (which `helm template` does not print) rendered through a copy of the chart."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "notes-copy.yaml").write_text(
        '# {{ include "spiffe-tunnel/templates/NOTES.txt" . | replace "\\n" "\\n# " }}\n')

    def notes(value_set, *extra):
        out = helm(tools, "template", value_set, chart, "-n", "kafka", "-f",
                   chart / "ci" / f"{value_set}-values.yaml", "--show-only",
                   "templates/notes-copy.yaml", *extra)
        assert out.returncode == 0, out.stderr
        return out.stdout
    hub = notes("hub-kafka")
    assert "StatefulSet/kafka runs your containers with spiffe-tunnel as a native sidecar" in hub
    assert ("kubectl -n kafka exec POD -c spiffe-tunnel -- spiffe-tunnel reload "
            "-c /etc/spiffe-tunnel/config.yaml --pid 1") in hub
    assert "WARNING" not in hub
    assert 'needs the namespace at Pod Security level "privileged"' in notes(
        "producer", "--set", "workloadAPI.source=hostPath")


@pytest.mark.parametrize("extra,message", [
    ([], "config is required"),
    (["--set", "colour=blue"], "additional properties 'colour' not allowed"),
    (["--set", "mode=mesh"], "mode"),
])
def test_helm_refuses_bad_values(tools, extra, message):
    out = helm(tools, "template", "x", CHART, *extra)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize("change,message", [
    (("listen: 0.0.0.0:9901", "listen: 127.0.0.1:9901"),
     'config admin.listen is "127.0.0.1:9901"; it must be 0.0.0.0:9901'),
    (("listen: 0.0.0.0:9443", "listen: 0.0.0.0:8443"),
     "ports: producers (9443) is not the listen port of any tunnel in config"),
])
def test_helm_refuses_a_config_that_does_not_match_the_pod(tools, tmp_path, change, message):
    values = yaml.safe_load((CHART / "ci" / "hub-kafka-values.yaml").read_text())
    assert change[0] in values["config"]
    values["config"] = values["config"].replace(*change)
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
    out = helm(tools, "template", "x", CHART, "-f", tmp_path / "v.yaml")
    assert out.returncode != 0 and message in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------
# The spiffe-tunnel configs inside them


def embedded_configs(tools) -> dict:
    configs = {}
    for f in plain_manifests():
        for d in objects(f.read_text()):
            if d["kind"] == "ConfigMap":
                configs[f"{f.relative_to(REPO)}:{d['metadata']['name']}"] = d["data"]["config.yaml"]
    for value_set in VALUE_SETS:
        cm = one(objects(render(tools, value_set)), "ConfigMap")
        configs[f"chart {value_set}"] = cm["data"]["config.yaml"]
    return configs


def test_embedded_configs_pass_check_config(tools, daemon, tmp_path):
    """The configs name a Workload API socket that does not exist here: check-config validates
    the file (syntax, values, cross-field rules) and never connects to the agent."""
    configs = embedded_configs(tools)
    assert len(configs) == 2 + len(VALUE_SETS)
    for i, (where, text) in enumerate(sorted(configs.items())):
        path = tmp_path / f"config-{i}.yaml"
        path.write_text(text)
        out = subprocess.run([str(daemon), "check-config", "-c", str(path)], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, f"{where}: {out.stdout}{out.stderr}"
        tunnels = len(yaml.safe_load(text)["tunnels"])
        assert f": OK, {tunnels} tunnel(s)" in out.stdout, where


# ---------------------------------------------------------------------------------------------
# The same deployment as docs/four-sites.md


def four_sites_block(name: str) -> str:
    """The fenced block after "<!-- four-sites: NAME -->", extracted as scripts/four-sites.sh's
    awk does: every line up to the closing fence, each ended by a newline."""
    lines = FOUR_SITES.read_text().split("\n")
    marker = lines.index(f"<!-- four-sites: {name} -->")
    assert lines[marker + 1].startswith("```"), f"{name}: no fenced block after the marker"
    end = next(i for i in range(marker + 2, len(lines)) if lines[i].startswith("```"))
    return "".join(line + "\n" for line in lines[marker + 2:end])


SITE_CONFIGS = [("hokkaido.yaml", "hokkaido/kafka.yaml", "hub-kafka"),
                ("kyushu.yaml", "kyushu/producer.yaml", "producer")]


@pytest.mark.parametrize("block,manifest,value_set", SITE_CONFIGS)
def test_site_configs_are_the_four_sites_blocks(block, manifest, value_set):
    expected = four_sites_block(block)
    assert expected.startswith("identity:\n") and len(expected.splitlines()) > 5
    plain = one(objects((MANIFESTS / manifest).read_text()), "ConfigMap")["data"]["config.yaml"]
    assert plain == expected, f"{manifest}: config.yaml differs from docs/four-sites.md {block}"
    values = yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text())
    assert values["config"] == expected, f"ci/{value_set}-values.yaml: config differs from {block}"


def kafka_properties(env: list) -> dict:
    """The apache/kafka image's KAFKA_* variables as server.properties keys."""
    return {e["name"][len("KAFKA_"):].lower().replace("_", "."): e["value"]
            for e in env if e["name"].startswith("KAFKA_")}


def test_broker_settings_are_the_four_sites_server_properties():
    lines = four_sites_block("hokkaido/server.properties").splitlines()
    expected = dict(l.split("=", 1) for l in lines if l and not l.startswith("#"))
    assert re.fullmatch(r"(\w+://127\.0\.0\.1:\d+,?)+", expected["listeners"])
    hub = pod_spec(one(hub_manifest(), "StatefulSet"))["containers"][0]
    assert kafka_properties(hub["env"]) == expected
    values = yaml.safe_load((CHART / "ci" / "hub-kafka-values.yaml").read_text())
    assert kafka_properties(values["workload"]["containers"][0]["env"]) == expected


def test_producers_use_their_local_tunnel():
    advertised = dict(l.split("=", 1) for l in four_sites_block(
        "hokkaido/server.properties").splitlines() if "=" in l)["advertised.listeners"]
    tunnel = yaml.safe_load(four_sites_block("kyushu.yaml"))["tunnels"][0]["listen"]
    assert f"PRODUCERS://{tunnel}" in advertised.split(",")
    producer = pod_spec(one(objects((MANIFESTS / "kyushu" / "producer.yaml").read_text()),
                            "Deployment"))["containers"][0]
    assert {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": tunnel} in producer["env"]


# ---------------------------------------------------------------------------------------------
# The checker rejects what it must


def hub_manifest() -> list:
    return objects((MANIFESTS / "hokkaido" / "kafka.yaml").read_text())


def with_statefulset(change) -> str:
    docs = copy.deepcopy(hub_manifest())
    change(one(docs, "StatefulSet"))
    return yaml.safe_dump_all(docs, sort_keys=False)


def test_checker_rejects_an_unknown_field(tools):
    def typo(sts):
        pod_spec(sts)["initContainers"][0]["securityContxt"] = {"privileged": False}
    out = k8scheck(tools, stdin=with_statefulset(typo))
    assert out.returncode == 1
    assert ('<stdin>: document 6 (line ' in out.stdout and 'StatefulSet/kafka: strict decoding error: '
            'unknown field "spec.template.spec.initContainers[0].securityContxt"' in out.stdout), out.stdout


def test_checker_rejects_a_duplicate_field_and_an_unknown_kind(tools):
    text = ("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n---\n"
            "apiVersion: monitoring.example/v1\nkind: Dashboard\nmetadata: {name: d}\n")
    out = k8scheck(tools, stdin=text)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert 'key "name" already set in map' in lines[0], out.stdout
    assert lines[1] == ('<stdin>: document 2 (line 7): Dashboard/d: unknown kind: no kind "Dashboard" '
                        'is registered for version "monitoring.example/v1"'), out.stdout


def test_checker_rejects_a_privileged_container(tools):
    def privileged(sts):
        pod_spec(sts)["containers"][0]["securityContext"]["privileged"] = True
    out = k8scheck(tools, stdin=with_statefulset(privileged))
    assert out.returncode == 1
    assert (f'StatefulSet/kafka: {RESTRICTED}: privileged (container "kafka" must not set '
            'securityContext.privileged=true)') in out.stdout, out.stdout


def test_checker_rejects_a_pod_without_run_as_non_root(tools):
    def root_allowed(sts):
        del pod_spec(sts)["securityContext"]["runAsNonRoot"]
        del pod_spec(sts)["containers"][0]["securityContext"]["runAsNonRoot"]
    out = k8scheck(tools, stdin=with_statefulset(root_allowed))
    assert out.returncode == 1
    assert (f'{RESTRICTED}: runAsNonRoot != true (pod or container "kafka" must set '
            'securityContext.runAsNonRoot=true)') in out.stdout, out.stdout


def test_checker_rejects_the_host_path_alternative(tools):
    """The hostPath way to the agent socket needs a "privileged" namespace: both the plain
    manifest changed that way and the chart's workloadAPI.source=hostPath are refused, also at
    "baseline"."""
    def host_path(sts):
        pod_spec(sts)["volumes"][0] = {"name": "spiffe-workload-api",
                                       "hostPath": {"path": "/run/spire/agent-sockets", "type": "Directory"}}
    expected = 'restricted volume types (volume "spiffe-workload-api" uses restricted volume type "hostPath")'
    out = k8scheck(tools, stdin=with_statefulset(host_path))
    assert out.returncode == 1 and expected in out.stdout, out.stdout
    rendered = render(tools, "producer", "--set", "workloadAPI.source=hostPath")
    out = k8scheck(tools, stdin=rendered)
    assert out.returncode == 1 and expected in out.stdout, out.stdout
    out = k8scheck(tools, "-level", "baseline", stdin=rendered)
    assert out.returncode == 1
    assert 'violates PodSecurity "baseline:latest": hostPath volumes (volume "spiffe-workload-api")' in out.stdout
