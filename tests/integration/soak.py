"""Soak under rotation: a tunnel pair on a real SPIRE agent whose SVIDs rotate every few seconds
and which is killed (SIGKILL by PID) and restarted every minute or two, while mixed traffic runs.

    app threads -> client tunnel "soak-out" -> server tunnel "soak-in" -> echo target
                   (daemon C, --svid /cli)     (daemon S, --svid /srv)

Both daemons take their identity from the same agent's Workload API, so an agent restart takes
both down at once. Traffic:
  long   SOAK_LONG_STREAMS threads, each running one paced echo transfer after another. A
         transfer is sized to end SOAK_LONG_MARGIN seconds before the earliest notAfter of both
         daemons' current SVIDs (read from /metrics just before it starts): a session keeps the
         chain it verified and ends with reason=peer_expired at that chain's notAfter, by design.
         Every transfer is checked byte-exact (count + SHA-256 of both directions).
  short  SOAK_SHORT_WORKERS threads: connect, 16..1024 random bytes, the same bytes back, close.
Measured: RSS and open fds of both daemons (/proc/PID), metrics (identity updates, Workload API
reconnects, session end reasons), every failure with its time. A short-connection failure is
excused only when, at its time, a daemon's newest SVID had passed notAfter (no valid identity).

    python3 tests/integration/soak.py [minutes]     # prints the summary table; exit 1 on failure
Environment (defaults in Settings): SOAK_MINUTES, SOAK_SVID_TTL, SOAK_AGENT_RESTART ("lo-hi"
seconds), SOAK_LONG_STREAMS, SOAK_LONG_RATE (MiB/s per stream), SOAK_LONG_MAX (s),
SOAK_AGENT_DOWN ("lo-hi" seconds), SOAK_SHORT_WORKERS, SOAK_SHORT_RATE (connections/s per
worker), SOAK_SEED.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from daemon import Backend, Daemon, DaemonSet  # noqa: E402
from helpers import remove_tree, short_tmpdir, wait_for  # noqa: E402
from spire import SELF_UID, TrustDomain, locate_tools  # noqa: E402

TD = "td-soak.test"
START_TIMEOUT = 60.0
REASONS = ("eof", "idle_timeout", "draining", "peer_error", "plain_error", "policy_changed",
           "peer_expired", "peer_untrusted", "local_identity_lost", "max_connection_age", "aborted")


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@dataclass
class Settings:
    minutes: float = 3.0
    # 20 s: lifetime 30 s (SPIRE backdates notBefore by 10 s), rotation ~5 s after issuance, so a
    # handshake always sees >= ~15 s of validity and an agent outage has ~15 s before anything
    # expires. 15 s would rotate every ~1.5-3.5 s, close to the agent's 1 s sync tick.
    svid_ttl: int = 20
    agent_restart: tuple[float, float] = (60.0, 120.0)
    # the agent stays down this long (s) before it is started again; the daemons keep serving
    # the last SVIDs meanwhile, and reach it again on their next reconnect attempt (1, 2, 4 s...)
    agent_down: tuple[float, float] = (2.0, 6.0)
    long_streams: int = 3
    long_rate: float = 4.0  # MiB/s per stream
    long_max: float = 10.0  # seconds
    long_min: float = 2.0
    long_margin: float = 3.0  # end this long before the earliest notAfter
    short_workers: int = 2
    short_rate: float = 10.0  # per worker per second
    seed: int = 12

    @classmethod
    def from_env(cls) -> "Settings":
        d = cls()
        def pair(name: str, default: tuple[float, float]) -> tuple[float, float]:
            lo, hi = _env(name, f"{default[0]:g}-{default[1]:g}").split("-")
            return float(lo), float(hi)

        return cls(minutes=float(_env("SOAK_MINUTES", str(d.minutes))),
                   svid_ttl=int(_env("SOAK_SVID_TTL", str(d.svid_ttl))),
                   agent_restart=pair("SOAK_AGENT_RESTART", d.agent_restart),
                   agent_down=pair("SOAK_AGENT_DOWN", d.agent_down),
                   long_streams=int(_env("SOAK_LONG_STREAMS", str(d.long_streams))),
                   long_rate=float(_env("SOAK_LONG_RATE", str(d.long_rate))),
                   long_max=float(_env("SOAK_LONG_MAX", str(d.long_max))),
                   short_workers=int(_env("SOAK_SHORT_WORKERS", str(d.short_workers))),
                   short_rate=float(_env("SOAK_SHORT_RATE", str(d.short_rate))),
                   seed=int(_env("SOAK_SEED", str(d.seed))))

    @property
    def duration(self) -> float:
        return self.minutes * 60


# --------------------------------------------------------------------------- measuring

def scrape(port: int) -> dict[tuple[str, tuple], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    t: float  # wall clock
    rss: int  # KiB
    fds: int
    expiry: float  # spiffe_tunnel_identity_expiry_timestamp_seconds
    connected: float  # spiffe_tunnel_workload_api_connected


@dataclass
class Side:
    """One daemon under soak and what was measured about it."""
    name: str
    daemon: Daemon
    admin: int
    pid: int
    fds_start: int = 0
    fds_end: int = 0
    rss_start: int = 0
    samples: list[Sample] = field(default_factory=list)  # one a second
    final: dict = field(default_factory=dict)

    def expiry_at(self, t: float) -> float:
        """Earliest notAfter of the snapshot held at wall-clock time t (newest sample before t)."""
        best = float("inf")
        for smp in self.samples:
            if smp.t > t:
                break
            best = smp.expiry
        return best

    def connected_after(self, t: float) -> float:
        """First time >= t at which the Workload API stream was seen connected (inf if never)."""
        return next((smp.t for smp in self.samples if smp.t >= t and smp.connected), float("inf"))


@dataclass
class Transfer:
    kind: str  # long / short
    started: float
    ended: float = 0.0
    bytes: int = 0
    planned: float = 0.0  # long: planned seconds
    ok: bool = False
    error: str = ""


# --------------------------------------------------------------------------- traffic

def long_transfer(port: int, seconds: float, rate: float) -> Transfer:
    """One paced echo transfer: `rate` MiB/s for `seconds`; checks count and SHA-256 both ways."""
    t = Transfer("long", time.time(), planned=seconds)
    chunk = 64 << 10
    total = int(seconds * rate * (1 << 20)) // chunk * chunk
    sent_sha, got_sha = hashlib.sha256(), hashlib.sha256()
    got = [0]
    block = os.urandom(chunk * 2)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
    except OSError as exc:
        t.error, t.ended = f"connect: {exc}", time.time()
        return t

    def read() -> None:
        try:
            while True:
                data = s.recv(1 << 20)
                if not data:
                    return
                got_sha.update(data)
                got[0] += len(data)
        except OSError as exc:
            t.error = t.error or f"recv: {exc}"

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        start, sent = time.monotonic(), 0
        while sent < total:
            off = (sent // chunk) % 2 * chunk
            data = block[off:off + chunk - 8] + sent.to_bytes(8, "big")
            s.sendall(data)
            sent_sha.update(data)
            sent += len(data)
            ahead = sent / (rate * (1 << 20)) - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        s.shutdown(socket.SHUT_WR)
    except OSError as exc:
        t.error = f"send after {sent} bytes: {exc}"
    reader.join(60)
    s.close()
    t.ended, t.bytes = time.time(), sent
    if not t.error and reader.is_alive():
        t.error = "no EOF within 60 s"
    if not t.error and (got[0], got_sha.digest()) != (sent, sent_sha.digest()):
        t.error = f"mismatch: sent {sent} bytes, got {got[0]}"
    t.ok = not t.error
    return t


def short_call(port: int, rng: random.Random) -> Transfer:
    t = Transfer("short", time.time())
    payload = rng.randbytes(rng.randint(16, 1024))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(payload)
            reply = bytearray()
            while len(reply) < len(payload) and (data := s.recv(4096)):
                reply += data
        t.bytes = len(reply)
        t.ok = reply == payload
        t.error = "" if t.ok else f"got {len(reply)} of {len(payload)} bytes back"
    except OSError as exc:
        t.error = str(exc)
    t.ended = time.time()
    return t


# --------------------------------------------------------------------------- the run

@dataclass
class Result:
    settings: Settings
    seconds: float = 0.0
    transfers: list[Transfer] = field(default_factory=list)
    long_deferred: int = 0  # 0.5 s waits of a long worker for SVIDs with enough lifetime left
    agent_restarts: list[tuple[float, float]] = field(default_factory=list)  # (killed, healthy)
    sides: list[Side] = field(default_factory=list)
    rss_ref_time: float = 0.0
    exit_codes: dict[str, Optional[int]] = field(default_factory=dict)
    restarted_daemons: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, settings: Settings, root: Path):
        self.s = settings
        self.root = root
        self.rng = random.Random(settings.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.result = Result(settings)
        self.daemons = DaemonSet()
        self.td: Optional[TrustDomain] = None
        self.backend: Optional[Backend] = None

    # ---- setup
    def start(self) -> None:
        self.td = TrustDomain.start(TD, self.root / "td", locate_tools(build=True))
        srv, cli = self.td.spiffe_id("/srv"), self.td.spiffe_id("/cli")
        for sid in (srv, cli):
            self.td.create_entry(sid, uid=SELF_UID, ttl=self.s.svid_ttl)
        for sid in (srv, cli):
            self.td.agent.wait_for_svid(sid)
        self.backend = Backend("echo")
        sock = self.td.socket
        server = self.daemons.start(
            ["--admin", "127.0.0.1:0", "server", "--name", "soak-in", "--listen", "127.0.0.1:0",
             "--target", f"127.0.0.1:{self.backend.port}", "--workload-api", sock,
             "--svid", srv, "--allow-id", cli], name="server")
        sport = server.wait_listening(START_TIMEOUT)
        client = self.daemons.start(
            ["--admin", "127.0.0.1:0", "client", "--name", "soak-out", "--listen", "127.0.0.1:0",
             "--target", f"127.0.0.1:{sport}", "--workload-api", sock, "--svid", cli,
             "--expect-id", srv], name="client")
        self.port = client.wait_listening(START_TIMEOUT)
        for name, d in (("client", client), ("server", server)):
            admin = int(d.wait_for(r"admin: serving .* on [^ ]+:(\d+)").group(1))
            self.result.sides.append(Side(name, d, admin, d.proc.pid))
        time.sleep(1.0)  # let both settle (first Workload API update, listeners)
        for side in self.result.sides:
            side.fds_start, side.rss_start = fd_count(side.pid), rss_kib(side.pid)

    def close(self) -> None:
        for d in self.daemons.daemons:
            self.result.exit_codes[d.name] = d.stop()
            if os.environ.get("SPIFFE_TUNNEL_KEEP_TMP") == "1":
                (self.root / f"{d.name}.log").write_text(d.log + "\n")
        if self.backend:
            self.backend.close()
        if self.td:
            self.td.stop()

    # ---- threads
    def sampler(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(1.0)

    def sample(self) -> None:
        now = time.time()
        for side in self.result.sides:
            try:
                side.samples.append(self.measure(side, scrape(side.admin), now))
            except (OSError, RuntimeError):
                self.note_restart(side)

    @staticmethod
    def measure(side: Side, m: dict, now: float) -> Sample:
        return Sample(now, rss_kib(side.pid), fd_count(side.pid),
                      metric(m, "spiffe_tunnel_identity_expiry_timestamp_seconds"),
                      metric(m, "spiffe_tunnel_workload_api_connected"))

    def note_restart(self, side: Side) -> None:
        if side.daemon.proc.poll() is not None and side.name not in self.result.restarted_daemons:
            self.result.restarted_daemons.append(side.name)

    def earliest_not_after(self) -> float:
        return min(metric(scrape(side.admin), "spiffe_tunnel_identity_expiry_timestamp_seconds")
                   for side in self.result.sides)

    def long_worker(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            try:
                left = self.earliest_not_after() - time.time() - self.s.long_margin
            except OSError:
                left = 0.0
            if left < self.s.long_min:
                with self.lock:
                    self.result.long_deferred += 1
                self.stop.wait(0.5)
                continue
            seconds = min(left, rng.uniform(self.s.long_max / 2, self.s.long_max))
            self.record(long_transfer(self.port, seconds, self.s.long_rate))

    def short_worker(self, rng: random.Random) -> None:
        pause = 1.0 / self.s.short_rate
        while not self.stop.is_set():
            self.record(short_call(self.port, rng))
            self.stop.wait(pause)

    def record(self, t: Transfer) -> None:
        with self.lock:
            self.result.transfers.append(t)

    def restarter(self) -> None:
        lo, hi = self.s.agent_restart
        while not self.stop.wait(self.rng.uniform(lo, hi)):
            agent = self.td.agent
            killed = time.time()
            os.kill(agent.process.pid, signal.SIGKILL)  # by the PID the harness started
            agent.process.stop()  # reaps it
            time.sleep(self.rng.uniform(*self.s.agent_down))
            agent.start()
            self.result.agent_restarts.append((killed, time.time()))

    # ---- the run
    def run(self) -> Result:
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.restarter, daemon=True)]
        threads += [threading.Thread(target=self.long_worker, args=(random.Random(self.s.seed + i),),
                                     daemon=True) for i in range(self.s.long_streams)]
        threads += [threading.Thread(target=self.short_worker,
                                     args=(random.Random(self.s.seed + 100 + i),), daemon=True)
                    for i in range(self.s.short_workers)]
        t0 = time.time()
        for th in threads:
            th.start()
        self.stop.wait(self.s.duration)
        self.stop.set()
        for th in threads:
            th.join(120)
        self.result.seconds = time.time() - t0
        self.settle()
        return self.result

    def settle(self) -> None:
        """After traffic: wait for the Workload API stream (a restart near the end), for no open
        session, then for fds to come back; read the rest."""
        for side in self.result.sides:
            wait_for(lambda side=side: metric(scrape(side.admin), "spiffe_tunnel_workload_api_connected"),
                     timeout=45, interval=0.5, desc=f"{side.name}: Workload API connected")
            def idle(side=side) -> bool:
                m = scrape(side.admin)
                return sum(v for (n, _), v in m.items() if n == "spiffe_tunnel_sessions_active") == 0
            wait_for(idle, timeout=30, interval=0.5, desc=f"{side.name}: no session open")
            try:
                wait_for(lambda side=side: fd_count(side.pid) <= side.fds_start, timeout=15,
                         interval=0.5, desc=f"{side.name}: fds back")
            except TimeoutError:
                pass
            side.fds_end = fd_count(side.pid)
            side.final = scrape(side.admin)
            side.samples.append(self.measure(side, side.final, time.time()))
            self.note_restart(side)


def run_soak(settings: Settings) -> Result:
    root = short_tmpdir("sk-")
    soak = Soak(settings, root)
    try:
        soak.start()
        return soak.run()
    finally:
        soak.close()
        if os.environ.get("SPIFFE_TUNNEL_KEEP_TMP") != "1":
            remove_tree(root)


# --------------------------------------------------------------------------- reading the result

def median_rss(side: Side, t0: float, t1: float) -> int:
    vals = [smp.rss for smp in side.samples if t0 <= smp.t <= t1]
    return int(statistics.median(vals)) if vals else 0


@dataclass
class Summary:
    """The numbers of one run, and what is wrong with them (problems)."""
    lines: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def row(self, key: str, value) -> None:
        self.lines.append((key, str(value)))

    def table(self) -> str:
        width = max(len(k) for k, _ in self.lines)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in self.lines)


def rss_reference_time(r: Result, start: float) -> float:
    """Warm-up ends 20 s after the first agent restart (every path ran once: rotation, long and
    short traffic, agent loss, reconnect), or 30 s into the run when there was none."""
    return r.agent_restarts[0][1] + 20 if r.agent_restarts else start + 30


# After the agent is healthy again, the daemons need up to this long to hold its new SVIDs: the
# next reconnect attempt (about 1 s apart once the held SVID expired) plus the agent signing them.
RECONNECT_GRACE = 3.0


def agent_down_at(r: Result, t: float) -> bool:
    return any(killed <= t <= healthy + RECONNECT_GRACE for killed, healthy in r.agent_restarts)


def excused(r: Result, t: Transfer) -> bool:
    """True when, at the failure, a daemon's newest SVID had passed notAfter and the agent was
    down or had just come back: there was genuinely no valid SVID to present."""
    expired = any(side.expiry_at(t.ended) < t.ended for side in r.sides)
    return expired and agent_down_at(r, t.ended)


def summarize(r: Result) -> Summary:
    s, out = r.settings, Summary()
    longs = [t for t in r.transfers if t.kind == "long"]
    shorts = [t for t in r.transfers if t.kind == "short"]
    start = min((t.started for t in r.transfers), default=0.0)
    end = max((t.ended for t in r.transfers), default=0.0)
    long_fail = [t for t in longs if not t.ok]
    short_fail = [t for t in shorts if not t.ok]
    short_excused = [t for t in short_fail if excused(r, t)]
    out.row("duration", f"{r.seconds:.0f} s of traffic (SOAK_MINUTES={s.minutes:g})")
    out.row("svid ttl", f"{s.svid_ttl} s (lifetime {s.svid_ttl + 10} s)")
    out.row("agent restarts", f"{len(r.agent_restarts)} (SIGKILL, every {s.agent_restart[0]:g}-"
            f"{s.agent_restart[1]:g} s, down {s.agent_down[0]:g}-{s.agent_down[1]:g} s; healthy again after " +
            ", ".join(f"{b - a:.1f}" for a, b in r.agent_restarts) + " s)")
    out.row("long transfers", f"{len(longs)}, {sum(t.bytes for t in longs) / 2**20:.0f} MiB each way, "
            f"{len(long_fail)} failed, {r.long_deferred} half-second waits for an SVID with "
            f">= {s.long_min + s.long_margin:g} s left; {s.long_streams} x {s.long_rate:g} MiB/s, "
            f"longest {max((t.ended - t.started for t in longs), default=0):.1f} s")
    out.row("short connections", f"{len(shorts)} ({len(shorts) / max(r.seconds, 1):.1f}/s), "
            f"{len(short_fail)} failed, {len(short_excused)} of them without a valid SVID "
            f"while the agent was down")
    for t in (long_fail + short_fail)[:10]:
        out.row("  failure", f"{t.kind} at +{t.ended - start:.1f} s: {t.error}")
    ref_t = rss_reference_time(r, start)
    lags = [side.connected_after(healthy) - healthy for side in r.sides for _, healthy in r.agent_restarts]
    out.row("reconnect lag", f"agent healthy -> both daemons' stream connected: max "
            f"{max(lags, default=0):.1f} s (sampled every 1 s)")
    for side in r.sides:
        m = side.final
        log = side.daemon
        rss = [smp.rss for smp in side.samples]
        ref, late = median_rss(side, ref_t, ref_t + 10), median_rss(side, end - 10, end)
        updates = metric(m, "spiffe_tunnel_identity_updates_total")
        reconnects = metric(m, "spiffe_tunnel_workload_api_reconnects_total")
        reasons = {k: v for k in REASONS if (v := sum(
            val for (n, ls), val in m.items()
            if n == "spiffe_tunnel_sessions_closed_total" and dict(ls).get("reason") == k))}
        out.row(f"{side.name}: rotations", f"{updates:.0f} identity updates "
                f"({log.count(r'workload-api: identity update from ')} logged), "
                f"{reconnects:.0f} Workload API reconnect attempts "
                f"({log.count(r'workload-api: reconnected to ')} reconnected)")
        out.row(f"{side.name}: fds", f"start {side.fds_start}, end {side.fds_end}, "
                f"peak {max((smp.fds for smp in side.samples), default=0)}")
        out.row(f"{side.name}: rss KiB", f"start {side.rss_start}, after warm-up {ref}, peak "
                f"{max(rss, default=0)}, last 10 s of traffic {late}, end {rss[-1] if rss else 0} "
                f"(end/warm-up {rss[-1] / ref if ref else 0:.3f})")
        out.row(f"{side.name}: sessions ended", ", ".join(f"{k}={v:.0f}" for k, v in reasons.items()))
        out.row(f"{side.name}: exit", f"rc={r.exit_codes.get(side.name)}")
        problems = out.problems
        if side.fds_end != side.fds_start:
            problems.append(f"{side.name}: fds {side.fds_start} -> {side.fds_end}")
        for what, v in (("end", rss[-1] if rss else 0), ("last 10 s of traffic", late)):
            if ref and v > ref * 1.10:
                problems.append(f"{side.name}: RSS {what} {v} KiB > 110 % of warm-up {ref} KiB")
        if reasons.get("peer_expired"):
            problems.append(f"{side.name}: {reasons['peer_expired']:.0f} sessions ended peer_expired")
        if r.exit_codes.get(side.name) not in (0, None):
            problems.append(f"{side.name}: exit code {r.exit_codes.get(side.name)}")
        if updates < max(2, r.seconds / 30):
            problems.append(f"{side.name}: only {updates:.0f} identity updates in {r.seconds:.0f} s")
        if log.count(r"workload-api: reconnected to ") < len(r.agent_restarts):
            problems.append(f"{side.name}: fewer reconnects than agent restarts")
    if r.restarted_daemons:
        out.problems.append(f"daemons died: {r.restarted_daemons}")
    if long_fail:
        out.problems.append(f"{len(long_fail)} long transfers failed")
    if len(short_fail) > len(short_excused):
        out.problems.append(f"{len(short_fail) - len(short_excused)} short connections failed "
                            f"outside the windows without a valid SVID (agent down)")
    if not r.agent_restarts:
        out.problems.append("the agent was never restarted")
    return out


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        os.environ["SOAK_MINUTES"] = argv[1]
    settings = Settings.from_env()
    print(f"soak: {settings.minutes:g} min, SVID TTL {settings.svid_ttl} s, agent restart every "
          f"{settings.agent_restart[0]:g}-{settings.agent_restart[1]:g} s", flush=True)
    summary = summarize(run_soak(settings))
    print(summary.table())
    print("RESULT: " + ("PASS" if not summary.problems else "FAIL\n  " + "\n  ".join(summary.problems)))
    return 0 if not summary.problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
