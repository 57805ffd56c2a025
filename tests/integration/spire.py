"""Harness for real SPIRE (server + agent) and the go-spiffe test peer.

Typical use (conftest.py wraps this in fixtures):

    tools = locate_tools()                      # builds into $SPIFFE_TUNNEL_TOOLS if needed
    root = short_tmpdir()                       # /tmp/st-XXXX: unix socket paths stay short
    a = TrustDomain.start("td-a.test", root / "a", tools)
    b = TrustDomain.start("td-b.test", root / "b", tools)
    federate(a.server, b.server)                # https_spiffe bundle endpoints (or mode="static")
    eid = a.create_entry("/daemon", uid=0, federates_with=[b])
    a.agent.wait_for_svid("spiffe://td-a.test/daemon")
    peer = SpiffePeer(tools, root)
    srv = peer.serve(b.agent, allow_ids=["spiffe://td-a.test/daemon"], uid=PEER_UID)
    res = peer.dial(a.agent, srv.addr, expect_ids=[...], message="hi")

Design notes
* Everything binds to 127.0.0.1 on dynamically chosen ports (helpers.free_port).
* Server: sqlite datastore inside data_dir, disk KeyManager (a restarted server keeps its CA),
  join_token node attestation, cache_reload_interval=1s, agent_ttl=1h, and a bundle endpoint
  (https_spiffe profile) on its own port so it can take part in real federation.
* Agent: join_token attestation, disk KeyManager in its data_dir, unix workload attestor,
  sync_interval=1s. Join tokens are single use: the first start() mints one; a later start()
  (after stop()) reuses the SVID the agent stored in data_dir (agent-data.json + keys) and
  passes no token. If that stored SVID has expired (agent_ttl, 1h) the agent would need a new
  token *and* an empty data_dir; SpireAgent.reattest() does exactly that.
* Every daemon logs into a file in its workdir; failures raise HarnessError with the log tail.
* Processes are stopped by the PID we started (helpers.ManagedProcess), never by name.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from helpers import (HarnessError, ManagedProcess, StopWaiting, as_uid, check_socket_path,
                     free_port, log_tail, run, wait_for, world_executable)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = REPO_ROOT / "scripts" / "build-tools.sh"
PEER_SRC = REPO_ROOT / "tests" / "peers" / "spiffe-peer"

# uid the go-spiffe peer runs as in tests, so its registration entries (unix:uid:1001) differ
# from the daemon's (unix:uid:0). It does not need to exist in /etc/passwd.
PEER_UID = 1001
# uid of the test process itself (root in CI): entries for workloads we start directly, e.g.
# the daemon under test, use unix:uid:SELF_UID.
SELF_UID = os.geteuid()

HEALTH_TIMEOUT = 30.0
SVID_TIMEOUT = 30.0


class ToolsUnavailable(RuntimeError):
    """The binaries are missing and cannot be built (no Go toolchain)."""


def _script_var(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", BUILD_TOOLS.read_text(), re.M)
    if not m:
        raise HarnessError(f"{name} not found in {BUILD_TOOLS}")
    return m.group(1)


SPIRE_VERSION = _script_var("SPIRE_VERSION")
OPA_VERSION = _script_var("OPA_VERSION")


# --------------------------------------------------------------------------- tools

def tools_cache() -> Path:
    return Path(os.environ.get("SPIFFE_TUNNEL_TOOLS") or Path.home() / ".cache" / "spiffe-tunnel-tools")


def peer_source_hash() -> str:
    """Same value as peer_hash() in scripts/build-tools.sh (keys the peer's cache dir)."""
    names = ["go.mod", "go.sum"] + sorted(p.name for p in PEER_SRC.glob("*.go"))
    listing = "".join(f"{hashlib.sha256((PEER_SRC / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Tools:
    spire_server: Path
    spire_agent: Path
    spiffe_peer: Path
    opa: Optional[Path] = None


def _expected_paths() -> dict[str, Path]:
    c = tools_cache()
    return {
        "spire": c / f"spire-{SPIRE_VERSION}" / "bin",
        "peer": c / f"spiffe-peer-{peer_source_hash()}" / "bin" / "spiffe-peer",
        "opa": c / f"opa-{OPA_VERSION}" / "bin" / "opa",
    }


def _missing(targets: Iterable[str]) -> list[str]:
    p = _expected_paths()
    out = []
    for t in targets:
        if t == "spire":
            if not (os.access(p["spire"] / "spire-server", os.X_OK) and os.access(p["spire"] / "spire-agent", os.X_OK)):
                out.append(t)
        elif not os.access(p[t], os.X_OK):
            out.append(t)
    return out


def build_tools(targets: Sequence[str], timeout: float = 45 * 60) -> None:
    """Run scripts/build-tools.sh for the missing targets, serialised by a lock file.

    The lock only serialises callers of this function (e.g. pytest-xdist workers); the script's
    own cache check makes a second run a no-op.
    """
    if shutil.which("go") is None:
        raise ToolsUnavailable(
            f"{', '.join(targets)} not found in {tools_cache()} and no Go toolchain on PATH to build "
            f"them (scripts/build-tools.sh needs Go >= 1.25.3 and, for SPIRE, gcc)")
    cache = tools_cache()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "build-tools.log"
    with open(cache / ".build-tools.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = _missing(targets)
        if not todo:
            return
        with open(log, "ab") as out:
            out.write(f"=== {time.ctime()} build-tools.sh {' '.join(todo)}\n".encode())
            out.flush()
            try:
                rc = subprocess.run(["bash", str(BUILD_TOOLS), *todo], stdout=out, stderr=out,
                                    stdin=subprocess.DEVNULL, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                raise HarnessError(f"build-tools.sh {todo} timed out\n{log_tail(log)}") from None
        if rc != 0:
            raise HarnessError(f"build-tools.sh {' '.join(todo)} failed (exit {rc})\n{log_tail(log)}")
        if _missing(todo):
            raise HarnessError(f"build-tools.sh {' '.join(todo)} succeeded but binaries are missing "
                               f"(expected under {cache})\n{log_tail(log)}")


def locate_tools(build: bool = True, with_opa: bool = False) -> Tools:
    """Find SPIRE, the peer (and optionally OPA) in the cache; build what is missing."""
    targets = ["spire", "peer"] + (["opa"] if with_opa else [])
    missing = _missing(targets)
    if missing:
        if not build:
            raise ToolsUnavailable(f"not built: {missing}; run scripts/build-tools.sh {' '.join(missing)}")
        build_tools(missing)
    p = _expected_paths()
    return Tools(spire_server=p["spire"] / "spire-server", spire_agent=p["spire"] / "spire-agent",
                 spiffe_peer=p["peer"], opa=p["opa"] if os.access(p["opa"], os.X_OK) else None)


def locate_peer(build: bool = True) -> Path:
    """The spiffe-peer binary alone (no SPIRE needed, e.g. for its proxy-backend); built when
    missing."""
    if _missing(["peer"]):
        if not build:
            raise ToolsUnavailable("not built: peer; run scripts/build-tools.sh peer")
        build_tools(["peer"])
    return _expected_paths()["peer"]


# --------------------------------------------------------------------------- small utilities

def td_id(td: Union[str, "SpireServer", "TrustDomain"]) -> str:
    """'td-b.test' | 'spiffe://td-b.test' | SpireServer | TrustDomain -> 'spiffe://td-b.test'."""
    if isinstance(td, TrustDomain):
        td = td.server
    if isinstance(td, SpireServer):
        return td.td_id
    return td if td.startswith("spiffe://") else f"spiffe://{td}"


def _hcl(s: Union[str, os.PathLike]) -> str:
    s = os.fspath(s)
    if '"' in s or "\\" in s or "$" in s:
        raise HarnessError(f"unsupported character in config value: {s!r}")
    return f'"{s}"'


def _parse_cli_json(cp: subprocess.CompletedProcess, what: str):
    try:
        return json.loads(cp.stdout)
    except json.JSONDecodeError:
        raise HarnessError(f"{what}: unexpected output (not JSON): {cp.stdout!r} {cp.stderr!r}") from None


# --------------------------------------------------------------------------- server

class SpireServer:
    """One spire-server process for one trust domain, living in `workdir`.

    Files: workdir/server.conf, workdir/data/ (sqlite, keys), workdir/api.sock, workdir/server.log.
    """

    def __init__(self, trust_domain: str, workdir: Union[str, Path], tools: Tools, *,
                 bind_port: Optional[int] = None, bundle_port: Optional[int] = None,
                 ca_ttl: str = "24h", default_x509_svid_ttl: str = "1h",
                 agent_ttl: str = "1h", refresh_hint: str = "1m", log_level: str = "DEBUG",
                 cache_reload_interval: str = "1s"):
        self.td = trust_domain
        self.td_id = f"spiffe://{trust_domain}"
        self.workdir = Path(workdir)
        self.tools = tools
        self.bind_port = bind_port or free_port()
        self.bundle_port = bundle_port or free_port()
        self.ca_ttl = ca_ttl
        self.default_x509_svid_ttl = default_x509_svid_ttl
        self.agent_ttl = agent_ttl
        self.refresh_hint = refresh_hint
        self.log_level = log_level
        self.cache_reload_interval = cache_reload_interval
        self.data_dir = self.workdir / "data"
        self.socket_path = Path(check_socket_path(self.workdir / "api.sock"))
        self.config_path = self.workdir / "server.conf"
        self.log_path = self.workdir / "server.log"
        self.process: Optional[ManagedProcess] = None
        self.startup_seconds: Optional[float] = None
        # parent ID used by create_entry() when none is given (set by the first SpireAgent)
        self.default_parent_id: Optional[str] = None

    # ---- properties
    @property
    def bundle_endpoint_url(self) -> str:
        return f"https://127.0.0.1:{self.bundle_port}"

    @property
    def server_id(self) -> str:
        """SPIFFE ID the bundle endpoint (https_spiffe) authenticates with."""
        return f"{self.td_id}/spire/server"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    # ---- lifecycle
    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        self.config_path.write_text(f"""\
server {{
    bind_address = "127.0.0.1"
    bind_port = {self.bind_port}
    socket_path = {_hcl(self.socket_path)}
    trust_domain = {_hcl(self.td)}
    data_dir = {_hcl(self.data_dir)}
    log_level = {_hcl(self.log_level)}
    ca_ttl = {_hcl(self.ca_ttl)}
    default_x509_svid_ttl = {_hcl(self.default_x509_svid_ttl)}
    default_jwt_svid_ttl = "5m"
    agent_ttl = {_hcl(self.agent_ttl)}
    experimental {{
        cache_reload_interval = {_hcl(self.cache_reload_interval)}
    }}
    federation {{
        bundle_endpoint {{
            address = "127.0.0.1"
            port = {self.bundle_port}
            refresh_hint = {_hcl(self.refresh_hint)}
            profile "https_spiffe" {{}}
        }}
    }}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = {_hcl(self.data_dir / "datastore.sqlite3")}
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = {_hcl(self.data_dir / "keys.json")}
        }}
    }}
}}
""")

    def start(self, timeout: float = HEALTH_TIMEOUT) -> "SpireServer":
        if self.running:
            return self
        self.write_config()
        self.process = ManagedProcess(
            [self.tools.spire_server, "run", "-config", self.config_path], self.log_path,
            name=f"spire-server[{self.td}]").start()
        t0 = time.monotonic()
        try:
            wait_for(lambda: self._alive_and(self.healthcheck), timeout=timeout, interval=0.1,
                     desc=f"spire-server {self.td} healthy")
        except (TimeoutError, HarnessError) as exc:
            self._fail("spire-server did not become healthy", exc)
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self, timeout: float = HEALTH_TIMEOUT) -> "SpireServer":
        self.stop()
        return self.start(timeout)

    def _alive_and(self, check) -> bool:
        if not self.running:
            raise StopWaiting(f"spire-server {self.td} exited (rc={self.process.returncode})")
        return check()

    def _fail(self, what: str, exc: BaseException):
        tail = log_tail(self.log_path, 60)
        hint = ""
        if "not a supported dialect" in tail:
            hint = "\nHINT: spire-server was built without cgo; rebuild with CGO_ENABLED=1 and gcc."
        raise HarnessError(f"{what} ({self.td}): {exc}{hint}\n{tail}") from None

    def healthcheck(self) -> bool:
        cp = run([self.tools.spire_server, "healthcheck", "-socketPath", self.socket_path],
                 check=False, timeout=10)
        return cp.returncode == 0

    # ---- CLI
    def cli(self, *args: Union[str, os.PathLike], check: bool = True, timeout: float = 30.0,
            input: Optional[str] = None) -> subprocess.CompletedProcess:
        """spire-server <sub> <cmd> -socketPath <ours> <args...>."""
        sub = [os.fspath(a) for a in args]
        ncmd = 2 if len(sub) >= 2 and not sub[1].startswith("-") else 1
        cmd = [self.tools.spire_server, *sub[:ncmd], "-socketPath", self.socket_path, *sub[ncmd:]]
        return run(cmd, check=check, timeout=timeout, input=input,
                   context=log_tail(self.log_path, 20) if check else "")

    def generate_token(self, spiffe_id: Optional[str] = None, ttl: int = 600) -> str:
        args = ["token", "generate", "-ttl", str(ttl), "-output", "json"]
        if spiffe_id:
            args += ["-spiffeID", spiffe_id]
        return _parse_cli_json(self.cli(*args), "token generate")["value"]

    def _id(self, spiffe_id: str) -> str:
        return spiffe_id if spiffe_id.startswith("spiffe://") else self.td_id + spiffe_id

    def _entry_args(self, spiffe_id: str, selectors: Sequence[str], parent_id: Optional[str],
                    ttl: Optional[int], hint: Optional[str], federates_with: Sequence,
                    dns: Sequence[str]) -> list[str]:
        parent = parent_id or self.default_parent_id
        if not parent:
            raise HarnessError("create_entry: no parent_id and no agent attached to this server")
        if not selectors:
            raise HarnessError("create_entry: at least one selector is required")
        args = ["-parentID", self._id(parent), "-spiffeID", self._id(spiffe_id)]
        for s in selectors:
            args += ["-selector", s]
        if ttl:
            args += ["-x509SVIDTTL", str(int(ttl))]
        if hint:
            args += ["-hint", hint]
        for fw in federates_with:
            args += ["-federatesWith", td_id(fw)]
        for d in dns:
            args += ["-dns", d]
        return args

    def create_entry(self, spiffe_id: str, selectors: Sequence[str], *, parent_id: Optional[str] = None,
                     ttl: Optional[int] = None, hint: Optional[str] = None,
                     federates_with: Sequence = (), entry_id: Optional[str] = None,
                     dns: Sequence[str] = ()) -> str:
        """Create a registration entry; returns its entry ID.

        spiffe_id / parent_id may be a path ("/daemon") relative to this trust domain.
        ttl is the X509-SVID TTL in seconds (-x509SVIDTTL). federates_with takes trust domain
        names, spiffe://td IDs or SpireServer/TrustDomain objects; their bundles must already be
        known to this server (federate() first).
        """
        args = ["entry", "create", "-output", "json",
                *self._entry_args(spiffe_id, selectors, parent_id, ttl, hint, federates_with, dns)]
        if entry_id:
            args += ["-entryID", entry_id]
        data = _parse_cli_json(self.cli(*args, check=False), "entry create")
        res = data["results"][0]
        if res.get("status", {}).get("code", 0) != 0:
            raise HarnessError(f"entry create {spiffe_id} failed: {res['status']}")
        return res["entry"]["id"]

    def update_entry(self, entry_id: str, spiffe_id: str, selectors: Sequence[str], *,
                     parent_id: Optional[str] = None, ttl: Optional[int] = None,
                     hint: Optional[str] = None, federates_with: Sequence = (),
                     dns: Sequence[str] = ()) -> None:
        """Replace an entry (entry update needs the full definition). Forces re-issuance."""
        args = ["entry", "update", "-output", "json", "-entryID", entry_id,
                *self._entry_args(spiffe_id, selectors, parent_id, ttl, hint, federates_with, dns)]
        data = _parse_cli_json(self.cli(*args, check=False), "entry update")
        res = data["results"][0]
        if res.get("status", {}).get("code", 0) != 0:
            raise HarnessError(f"entry update {entry_id} failed: {res['status']}")

    def delete_entry(self, entry_id: str) -> None:
        self.cli("entry", "delete", "-entryID", entry_id)

    def show_entries(self, **filters: str) -> list[dict]:
        """entry show as parsed JSON; filters: spiffeID=..., parentID=..., entryID=..., selector=..."""
        args = ["entry", "show", "-output", "json"]
        for k, v in filters.items():
            args += [f"-{k}", v]
        return _parse_cli_json(self.cli(*args), "entry show").get("entries") or []

    def bundle_show(self, format: str = "pem") -> str:
        """This server's own bundle: 'pem' (CA certificates) or 'spiffe' (JWKS document)."""
        return self.cli("bundle", "show", "-format", format).stdout

    def bundle_set(self, trust_domain, bundle: str, format: str = "spiffe") -> None:
        """Store (or replace) a foreign trust domain's bundle (static federation)."""
        tdid = td_id(trust_domain)
        path = self.workdir / f"bundle-{tdid.removeprefix('spiffe://')}.{format}"
        path.write_text(bundle)
        self.cli("bundle", "set", "-format", format, "-id", tdid, "-path", path)

    def bundle_list(self, format: str = "spiffe") -> str:
        """Foreign (federated) bundles as printed by `bundle list -format <format>`."""
        return self.cli("bundle", "list", "-format", format).stdout

    def federated_trust_domains(self) -> set[str]:
        """Names of the trust domains whose bundles this server holds (without its own)."""
        data = _parse_cli_json(self.cli("bundle", "list", "-output", "json"), "bundle list")
        return {b["trust_domain"] for b in data.get("bundles") or []}

    def has_bundle_for(self, trust_domain) -> bool:
        return td_id(trust_domain).removeprefix("spiffe://") in self.federated_trust_domains()

    def bundle_delete(self, trust_domain, mode: str = "delete") -> None:
        self.cli("bundle", "delete", "-id", td_id(trust_domain), "-mode", mode)

    # ---- federation through bundle endpoints
    def federation_create(self, other: "SpireServer", bootstrap_bundle: Optional[str] = None) -> None:
        """Federation relationship with `other` over its https_spiffe bundle endpoint.

        https_spiffe needs other's bundle to authenticate its endpoint, so it is bootstrapped
        here (bootstrap_bundle, default: fetched from other's API) as SPIRE's own
        federation integration suites do.
        """
        bundle = bootstrap_bundle if bootstrap_bundle is not None else other.bundle_show("spiffe")
        path = self.workdir / f"bootstrap-{other.td}.spiffe"
        path.write_text(bundle)
        self.cli("federation", "create", "-trustDomain", other.td,
                 "-bundleEndpointURL", other.bundle_endpoint_url,
                 "-bundleEndpointProfile", "https_spiffe", "-endpointSpiffeID", other.server_id,
                 "-trustDomainBundlePath", path, "-trustDomainBundleFormat", "spiffe")

    def federation_refresh(self, trust_domain) -> None:
        """Fetch the foreign bundle from its bundle endpoint now (fails if the endpoint fails)."""
        self.cli("federation", "refresh", "-id", td_id(trust_domain))

    def federation_list(self) -> list[dict]:
        return _parse_cli_json(self.cli("federation", "list", "-output", "json"),
                               "federation list").get("federation_relationships") or []

    def bundle_refresh_count(self, trust_domain) -> int:
        """How often the background bundle client logged "Bundle refreshed" for trust_domain."""
        td = td_id(trust_domain).removeprefix("spiffe://")
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return sum(1 for line in text.splitlines()
                   if "Bundle refreshed" in line and "subsystem_name=bundle_client" in line
                   and f"trust_domain={td}" in line)


def federate(a: Union["SpireServer", "TrustDomain"], b: Union["SpireServer", "TrustDomain"],
             mode: str = "endpoint") -> None:
    """Make trust domains a and b trust each other.

    mode="static":   exchange bundles once with `bundle show -format spiffe` / `bundle set`
                     (SPIRE.md §3.2); enough when no CA rotation happens during the test.
    mode="endpoint": real federation: each server gets a federation relationship to the other's
                     https_spiffe bundle endpoint (bootstrapped with the current bundle), then
                     both fetch from the endpoints once (`federation refresh`), which proves the
                     endpoints work. Afterwards SPIRE refreshes every refresh_hint/4 by itself.
    """
    sa = a.server if isinstance(a, TrustDomain) else a
    sb = b.server if isinstance(b, TrustDomain) else b
    if mode == "static":
        sa.bundle_set(sb, sb.bundle_show("spiffe"))
        sb.bundle_set(sa, sa.bundle_show("spiffe"))
    elif mode == "endpoint":
        sa.federation_create(sb)
        sb.federation_create(sa)
        for x, y in ((sa, sb), (sb, sa)):
            wait_for(lambda: x.federation_refresh(y) is None, timeout=30, interval=0.5,
                     desc=f"{x.td} fetching the bundle of {y.td} from {y.bundle_endpoint_url}",
                     on_timeout=lambda: log_tail(x.log_path, 30))
    else:
        raise ValueError(f"unknown federation mode {mode!r}")


# --------------------------------------------------------------------------- agent

class SpireAgent:
    """One spire-agent attached to `server`, living in `workdir`.

    Files: workdir/agent.conf, workdir/data/ (agent-data.json, keys), workdir/api.sock (the
    Workload API), workdir/bootstrap.crt, workdir/agent.log.
    node_id (default spiffe://<td>/node/<name>) is the join-token alias; entries for workloads
    on this agent use it as parent ID.
    """

    def __init__(self, server: SpireServer, workdir: Union[str, Path], tools: Optional[Tools] = None, *,
                 name: str = "agent", node_id: Optional[str] = None, sync_interval: str = "1s",
                 log_level: str = "DEBUG"):
        self.server = server
        self.tools = tools or server.tools
        self.workdir = Path(workdir)
        self.name = name
        self.node_id = node_id or f"{server.td_id}/node/{name}"
        self.sync_interval = sync_interval
        self.log_level = log_level
        self.data_dir = self.workdir / "data"
        self.socket_path = Path(check_socket_path(self.workdir / "api.sock"))
        self.config_path = self.workdir / "agent.conf"
        self.log_path = self.workdir / "agent.log"
        self.bootstrap_path = self.workdir / "bootstrap.crt"
        self.process: Optional[ManagedProcess] = None
        self.startup_seconds: Optional[float] = None
        self.tokens_used = 0
        self._peer_exe: Optional[Path] = None
        if server.default_parent_id is None:
            server.default_parent_id = self.node_id

    @property
    def endpoint(self) -> str:
        """Workload API address in SPIFFE_ENDPOINT_SOCKET form."""
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def attested(self) -> bool:
        """True once the agent stored an SVID in data_dir (a restart then needs no join token)."""
        return (self.data_dir / "agent-data.json").exists()

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # workloads under other uids must reach api.sock
        self.config_path.write_text(f"""\
agent {{
    data_dir = {_hcl(self.data_dir)}
    log_level = {_hcl(self.log_level)}
    server_address = "127.0.0.1"
    server_port = {self.server.bind_port}
    socket_path = {_hcl(self.socket_path)}
    trust_bundle_path = {_hcl(self.bootstrap_path)}
    trust_domain = {_hcl(self.server.td)}
    experimental {{
        sync_interval = {_hcl(self.sync_interval)}
    }}
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = {_hcl(self.data_dir)}
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
""")

    def start(self, timeout: float = HEALTH_TIMEOUT) -> "SpireAgent":
        """Start (or restart) the agent and wait until it is attested, synced and healthy.

        First start: mint a join token aliased to node_id. Later starts: no token; the agent
        loads the SVID it stored in data_dir (join tokens are single use, re-using one fails
        with "join token does not exist or has already been used").
        """
        if self.running:
            return self
        if not self.server.running:
            raise HarnessError(f"agent {self.name}: server {self.server.td} is not running")
        self.write_config()
        cmd = [self.tools.spire_agent, "run", "-config", self.config_path]
        if not self.attested:
            self.bootstrap_path.write_text(self.server.bundle_show("pem"))
            cmd += ["-joinToken", self.server.generate_token(self.node_id)]
            self.tokens_used += 1
        self.process = ManagedProcess(cmd, self.log_path, name=f"spire-agent[{self.server.td}/{self.name}]").start()
        t0 = time.monotonic()
        try:
            wait_for(lambda: self._alive_and(self.healthcheck), timeout=timeout, interval=0.1,
                     desc=f"spire-agent {self.name} ({self.server.td}) healthy")
        except (TimeoutError, HarnessError) as exc:
            raise HarnessError(f"spire-agent {self.name} ({self.server.td}) did not become healthy: {exc}\n"
                               f"{log_tail(self.log_path, 60)}") from None
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart(self, timeout: float = HEALTH_TIMEOUT) -> "SpireAgent":
        self.stop()
        return self.start(timeout)

    def reattest(self, timeout: float = HEALTH_TIMEOUT) -> "SpireAgent":
        """Forget the stored SVID and attest again with a fresh join token (new agent ID, same
        node_id alias, so existing entries keep matching)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.start(timeout)

    def _alive_and(self, check) -> bool:
        if not self.running:
            raise StopWaiting(f"spire-agent exited (rc={self.process.returncode})")
        if check():
            return True
        # The agent keeps retrying a failed attestation for ~1 min; fail fast on the known causes.
        tail = log_tail(self.log_path, 20)
        for marker in ("join token does not exist or has already been used", "join token expired"):
            if marker in tail:
                raise StopWaiting(f"attestation failed: {marker} (join tokens are single use; "
                                  f"use reattest() for a fresh token and data_dir)")
        return False

    def healthcheck(self) -> bool:
        cp = run([self.tools.spire_agent, "healthcheck", "-socketPath", self.socket_path],
                 check=False, timeout=10)
        return cp.returncode == 0

    # ---- registration shortcuts (parent = this agent's node_id)
    def create_entry(self, spiffe_id: str, selectors: Sequence[str] = (), *, uid: Optional[int] = None,
                     **kw) -> str:
        sels = list(selectors) + ([f"unix:uid:{uid}"] if uid is not None else [])
        return self.server.create_entry(spiffe_id, sels, parent_id=self.node_id, **kw)

    # ---- Workload API access (through the go-spiffe peer's `svids` command)
    def _peer(self) -> Path:
        if self._peer_exe is None:
            self._peer_exe = world_executable(self.tools.spiffe_peer, self.workdir.parent / "bin")
        return self._peer_exe

    def fetch_x509(self, uid: Optional[int] = None, timeout: float = 5.0,
                   wait_for_id: Optional[str] = None) -> dict:
        """X509 context as seen by a workload running as `uid` (None: as ourselves).

        Returns {"svids": [{"id","hint","serial","not_before","not_after","chain_len"}],
                 "bundles": ["spiffe://td", ...]}. Raises HarnessError if there is no
        identity (PermissionDenied) within timeout, or no SVID wait_for_id.
        """
        cmd = [*as_uid(uid), self._peer(), "svids", "--socket", self.endpoint,
               "--timeout", f"{timeout}s"]
        if wait_for_id:
            cmd += ["--wait-for-id", self.server._id(wait_for_id)]
        cp = run(cmd, check=False, timeout=timeout + 10)
        if cp.returncode != 0:
            raise HarnessError(f"no X509 context for uid {uid} from {self.endpoint}: {cp.stderr.strip()}")
        return json.loads(cp.stdout)

    def wait_for_svid(self, spiffe_id: str, uid: Optional[int] = None,
                      timeout: float = SVID_TIMEOUT) -> dict:
        """Wait until a workload running as `uid` receives spiffe_id; return that SVID's dict."""
        sid = self.server._id(spiffe_id)
        try:
            ctx = self.fetch_x509(uid=uid, timeout=timeout, wait_for_id=sid)
        except HarnessError as exc:
            raise HarnessError(f"{exc}\n{log_tail(self.log_path, 30)}") from None
        return next(s for s in ctx["svids"] if s["id"] == sid)

    def api_fetch_x509(self, write_dir: Optional[Path] = None, timeout: float = 10.0) -> list[dict]:
        """`spire-agent api fetch x509` as ourselves (the SPIRE CLI view, independent of go-spiffe).

        Returns [{"id", "serial", "hint", "der_chain": [bytes, ...]}]. With write_dir the CLI
        also writes svid.N.pem / svid.N.key / bundle.N.pem / federated_bundle.N.M.pem there.
        """
        base = [self.tools.spire_agent, "api", "fetch", "x509", "-socketPath", self.socket_path,
                "-timeout", f"{int(timeout)}s"]
        if write_dir is not None:
            Path(write_dir).mkdir(parents=True, exist_ok=True)
            run([*base, "-write", write_dir, "-silent"], timeout=timeout + 10)
        cp = run([*base, "-output", "json"], timeout=timeout + 10)
        data = json.loads(cp.stdout)
        if isinstance(data, list):  # cliprinter may wrap responses in a list
            data = data[0]
        out = []
        for s in data.get("svids") or []:
            chain = _split_der(base64.b64decode(s["x509_svid"]))
            out.append({"id": s["spiffe_id"], "hint": s.get("hint", ""),
                        "serial": _der_serial_hex(chain[0]), "der_chain": chain})
        return out


def _split_der(blob: bytes) -> list[bytes]:
    """Split concatenated DER certificates (ASN.1 SEQUENCEs)."""
    out, i = [], 0
    while i < len(blob):
        if blob[i] != 0x30:
            raise HarnessError("bad DER in SVID")
        ln = blob[i + 1]
        if ln < 0x80:
            hdr, size = 2, ln
        else:
            n = ln & 0x7F
            hdr, size = 2 + n, int.from_bytes(blob[i + 2:i + 2 + n], "big")
        out.append(blob[i:i + hdr + size])
        i += hdr + size
    return out


def _der_serial_hex(der: bytes) -> str:
    from cryptography import x509  # listed in tests/requirements.txt
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


# --------------------------------------------------------------------------- one trust domain

@dataclass
class TrustDomain:
    """A server plus one agent; what the td_a / td_b / td_c fixtures hand out."""

    server: SpireServer
    agent: SpireAgent

    @classmethod
    def start(cls, trust_domain: str, workdir: Union[str, Path], tools: Tools, **server_kw) -> "TrustDomain":
        workdir = Path(workdir)
        server = SpireServer(trust_domain, workdir / "server", tools, **server_kw).start()
        try:
            agent = SpireAgent(server, workdir / "agent", tools).start()
        except BaseException:
            server.stop()
            raise
        return cls(server, agent)

    @property
    def name(self) -> str:
        return self.server.td

    @property
    def id(self) -> str:
        return self.server.td_id

    @property
    def socket(self) -> str:
        """The agent's Workload API address (unix:///...)."""
        return self.agent.endpoint

    def spiffe_id(self, path: str) -> str:
        return self.server._id(path)

    def create_entry(self, spiffe_id: str, selectors: Sequence[str] = (), *, uid: Optional[int] = None,
                     **kw) -> str:
        return self.agent.create_entry(spiffe_id, selectors, uid=uid, **kw)

    def delete_entry(self, entry_id: str) -> None:
        self.server.delete_entry(entry_id)

    def stop(self) -> None:
        self.agent.stop()
        self.server.stop()


class EntryTracker:
    """Creates registration entries and deletes them all again in cleanup().

    Use it (fixture `spire_entries`) for entries on the shared, session-scoped trust domains
    so one test's identities do not leak into the next test's workloads.
    """

    def __init__(self) -> None:
        self.created: list[tuple[SpireServer, str]] = []

    def create(self, td: Union[TrustDomain, SpireAgent], spiffe_id: str, selectors: Sequence[str] = (),
               *, uid: Optional[int] = None, **kw) -> str:
        """td.create_entry(...) (parent = that agent's node ID); remembered for cleanup()."""
        entry_id = td.create_entry(spiffe_id, selectors, uid=uid, **kw)
        server = td.server
        self.created.append((server, entry_id))
        return entry_id

    def delete(self, entry_id: str) -> None:
        for i, (server, eid) in enumerate(self.created):
            if eid == entry_id:
                server.delete_entry(eid)
                del self.created[i]
                return
        raise KeyError(entry_id)

    def cleanup(self) -> None:
        while self.created:
            server, eid = self.created.pop()
            if server.running:
                server.cli("entry", "delete", "-entryID", eid, check=False)


# --------------------------------------------------------------------------- go-spiffe peer

@dataclass
class DialResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class PeerServer:
    """A running `spiffe-peer serve`; .addr is "127.0.0.1:PORT", .svid_id what it presents."""

    process: ManagedProcess
    addr: str
    svid_id: Optional[str]

    @property
    def host(self) -> str:
        return self.addr.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def accepted(self) -> list[str]:
        return [l.split(" ", 1)[1] for l in list(self.process.lines) if l.startswith("accepted ")]

    def rejected(self) -> list[str]:
        return [l.split(" ", 1)[1] for l in list(self.process.lines) if l.startswith("rejected ")]

    def wait_accepted(self, spiffe_id: str, timeout: float = 10.0) -> None:
        self.process.wait_for_line(r"^accepted " + re.escape(spiffe_id) + "$", timeout=timeout)

    def stop(self) -> None:
        self.process.stop()


@dataclass
class SpiffePeer:
    """Launches tests/peers/spiffe-peer (go-spiffe) against an agent's Workload API.

    uid runs the peer under another uid via setpriv (e.g. PEER_UID) so that it gets the SVIDs of
    unix:uid:<uid> entries; None runs it as the test process (root in CI).
    """

    tools: Tools
    workdir: Path
    processes: list = field(default_factory=list)
    _count: int = 0

    def _exe(self) -> Path:
        return world_executable(self.tools.spiffe_peer, Path(self.workdir) / "bin")

    @staticmethod
    def _socket(agent) -> str:
        return agent.endpoint if isinstance(agent, SpireAgent) else (
            agent.socket if isinstance(agent, TrustDomain) else str(agent))

    def serve(self, agent, *, allow_ids: Sequence[str] = (), allow_td: Optional[str] = None,
              allow_any: bool = False, uid: Optional[int] = None, hint: Optional[str] = None,
              listen: str = "127.0.0.1:0", timeout: float = SVID_TIMEOUT,
              extra_args: Sequence[str] = ()) -> PeerServer:
        """Start an echo server; returns once it printed "listening <addr>"."""
        self._count += 1
        cmd = [*as_uid(uid), self._exe(), "serve", "--socket", self._socket(agent), "--listen", listen,
               "--timeout", f"{int(timeout)}s"]
        for i in allow_ids:
            cmd += ["--allow-id", i]
        if allow_td:
            cmd += ["--allow-td", allow_td.removeprefix("spiffe://")]
        if allow_any:
            cmd += ["--allow-any"]
        if hint:
            cmd += ["--svid-hint", hint]
        cmd += list(extra_args)
        proc = ManagedProcess(cmd, Path(self.workdir) / f"peer-serve-{self._count}.log",
                              name=f"spiffe-peer-serve-{self._count}", capture_stdout=True).start()
        self.processes.append(proc)
        try:
            m = proc.wait_for_line(r"^listening (\S+)$", timeout=timeout + 5)
        except HarnessError:
            proc.stop()
            raise
        svid = next((l.split(" ", 1)[1] for l in proc.lines if l.startswith("svid ")), None)
        return PeerServer(proc, m.group(1), svid)

    def dial(self, agent, addr: str, *, expect_ids: Sequence[str] = (), expect_td: Optional[str] = None,
             expect_any: bool = False, message: str = "ping", uid: Optional[int] = None,
             hint: Optional[str] = None, timeout: float = SVID_TIMEOUT) -> DialResult:
        """Run `spiffe-peer dial` to completion; never raises on a failed handshake (check .ok)."""
        cmd = [*as_uid(uid), self._exe(), "dial", "--socket", self._socket(agent), "--addr", addr,
               "--message", message, "--timeout", f"{int(timeout)}s"]
        for i in expect_ids:
            cmd += ["--expect-id", i]
        if expect_td:
            cmd += ["--expect-td", expect_td.removeprefix("spiffe://")]
        if expect_any:
            cmd += ["--expect-any"]
        if hint:
            cmd += ["--svid-hint", hint]
        cp = run(cmd, check=False, timeout=timeout + 30)
        return DialResult(cp.returncode, cp.stdout, cp.stderr)

    def stop_all(self) -> None:
        for p in self.processes:
            p.stop()
        self.processes.clear()
