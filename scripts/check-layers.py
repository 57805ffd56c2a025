#!/usr/bin/env python3
"""Checks that the modules of spiffe-tunnel only use the modules their layer allows.

The table below is the one place the allowed edges are written down (docs/architecture.md shows
it; `--print` prints it). A module may use the modules of its row and, transitively, whatever
those may use. The checker reads every file under src/<module>/ and include/spiffe_tunnel/<module>/
and reports:

  - `#include "spiffe_tunnel/<other>/..."` where <other> is not allowed for the module;
  - an include of another module's private header (src/<other>/...), whether through the src
    include path ("tls/x.h") or a relative path ("../tls/x.h"), and any private header included
    from a public header (consumers could not compile it);
  - a `spiffe_tunnel_module(<name> DEPS ...)` line in CMakeLists.txt whose module dependencies
    (followed transitively, as CMake links them PUBLIC) differ from the table.

Test binaries (tests/) are not checked: a test may combine modules to set up its case.
Exit status: 0 when clean, 1 when something is reported, 2 on a usage error.
"""

import argparse
import os
import re
import sys

# module -> the modules it may use directly. `proto` is the generated Workload API code (a CMake
# target, no spiffe_tunnel/ headers). `app` may use every module.
LAYERS = {
    "base": (),
    "spiffe": ("base",),
    "proto": (),
    "workload": ("base", "spiffe", "proto"),
    "identity": ("base", "spiffe"),
    "policy": ("base", "spiffe"),
    "config": ("base", "spiffe"),
    "tls": ("base", "spiffe", "identity", "policy"),
    "pump": ("base",),
    "mux": ("base",),
    "tunnel": ("tls", "pump", "mux"),
    "admin": ("identity", "tunnel"),
    "app": ("base", "spiffe", "proto", "workload", "identity", "policy", "config", "tls", "pump",
            "mux", "tunnel", "admin"),
}

SOURCE_SUFFIXES = (".h", ".hh", ".hpp", ".cc", ".cpp", ".cxx", ".inc")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')
MODULE_RE = re.compile(r"spiffe_tunnel_module\(\s*(\w+)([^)]*)\)", re.S)


def closure(graph, module):
    """Every node reachable from `module` in `graph` (node -> direct successors)."""
    seen = set()
    todo = list(graph.get(module, ()))
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def allowed(module):
    """Every module `module` may use: its row, followed transitively."""
    return closure(LAYERS, module)


def fmt(modules):
    return ", ".join(sorted(modules)) or "none"


def print_table(out=sys.stdout):
    def shown(module, modules):
        return "every module" if set(modules) == set(LAYERS) - {module} else fmt(modules)

    width = max(len(m) for m in LAYERS)
    direct_width = max(len(shown(m, d)) for m, d in LAYERS.items())
    out.write(f"{'module':<{width}}  {'may use':<{direct_width}}  and so, transitively\n")
    for module, direct in LAYERS.items():
        out.write(f"{module:<{width}}  {shown(module, direct):<{direct_width}}  "
                  f"{shown(module, allowed(module))}\n")


def source_files(root):
    """(module, public?, path) for every C++ file of a module."""
    for base, public in (("src", False), (os.path.join("include", "spiffe_tunnel"), True)):
        top = os.path.join(root, base)
        if not os.path.isdir(top):
            continue
        for module in sorted(os.listdir(top)):
            mdir = os.path.join(top, module)
            if not os.path.isdir(mdir):
                continue
            for dirpath, dirnames, filenames in os.walk(mdir):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.endswith(SOURCE_SUFFIXES):
                        yield module, public, os.path.join(dirpath, name)


def private_target(root, path, header):
    """The module whose private header (under src/) `header` names, or None.

    Tried like the compiler would: relative to the including file, then on the src include path.
    """
    src = os.path.realpath(os.path.join(root, "src"))
    for candidate in (os.path.join(os.path.dirname(path), header), os.path.join(src, header)):
        resolved = os.path.realpath(candidate)
        if os.path.isfile(resolved) and resolved.startswith(src + os.sep):
            return os.path.relpath(resolved, src).split(os.sep)[0]
    return None


def check_includes(root):
    problems = []
    for module, public, path in source_files(root):
        rel = os.path.relpath(path, root)
        if module not in LAYERS:
            problems.append(f"{rel}:1: module {module} is not in the layer table of "
                            f"scripts/check-layers.py")
            continue
        ok = allowed(module)
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE_RE.match(line)
                if not m:
                    continue
                header = m.group(2).strip()
                parts = header.split("/")
                if parts[0] == "spiffe_tunnel" and len(parts) > 2:
                    other = parts[1]
                    if other == module:
                        continue
                    if other not in LAYERS:
                        problems.append(f"{rel}:{lineno}: module {module} includes unknown "
                                        f"module {other} ({header})")
                    elif other not in ok:
                        problems.append(f"{rel}:{lineno}: module {module} may not include module "
                                        f"{other} (allowed: {fmt(ok)})")
                    continue
                if m.group(1) != '"':
                    continue
                owner = private_target(root, path, header)
                if owner is None:
                    continue
                if public:
                    problems.append(f"{rel}:{lineno}: public header of module {module} includes "
                                    f"private header src/{owner}/... ({header})")
                elif owner != module:
                    problems.append(f"{rel}:{lineno}: module {module} may not include private "
                                    f"header of module {owner} ({header}); use its public header "
                                    f"under include/spiffe_tunnel/{owner}/")
    return problems


def check_cmake(root):
    path = os.path.join(root, "CMakeLists.txt")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    declared = {}
    lines = {}
    for m in MODULE_RE.finditer(text):
        name = m.group(1)
        if name == "name":  # the function definition itself
            continue
        deps = re.findall(r"\bspiffe_tunnel_(\w+)", m.group(2))
        declared[name] = set(deps)
        lines[name] = text.count("\n", 0, m.start()) + 1
    if not declared:
        return []

    problems = []
    for name in declared:
        where = f"CMakeLists.txt:{lines[name]}"
        if name not in LAYERS:
            problems.append(f"{where}: module {name} is not in the layer table of "
                            f"scripts/check-layers.py")
            continue
        links, ok = closure(declared, name), allowed(name)
        if links != ok:
            detail = []
            if links - ok:
                detail.append(f"links {fmt(links - ok)} which the table does not allow")
            if ok - links:
                detail.append(f"does not link {fmt(ok - links)} which the table allows")
            problems.append(f"{where}: spiffe_tunnel_module({name}) DEPS reach {fmt(links)}, the "
                            f"layer table allows {fmt(ok)}: " + "; ".join(detail))
    for name in LAYERS:
        if name not in declared and name not in ("app", "proto"):
            if os.path.isdir(os.path.join(root, "src", name)):
                problems.append(f"CMakeLists.txt:1: no spiffe_tunnel_module({name} ...) for "
                                f"src/{name}/")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."),
                        help="source tree to check (default: this checkout)")
    parser.add_argument("--print", action="store_true", dest="print_table",
                        help="print the allowed edges and exit")
    args = parser.parse_args(argv)
    if args.print_table:
        print_table()
        return 0
    root = os.path.abspath(args.root)
    if not os.path.isdir(os.path.join(root, "src")):
        print(f"check-layers: {root} has no src/", file=sys.stderr)
        return 2
    problems = check_includes(root) + check_cmake(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check-layers: {len(problems)} layering violation(s); the allowed edges are "
              f"printed by scripts/check-layers.py --print", file=sys.stderr)
        return 1
    print("check-layers: every module uses only the modules its layer allows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
