"""scripts/check-layers.py: it passes a tree that keeps to the layers and names every file:line
and both modules when one does not."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHECKER = os.path.join(REPO, "scripts", "check-layers.py")

CMAKE = """\
function(spiffe_tunnel_module name)
endfunction()
spiffe_tunnel_module(base DEPS OpenSSL::SSL asio)
spiffe_tunnel_module(spiffe DEPS spiffe_tunnel_base)
spiffe_tunnel_module(workload DEPS spiffe_tunnel_spiffe spiffe_tunnel_proto)
spiffe_tunnel_module(tls DEPS spiffe_tunnel_identity spiffe_tunnel_policy)
spiffe_tunnel_module(identity DEPS spiffe_tunnel_spiffe)
spiffe_tunnel_module(policy DEPS spiffe_tunnel_spiffe)
spiffe_tunnel_module(pump DEPS spiffe_tunnel_base)
spiffe_tunnel_module(mux DEPS spiffe_tunnel_base)
spiffe_tunnel_module(tunnel DEPS spiffe_tunnel_tls spiffe_tunnel_pump spiffe_tunnel_mux)
"""

# A clean miniature tree: every include points down the table.
FILES = {
    "CMakeLists.txt": CMAKE,
    "include/spiffe_tunnel/base/result.h": "#pragma once\n",
    "include/spiffe_tunnel/spiffe/spiffe_id.h":
        '#pragma once\n#include "spiffe_tunnel/base/result.h"\n',
    "src/spiffe/spiffe_id.cc": '#include "spiffe_tunnel/spiffe/spiffe_id.h"\n#include "spiffe/describe.h"\n',
    "src/spiffe/describe.h": "#pragma once\n",
    "include/spiffe_tunnel/tls/context.h": '#pragma once\n#include "spiffe_tunnel/spiffe/spiffe_id.h"\n',
    "src/tls/context.cc": '#include "spiffe_tunnel/tls/context.h"\n#include "records.h"\n',
    "src/tls/records.h": "#pragma once\n",
    "include/spiffe_tunnel/tunnel/tunnel.h": '#pragma once\n#include "spiffe_tunnel/tls/context.h"\n',
    "src/tunnel/tunnel.cc":
        '#include "spiffe_tunnel/tunnel/tunnel.h"\n#include "spiffe_tunnel/base/result.h"\n'
        '#include <vector>\n#include "workload.pb.h"\n',
    "src/app/main.cc": '#include "spiffe_tunnel/tunnel/tunnel.h"\n',
}


def run(root, *args):
    return subprocess.run([sys.executable, CHECKER, "--root", str(root), *args],
                          capture_output=True, text=True, check=False)


@pytest.fixture
def tree(tmp_path):
    for rel, text in FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def add_line(path, line):
    """Appends `line`; returns its line number."""
    text = path.read_text()
    path.write_text(text + line + "\n")
    return text.count("\n") + 1


def test_clean_tree_passes(tree):
    r = run(tree)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "check-layers: every module uses only the modules its layer allows"


def test_upward_include_fails_naming_file_line_and_both_modules(tree):
    lineno = add_line(tree / "src/spiffe/spiffe_id.cc", '#include "spiffe_tunnel/tunnel/tunnel.h"')
    r = run(tree)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"src/spiffe/spiffe_id.cc:{lineno}: module spiffe may not include module tunnel "
        "(allowed: base)"]


def test_upward_include_from_a_public_header_fails(tree):
    lineno = add_line(tree / "include/spiffe_tunnel/tls/context.h",
                      '#include <spiffe_tunnel/tunnel/tunnel.h>')
    r = run(tree)
    assert r.returncode == 1
    assert (f"include/spiffe_tunnel/tls/context.h:{lineno}: module tls may not include module "
            "tunnel (allowed: base, identity, policy, spiffe)") in r.stdout


def test_another_modules_private_header_fails_by_either_path(tree):
    via_src = add_line(tree / "src/tunnel/tunnel.cc", '#include "tls/records.h"')
    relative = add_line(tree / "src/tunnel/tunnel.cc", '#include "../tls/records.h"')
    r = run(tree)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"src/tunnel/tunnel.cc:{via_src}: module tunnel may not include "
                               "private header of module tls (tls/records.h)")
    assert lines[1].startswith(f"src/tunnel/tunnel.cc:{relative}: module tunnel may not include "
                               "private header of module tls (../tls/records.h)")


def test_private_header_in_a_public_header_fails(tree):
    lineno = add_line(tree / "include/spiffe_tunnel/tunnel/tunnel.h", '#include "tls/records.h"')
    r = run(tree)
    assert r.returncode == 1
    assert (f"include/spiffe_tunnel/tunnel/tunnel.h:{lineno}: public header of module tunnel "
            "includes private header src/tls/... (tls/records.h)") in r.stdout


def test_config_including_policy_is_not_allowed(tree):
    path = tree / "src/config/config.cc"
    path.parent.mkdir(parents=True)
    path.write_text('#include "spiffe_tunnel/policy/id_pattern.h"\n')
    r = run(tree)
    assert r.returncode == 1
    assert ("src/config/config.cc:1: module config may not include module policy "
            "(allowed: base, spiffe)") in r.stdout


def replace_in(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_cmake_deps_beyond_the_table_fail(tree):
    replace_in(tree / "CMakeLists.txt", "spiffe_tunnel_module(pump DEPS spiffe_tunnel_base)",
               "spiffe_tunnel_module(pump DEPS spiffe_tunnel_tls)")
    r = run(tree)
    assert r.returncode == 1
    assert ("CMakeLists.txt:9: spiffe_tunnel_module(pump) DEPS reach base, identity, policy, "
            "spiffe, tls, the layer table allows base: links identity, policy, spiffe, tls which "
            "the table does not allow") in r.stdout


def test_cmake_deps_short_of_the_table_fail(tree):
    replace_in(tree / "CMakeLists.txt",
               "spiffe_tunnel_module(tunnel DEPS spiffe_tunnel_tls spiffe_tunnel_pump "
               "spiffe_tunnel_mux)",
               "spiffe_tunnel_module(tunnel DEPS spiffe_tunnel_tls spiffe_tunnel_mux)")
    r = run(tree)
    assert r.returncode == 1
    assert "spiffe_tunnel_module(tunnel) DEPS reach" in r.stdout
    assert "does not link pump which the table allows" in r.stdout


def test_print_shows_the_table():
    r = subprocess.run([sys.executable, CHECKER, "--print"], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert rows["spiffe"].split()[1:] == ["base", "base"]
    assert "tls, pump" not in rows["tunnel"]  # sorted
    assert rows["tunnel"].split(None, 1)[1].startswith("mux, pump, tls")
    assert rows["app"].split(None, 1)[1].startswith("every module")


def test_real_tree_passes_once_config_no_longer_uses_policy(tmp_path):
    """The real tree, with the edge being removed (config -> policy) taken out of a copy."""
    root = tmp_path / "tree"
    for part in ("src", "include"):
        shutil.copytree(os.path.join(REPO, part), root / part)
    shutil.copy(os.path.join(REPO, "CMakeLists.txt"), root / "CMakeLists.txt")
    for dirpath, _, names in os.walk(root / "src" / "config"):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as f:
                lines = f.readlines()
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(l for l in lines if '#include "spiffe_tunnel/policy/' not in l)
    cmake = root / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace(
        "spiffe_tunnel_module(config DEPS spiffe_tunnel_policy",
        "spiffe_tunnel_module(config DEPS spiffe_tunnel_spiffe"))
    r = run(root)
    assert r.returncode == 0, r.stdout + r.stderr
