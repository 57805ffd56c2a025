"""Turns results.csv rows into docs/benchmarks.md, PNG plots and the summary against the targets.

The hand-written part of the document (method, notes, profile) lives in bench/notes.md and is
appended verbatim, so a re-run never loses it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

TLS_PEERS = ["stunnel", "haproxy", "nginx", "socat"]
RELAYS = ["relay-haproxy", "relay-socat"]
# Busy-polling variants, measured in the connection/latency test only.
BUSY_POLL = ["spiffe-tunnel-bp", "haproxy-bp"]
# New connections past the full handshake: the peers with session resumption on, and
# spiffe-tunnel resuming or multiplexing (HTTP/2 CONNECT streams over carrying connections).
RESUME_PEERS = ["stunnel-resume", "haproxy-resume", "nginx-resume"]
BEST_SETTING = TLS_PEERS + RESUME_PEERS  # each peer at its best setting
MUX, RESUME = "spiffe-tunnel-mux", "spiffe-tunnel-resume"
ORDER = ["direct", "relay-haproxy", "relay-socat", "spiffe-tunnel", RESUME, MUX] + TLS_PEERS + \
    RESUME_PEERS + BUSY_POLL
NOTES = Path(__file__).resolve().parent.parent / "notes.md"


class Results:
    def __init__(self, rows):
        self.v = defaultdict(list)
        self.rep = defaultdict(dict)  # (test, peer, metric) -> {repetition: value}
        for r in rows:
            self.v[(r["test"], r["peer"], r["metric"])].append(float(r["value"]))
            self.rep[(r["test"], r["peer"], r["metric"])][str(r["rep"])] = float(r["value"])
        self.peers = [p for p in ORDER if any(k[1] == p for k in self.v)]

    def peers_in(self, *tests):
        """Peers with at least one value (or a recorded failure) in one of the tests."""
        return [p for p in self.peers if any(k[0] in tests and k[1] == p for k in self.v)]

    def med(self, test, peer, metric):
        xs = self.v.get((test, peer, metric))
        return statistics.median(xs) if xs else None

    def spread(self, test, peer, metric):
        xs = self.v.get((test, peer, metric))
        return (min(xs), statistics.median(xs), max(xs)) if xs else None

    def cell(self, test, peer, metric, fmt="{:.2f}"):
        s = self.spread(test, peer, metric)
        if s is None:
            return "–"
        lo, mid, hi = s
        if len(self.v[(test, peer, metric)]) == 1:
            return fmt.format(mid)
        return f"{fmt.format(mid)} ({fmt.format(lo)}–{fmt.format(hi)})"

    def best(self, test, metric, higher=True, among=TLS_PEERS):
        cands = [(self.med(test, p, metric), p) for p in among if self.med(test, p, metric)]
        if not cands:
            return None, None
        return (max if higher else min)(cands)

    def paired(self, test, a, b, metric):
        """Median over repetitions of a/b measured in the same repetition (a and b run next to
        each other), and the min–max of those ratios; None without a common repetition."""
        xa, xb = self.rep.get((test, a, metric), {}), self.rep.get((test, b, metric), {})
        rs = sorted(xa[k] / xb[k] for k in xa if xb.get(k))
        return (statistics.median(rs), rs[0], rs[-1]) if rs else None

    def errors(self, test, peer):
        return len(self.v.get((test, peer, "error"), []))


def _fmt(x, f="{:.2f}"):
    return "–" if x is None else f.format(x)


def summary(R: Results) -> list[str]:
    """One line per metric: spiffe-tunnel, the best peer, the ratio and the issue's target."""
    st = "spiffe-tunnel"
    out = []

    def line(name, ours, best, best_peer, ratio, target, ok, unit=""):
        mark = "met" if ok else "missed"
        out.append(f"| {name} | {_fmt(ours)}{unit} | {_fmt(best)}{unit} ({best_peer or '–'}) | "
                   f"{_fmt(ratio)} | {target} | **{mark}** |")

    ours = R.med("bulk", st, "gbit_s_1")
    best, bp = R.best("bulk", "gbit_s_1")
    r = ours / best if ours and best else None
    line("Loopback throughput, 1 stream (Gbit/s)", ours, best, bp, r, "≥ 1.30×", r and r >= 1.3)
    ours4 = R.med("bulk", st, "gbit_s_4")
    best4, bp4 = R.best("bulk", "gbit_s_4")
    r4 = ours4 / best4 if ours4 and best4 else None
    line("Loopback throughput, 4 streams (Gbit/s)", ours4, best4, bp4, r4, "(no target)",
         r4 and r4 >= 1.0)
    cpu = R.med("bulk", st, "cpu_s_per_GB_1")
    model = limit_model(R)
    bestc, bpc = R.best("bulk", "cpu_s_per_GB_1", higher=False)
    rm = cpu / model if cpu and model else None
    line("CPU per GB, 1 stream (s/GB) vs limit model", cpu, model, "limit model", rm,
         "≤ 1.10× model", rm and rm <= 1.1)
    rc = cpu / bestc if cpu and bestc else None
    line("CPU per GB, 1 stream (s/GB) vs best peer", cpu, bestc, bpc, rc, "(info)", rc and rc <= 1)
    cs = R.med("conn", st, "conn_per_s")
    bcs, bpcs = R.best("conn", "conn_per_s")
    rcs = cs / bcs if cs and bcs else None
    line("New mTLS connections/s", cs, bcs, bpcs, rcs, "≥ 2×", rcs and rcs >= 2)
    cm = R.med("conn", st, "cpu_ms_per_conn")
    bcm, bpcm = R.best("conn", "cpu_ms_per_conn", higher=False)
    rcm = cm / bcm if cm and bcm else None
    line("CPU per new connection (ms)", cm, bcm, bpcm, rcm, "(info)", rcm and rcm <= 1)
    d = R.med("latency", "direct", "p50_us")
    lat = R.med("latency", st, "p50_us")
    blat, bpl = R.best("latency", "p50_us", higher=False)
    if d and lat and blat:
        ov, bov = lat - d, blat - d
        rl = ov / bov if bov > 0 else None
        line(f"p50 RTT overhead over direct ({d:.1f} µs) (µs)", ov, bov, bpl, rl,
             "≤ 0.5×" if bov > 0 else "≤ 0.5× (best peer is faster than direct: unattainable)",
             rl is not None and rl <= 0.5)
    lat_bp = R.med("latency", "spiffe-tunnel-bp", "p50_us")
    if d and lat_bp and blat:
        # With busy polling on: against every TLS peer, including haproxy with its own option.
        bbp, bpbp = R.best("latency", "p50_us", higher=False, among=TLS_PEERS + ["haproxy-bp"])
        ov, bov = lat_bp - d, bbp - d
        rl = ov / bov if bov > 0 else None
        line("p50 RTT overhead, spiffe-tunnel `--busy-poll 200us` (µs)", ov, bov, bpbp, rl,
             "≤ 0.5×", rl is not None and rl <= 0.5)
    mem = R.med("memory", st, "kib_per_conn")
    bm, bpm = R.best("memory", "kib_per_conn", higher=False)
    rmem = mem / bm if mem and bm else None
    out.append(f"| Memory per idle connection, both ends (KiB) | {_fmt(mem, '{:.1f}')} | "
               f"{_fmt(bm, '{:.1f}')} ({bpm or '–'}) | {_fmt(rmem)} | ≤ 24 KiB absolute | "
               f"**{'met' if mem is not None and mem <= 24 else 'missed'}** |")
    sd = R.med("shaped", "direct", "gbit_s_1")
    so = R.med("shaped", st, "gbit_s_1")
    bs, bps = R.best("shaped", "gbit_s_1")
    if sd and so:
        f, bf = so / sd, (bs / sd if bs else None)
        out.append(f"| 10 Gbit/s shaped link, 1 stream (fraction of direct {sd:.2f} Gbit/s) | "
                   f"{f:.0%} | {_fmt(bf, '{:.0%}')} ({bps or '–'}) | "
                   f"{_fmt(f / bf if bf else None)} | ≥ 95 % of direct | "
                   f"**{'met' if f >= 0.95 else 'missed'}** |")
    return out


def summary_newconn(R: Results) -> list[str]:
    """Issue #13's targets: multiplexed new connections and throughput, and resumption's effect."""
    out = []

    def row(name, ours, best, label, ratio, target, ok, f="{:.2f}"):
        mark = "–" if ok is None or ours is None or best is None else \
            ("**met**" if ok else "**missed**")
        out.append(f"| {name} | {_fmt(ours, f)} | {_fmt(best, f)} ({label or '–'}) | "
                   f"{_fmt(ratio)} | {target} | {mark} |")

    m = R.med("conn", MUX, "conn_per_s")
    b, bp = R.best("conn", "conn_per_s", among=BEST_SETTING)
    r = m / b if m and b else None
    row("New connections/s, multiplexed", m, b, bp, r, "≥ 2×", r and r >= 2, "{:.0f}")
    m = R.med("ttfb", MUX, "p50_us")
    b, bp = R.best("ttfb", "p50_us", higher=False, among=BEST_SETTING)
    r = m / b if m and b else None
    row("Time to first byte of a new connection, multiplexed, p50 (µs)", m, b, bp, r, "≤ 0.5×",
        r is not None and r <= 0.5, "{:.0f}")
    m, d = R.med("ttfb", MUX, "p99_us"), R.best("ttfb", "p99_us", higher=False,
                                                   among=BEST_SETTING)
    row("… p99 (µs)", m, d[0], d[1], m / d[0] if m and d[0] else None, "(info)", None, "{:.0f}")
    for streams, target in ((1, 0.95), (4, None)):
        m = R.med("bulk", MUX, f"gbit_s_{streams}")
        d = R.med("bulk", "spiffe-tunnel", f"gbit_s_{streams}")
        pr = R.paired("bulk", MUX, "spiffe-tunnel", f"gbit_s_{streams}")
        r = pr[0] if pr else None  # paired: the two ran back to back in each repetition
        row(f"Throughput, {streams} stream{'s' if streams > 1 else ''}, multiplexed vs "
            f"dedicated (Gbit/s)", m, d, "spiffe-tunnel dedicated", r,
            f"≥ {target}×" if target else "(info)", (r is not None and r >= target)
            if target else None)
    for metric, test, name, f in (("conn_per_s", "conn", "New connections/s", "{:.0f}"),
                                  ("p50_us", "ttfb", "Time to first byte p50 (µs)", "{:.0f}")):
        m, d = R.med(test, RESUME, metric), R.med(test, "spiffe-tunnel", metric)
        row(f"{name}, resumption vs full handshakes", m, d, "spiffe-tunnel full", 
            m / d if m and d else None, "(info)", None, f)
    return out


def newconn_bound_lines(R: Results) -> list[str]:
    """What bounds each multiplexing target, from the same run; printed when one is missed (and
    kept short when all are met)."""
    o = []
    m, b = R.med("conn", MUX, "conn_per_s"), R.best("conn", "conn_per_s", among=BEST_SETTING)
    tun, app = R.med("conn", MUX, "cpu_ms_per_conn"), R.med("conn", MUX, "app_cpu_ms_per_conn")
    busy = R.med("conn", MUX, "machine_busy")
    if m and b[0] and tun and app:
        cap = 2000.0 / (tun + app)
        ours = (tun + app) * m / 2000.0
        o.append(f"- Multiplexed new connections: both tunnel ends spend {tun:.3f} CPU ms per "
                 f"connection and the load generator with the echo server {app:.3f} ms; at "
                 f"{tun + app:.3f} ms per connection two vCPUs allow at most {cap:.0f}/s "
                 f"(measured {m:.0f}/s: those processes used {ours:.0%} of the two vCPUs, the "
                 f"machine was {_fmt(busy, '{:.0%}')} busy — the rest is the kernel's softirq "
                 f"work and other processes). 2× the best peer "
                 f"({b[1]}) needs {2 * b[0]:.0f}/s"
                 + (" — met." if m >= 2 * b[0] else
                    f": even a tunnel that cost nothing would be capped at {2000.0 / app:.0f}/s by "
                    f"the load generator here." if 2000.0 / app < 2 * b[0] else
                    f": the tunnel ends would have to fit in {2000.0 / (2 * b[0]) - app:.3f} ms."))
    t, bt = R.med("ttfb", MUX, "p50_us"), R.best("ttfb", "p50_us", higher=False,
                                                  among=BEST_SETTING)
    d = R.med("ttfb", "direct", "p50_us")
    relay, rname = R.best("ttfb", "p50_us", higher=False, among=RELAYS)
    if t and bt[0] and d:
        o.append(f"- Time to first byte: direct (no tunnel) {d:.0f} µs; the best plain TCP relay "
                 f"pair ({rname or '–'}, no TLS, a new upstream connection per connection) "
                 f"{_fmt(relay, '{:.0f}')} µs; multiplexed {t:.0f} µs (one HTTP/2 round trip "
                 f"through both daemons plus the target connect, no handshake); half the best "
                 f"peer's ({bt[1]}) is {bt[0] / 2:.0f} µs"
                 + (" — met." if t <= bt[0] / 2 else
                    " — less than a relay without TLS takes here." if relay and relay > bt[0] / 2
                    else "."))
    m1, d1 = R.med("bulk", MUX, "gbit_s_1"), R.med("bulk", "spiffe-tunnel", "gbit_s_1")
    if m1 and d1:
        hm, hd = R.med("bulk", MUX, "busiest_thread_1"), R.med("bulk", "spiffe-tunnel",
                                                                "busiest_thread_1")
        cm, cd = R.med("bulk", MUX, "cpu_s_per_GB_1"), R.med("bulk", "spiffe-tunnel",
                                                             "cpu_s_per_GB_1")
        why = ("HTTP/2 framing and one more copy on the receiving side are the difference; no "
               "tunnel thread is near a full vCPU" if (hm or 0) < 0.9 else
               "and the stream's busiest thread is at a full vCPU")
        o.append(f"- Single stream: multiplexed {m1:.2f} vs dedicated {d1:.2f} Gbit/s "
                 f"({m1 / d1:.2f}×); tunnel CPU {_fmt(cm)} vs {_fmt(cd)} s/GB "
                 f"({_fmt(cm / cd if cm and cd else None)}×); the busiest tunnel thread used "
                 f"{_fmt(hm, '{:.0%}')} vs {_fmt(hd, '{:.0%}')} of a vCPU. Loopback throughput "
                 f"here is bound by the two vCPUs that iperf3's two ends and both tunnel ends "
                 f"share, so it follows the CPU per byte"
                 + (f" (which alone predicts {cd / cm:.2f}×)" if cm and cd else "")
                 + f": {why}" + (" — met." if m1 >= 0.95 * d1 else "."))
    floor = R.med("limit", "openssl", "handshake_cpu_ms")
    full, res = R.med("conn", "spiffe-tunnel", "cpu_ms_per_conn"), R.med("conn", RESUME,
                                                                        "cpu_ms_per_conn")
    if floor and full:
        o.append(f"- Full handshakes: spiffe-tunnel {full:.2f} CPU ms per connection (both ends) "
                 f"against OpenSSL's own floor of {floor:.2f} ms for one mutual handshake"
                 + (f"; with resumption {res:.2f} ms" if res else "") + ".")
    return o


def resumption_lines(R: Results, meta: dict) -> list[str]:
    """Whether each -resume row (and the multiplexed row) did what its name says."""
    o = []
    checks = meta.get("checks", {})
    for p in [RESUME] + RESUME_PEERS + [MUX]:
        frac = R.med("conn", p, "reused_fraction")
        if R.v.get(("conn", p, "check_unverified")):
            o.append(f"- **WARNING {p}: resumption not verified** (the build has no "
                     f"`spiffe_tunnel_handshakes_resumed_total`, or the count was unreadable).")
        elif frac is not None:
            what = ("of new connections carried as streams, without a handshake" if p == MUX
                    else "handshakes resumed")
            warn = "" if frac >= 0.5 else " — **WARNING: mostly full handshakes**"
            o.append(f"- {p}: {frac:.1%} {what} ({checks.get(p, 'counted by the peer')}, "
                     f"median over repetitions, warm-up included){warn}.")
    return o


def handshake_floor_lines(R: Results) -> list[str]:
    """The OpenSSL handshake floor beside the conn/s results, and what 2× the best peer needs."""
    floor = R.med("limit", "openssl", "handshake_cpu_ms")
    if floor is None:
        return []
    lines = ["", f"- **OpenSSL handshake floor** (`bench/hsfloor.c`: both ends of one mutual "
                 f"TLS 1.3 handshake in one thread over a memory BIO pair, same certificates and "
                 f"suite, OpenSSL's own chain verification, no sockets): "
                 f"{R.cell('limit', 'openssl', 'handshake_cpu_ms', '{:.3f}')} CPU ms."]
    st_ms = R.med("conn", "spiffe-tunnel", "cpu_ms_per_conn")
    st_cs = R.med("conn", "spiffe-tunnel", "conn_per_s")
    best, bp = R.best("conn", "conn_per_s")
    direct = R.med("conn", "direct", "conn_per_s")
    if st_ms:
        lines.append(f"- spiffe-tunnel spends {st_ms:.2f} CPU ms per connection (both ends): "
                     f"{st_ms / floor:.2f}× the floor; {st_ms - floor:.2f} ms is the three TCP "
                     f"connections, socket I/O and everything beside the handshake math.")
    if best and direct and st_ms and st_cs:
        need = 2 * best
        # CPU the two vCPUs would have to fit per connection: the tunnel pair plus the load
        # generator and echo server (at most 2 CPU s / direct conn/s, measured without a tunnel).
        app = 2000.0 / direct
        budget = 2000.0 / need - app
        lines.append(f"- 2× the best peer ({bp}, {best:.0f} conn/s) is {need:.0f} conn/s. On two "
                     f"vCPUs that leaves at most 2000 ms / {need:.0f} − {app:.2f} ms (load "
                     f"generator and echo server, from the direct run) = **{budget:.2f} CPU ms per "
                     f"connection for both tunnel ends**, against an OpenSSL floor of "
                     f"{floor:.2f} ms for the handshake alone"
                     + (" — below the floor: no tunnel pair on this OpenSSL can reach it here."
                        if budget < floor else "."))
    return lines


def throughput_bound_lines(R: Results, model: float) -> list[str]:
    """How much faster than the best peer a tunnel at exactly the limit model could be."""
    best_cpu, best = R.best("bulk", "cpu_s_per_GB_1", higher=False)
    if best_cpu is None:
        return []
    return [f"- Loopback throughput is CPU-bound here (both tunnel ends and iperf3's two ends share "
            f"two vCPUs), so a tunnel's speed-up over a peer is at most the ratio of their CPU per "
            f"byte, and less once iperf3's own CPU is counted. A tunnel at exactly the model "
            f"could be at most {best_cpu:.2f} / {model:.2f} = **{best_cpu / model:.2f}× as fast "
            f"as the most efficient TLS peer ({best})**"
            + (": the 1.3× single-stream target is beyond what the model allows on this machine."
               if best_cpu / model < 1.3 else ".")]


def latency_bound_lines(R: Results) -> list[str]:
    """The plain relays' overhead beside the latency target: a TLS tunnel cannot beat a relay."""
    d = R.med("latency", "direct", "p50_us")
    relay_rtt, relay = R.best("latency", "p50_us", higher=False, among=RELAYS)
    best_rtt, best = R.best("latency", "p50_us", higher=False)
    if d is None or relay_rtt is None or best_rtt is None:
        return []
    relay_ov, target = relay_rtt - d, (best_rtt - d) / 2
    lines = ["", f"- The best plain relay pair ({relay}, no TLS at all) adds {relay_ov:.1f} µs "
                 f"at p50: the extra hops through two relay processes, each woken for every byte. "
                 f"Half the best TLS peer's overhead ({best}) is {target:.1f} µs"
             + (f", less than a relay without TLS costs here: the latency target is out of reach "
                f"for any relay pair that sleeps between packets on this machine."
                if relay_ov > target else ".")]
    bp = R.med("latency", "spiffe-tunnel-bp", "p50_us")
    hbp = R.med("latency", "haproxy-bp", "p50_us")
    if bp is not None:
        lines.append(f"- The overhead is the wake-ups: with busy polling (`--busy-poll 200us`, "
                     f"each data thread keeps polling for 200 µs after an event instead of "
                     f"sleeping) spiffe-tunnel adds {bp - d:.1f} µs"
                     + (f", and haproxy with its `busy-polling` {hbp - d:.1f} µs" if hbp else "")
                     + ". The price is CPU: a polling thread stays busy while messages keep "
                       "coming (see the connection table for what it does to conn/s).")
    return lines


def shaped_bound_lines(R: Results) -> list[str]:
    """Whether the shaped-link runs were held back by the link or by the machine's CPU."""
    sd = R.med("shaped", "direct", "gbit_s_1")
    busy_d = R.med("shaped", "direct", "machine_busy")
    so = R.med("shaped", "spiffe-tunnel", "gbit_s_1")
    busy_o = R.med("shaped", "spiffe-tunnel", "machine_busy")
    if None in (sd, busy_d, so, busy_o):
        return []
    hot = R.med("shaped", "spiffe-tunnel", "busiest_thread")
    soft = R.med("shaped", "spiffe-tunnel", "machine_softirq")
    lines = ["", f"- Direct iperf3 fills the shaped link ({sd:.2f} Gbit/s) with the machine "
                 f"{busy_d:.0%} busy. With spiffe-tunnel in the path the machine is "
                 f"{busy_o:.0%} busy"
             + (f" and the tunnel's busiest thread (the client end's: it reads the stream, "
                f"encrypts it and sends it) uses {hot:.0%} of a vCPU in its own time; the "
                f"kernel's softirq work ({_fmt(soft, '{:.0%}')} of the machine), which the veth "
                f"runs inside that thread's send() for the receiving side, comes on top"
                if hot is not None else "")
             + ". One connection is served by one thread, so a single stream through any of "
               "these tunnels is held back by one vCPU — which here shares its physical core "
               "with the other — rather than by the link."]
    if so < 0.95 * sd:
        need = 0.95 * sd / so
        lines.append(f"- 95 % of direct is {0.95 * sd:.2f} Gbit/s, {need:.2f}× what spiffe-tunnel "
                     f"moved: that thread would have to do the same work in {1 / need:.0%} of "
                     f"the CPU time.")
    return lines


def limit_model(R: Results):
    relay_cpu, _ = R.best("bulk", "cpu_s_per_GB_1", higher=False, among=RELAYS)
    aes = R.med("limit", "openssl", "aes128gcm_cpu_s_per_GB")
    if relay_cpu is None or aes is None:
        return None
    return relay_cpu + 2 * aes


def tables(R: Results, meta: dict) -> list[str]:
    o = []
    o += ["### Bulk throughput on loopback (iperf3, app → app through the pair)", "",
          "| Peer | 1 stream Gbit/s | 4 streams Gbit/s | CPU s/GB, 1 stream | CPU s/GB, 4 streams "
          "| busiest tunnel thread, 1 stream (share of a vCPU) |",
          "|---|---|---|---|---|---|"]
    for p in R.peers_in("bulk"):
        o.append(f"| {p} | {R.cell('bulk', p, 'gbit_s_1')} | {R.cell('bulk', p, 'gbit_s_4')} | "
                 f"{R.cell('bulk', p, 'cpu_s_per_GB_1')} | {R.cell('bulk', p, 'cpu_s_per_GB_4')} "
                 f"| {_fmt(R.med('bulk', p, 'busiest_thread_1'), '{:.0%}')} |")
    relay_cpu, relay = R.best("bulk", "cpu_s_per_GB_1", higher=False, among=RELAYS)
    aes = R.med("limit", "openssl", "aes128gcm_cpu_s_per_GB")
    model = limit_model(R)
    if model is not None:
        ours = R.med("bulk", "spiffe-tunnel", "cpu_s_per_GB_1")
        o += ["", "### Limit model", "",
              f"- `openssl speed -evp aes-128-gcm -bytes 16384` in this run: "
              f"{R.cell('limit', 'openssl', 'aes128gcm_GBps')} GB/s on one core → "
              f"{aes:.3f} CPU s per GB for one pass.",
              f"- Best plain relay pair CPU per GB (1 stream): {relay_cpu:.3f} s/GB ({relay}).",
              f"- **Model = relay + 2 × AES-GCM (encrypt at one end, decrypt at the other) = "
              f"{relay_cpu:.3f} + 2 × {aes:.3f} = {model:.3f} CPU s/GB.**",
              f"- spiffe-tunnel: {_fmt(ours)} s/GB = "
              f"{_fmt(ours / model if ours else None)}× the model."]
        o += throughput_bound_lines(R, model)
    o += ["", "### New connections (connect, 1 byte echoed, close)", "",
          f"conn/s: {meta.get('conn_workers', 4)} workers in parallel. Time to first byte: one "
          "connection at a time (connect + 1-byte round trip, then close), "
          f"{meta.get('ttfb_count', 1000)} per repetition after 20 warm-up ones. Plain peer rows "
          "do full mTLS handshakes; `-resume` rows resume TLS 1.3 sessions; `spiffe-tunnel-mux` "
          "opens an HTTP/2 CONNECT stream on a carrying connection.", "",
          "| Peer | conn/s | CPU ms per connection (both tunnel ends) | load generator + echo "
          "CPU ms per connection | time to first byte p50 µs | p99 µs | resumed (check) | "
          "failed connections (median) |",
          "|---|---|---|---|---|---|---|---|"]
    for p in R.peers_in("conn"):
        o.append(f"| {p} | {R.cell('conn', p, 'conn_per_s', '{:.0f}')} | "
                 f"{R.cell('conn', p, 'cpu_ms_per_conn')} | "
                 f"{R.cell('conn', p, 'app_cpu_ms_per_conn', '{:.3f}')} | "
                 f"{R.cell('ttfb', p, 'p50_us', '{:.0f}')} | "
                 f"{R.cell('ttfb', p, 'p99_us', '{:.0f}')} | "
                 f"{_fmt(R.med('conn', p, 'reused_fraction'), '{:.0%}')} | "
                 f"{_fmt(R.med('conn', p, 'failed'), '{:.0f}')} |")
    o += [""] + resumption_lines(R, meta)
    o += handshake_floor_lines(R)
    d = R.med("latency", "direct", "p50_us")
    o += ["", "### Round-trip latency (1-byte ping-pong on one established connection)", "",
          "| Peer | p50 µs | p99 µs | p50 overhead over direct µs |", "|---|---|---|---|"]
    for p in R.peers_in("latency", "conn"):
        m = R.med("latency", p, "p50_us")
        o.append(f"| {p} | {R.cell('latency', p, 'p50_us', '{:.1f}')} | "
                 f"{R.cell('latency', p, 'p99_us', '{:.1f}')} | "
                 f"{_fmt(m - d if m and d else None, '{:.1f}')} |")
    o += latency_bound_lines(R)
    counts = sorted({int(k[2].rsplit("_", 1)[1]) for k in R.v
                     if k[0] == "memory" and k[2].startswith("rss_kib_") and k[2] != "rss_kib_0"})
    o += ["", "### Memory with idle established tunneled connections (both tunnel ends together)",
          "", "| Peer | RSS idle KiB | " + " | ".join(f"RSS {n:,} conns KiB" for n in counts) +
          " | " + " | ".join(f"KiB per conn at {n:,}" for n in counts) + " |",
          "|---|---|" + "---|" * (2 * len(counts))]
    for p in R.peers_in("memory"):
        if p == "direct":
            continue
        o.append(f"| {p} | {R.cell('memory', p, 'rss_kib_0', '{:.0f}')} | " +
                 " | ".join(R.cell('memory', p, f'rss_kib_{n}', '{:.0f}') for n in counts) +
                 " | " +
                 " | ".join(R.cell('memory', p, f'kib_per_conn_{n}', '{:.1f}') for n in counts) +
                 " |")
    sd = R.med("shaped", "direct", "gbit_s_1")
    o += ["", "### Two namespaces, veth shaped to 10 Gbit/s with tc tbf (1 stream)", "",
          "| Peer | Gbit/s | fraction of direct | machine busy (2 vCPUs) | busiest tunnel thread "
          "(share of one vCPU) | tunnel CPU s/GB |",
          "|---|---|---|---|---|---|"]
    for p in R.peers_in("shaped"):
        m = R.med("shaped", p, "gbit_s_1")
        o.append(f"| {p} | {R.cell('shaped', p, 'gbit_s_1')} | "
                 f"{_fmt(m / sd if m and sd else None, '{:.0%}')} | "
                 f"{_fmt(R.med('shaped', p, 'machine_busy'), '{:.0%}')} | "
                 f"{_fmt(R.med('shaped', p, 'busiest_thread'), '{:.0%}')} | "
                 f"{R.cell('shaped', p, 'cpu_s_per_GB')} |")
    o += shaped_bound_lines(R)
    errs = [(t, p, R.errors(t, p)) for t in ("bulk", "conn", "memory", "shaped") for p in R.peers
            if R.errors(t, p)]
    if errs:
        o += ["", "Failed measurements (see the run log): " +
              ", ".join(f"{t}/{p} ×{n}" for t, p, n in errs) + "."]
    return o


def plots(R: Results, outdir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    made = []

    def bars(fname, title, ylabel, series, peers=None, logy=False, hline=None):
        peers = peers or R.peers
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.8 / len(series)
        for i, (label, test, metric) in enumerate(series):
            mids, lo, hi = [], [], []
            for p in peers:
                s = R.spread(test, p, metric) or (0, 0, 0)
                mids.append(s[1])
                lo.append(s[1] - s[0])
                hi.append(s[2] - s[1])
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(peers))]
            b = ax.bar(xs, mids, width, yerr=[lo, hi], capsize=3, label=label)
            for rect, p in zip(b, peers):
                if p.startswith("spiffe-tunnel"):
                    rect.set_edgecolor("black")
                    rect.set_linewidth(1.5)
        if logy:
            ax.set_yscale("log")
        if hline:
            ax.axhline(hline[0], color="red", linestyle="--", linewidth=1, label=hline[1])
            ax.legend()
        ax.set_xticks(range(len(peers)))
        ax.set_xticklabels(peers, rotation=20)
        ax.set_ylabel(ylabel)
        ax.set_title(title + " (median, bars = min–max)")
        if len(series) > 1 and not hline:
            ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(outdir / fname, dpi=110)
        plt.close(fig)
        made.append(fname)

    bars("throughput.png", "Bulk throughput", "Gbit/s",
         [("loopback 1 stream", "bulk", "gbit_s_1"), ("loopback 4 streams", "bulk", "gbit_s_4"),
          ("10 Gbit/s veth, 1 stream", "shaped", "gbit_s_1")], R.peers_in("bulk", "shaped"))
    tun = [p for p in R.peers_in("bulk") if p != "direct"]
    bars("cpu_per_gb.png", "Tunnel CPU per GB moved", "CPU s/GB",
         [("1 stream", "bulk", "cpu_s_per_GB_1"), ("4 streams", "bulk", "cpu_s_per_GB_4")], tun)
    bars("conn_per_s.png", "New connections per second", "conn/s",
         [("conn/s", "conn", "conn_per_s")], R.peers_in("conn"))
    bars("ttfb.png", "Time to first byte of a new connection", "µs",
         [("p50", "ttfb", "p50_us"), ("p99", "ttfb", "p99_us")], R.peers_in("ttfb"), logy=True)
    bars("latency.png", "1-byte round trip", "µs",
         [("p50", "latency", "p50_us"), ("p99", "latency", "p99_us")], logy=True)
    bars("memory_per_conn.png", "Memory per idle tunneled connection", "KiB",
         [("both ends", "memory", "kib_per_conn")],
         [p for p in R.peers_in("memory") if p != "direct"], logy=True,
         hline=(24, "issue #5 target: 24 KiB"))
    return made


def write(rows, meta, docs: Path) -> None:
    R = Results(rows)
    imgs = plots(R, docs / "bench")
    o = ["# Benchmarks", "",
         "Generated by `bench/run` (see [Running](#running)); the hand-written sections at the end "
         "come from `bench/notes.md`.", "",
         f"Run: {meta['date']}, {meta['reps']} repetition(s), bulk tests {meta['bulk_secs']} s, "
         f"conn/s tests {meta['conn_secs']} s with {meta['conn_workers']} workers, "
         f"{meta['pings']} pings, idle connections {meta['idle_counts']}; took "
         f"{meta['duration_min']} min. Values are median (min–max) over repetitions. "
         "Everything (load generators, app servers, both tunnel ends) shares the machine's two "
         "vCPUs; compare ratios measured in the same run rather than absolute values.", "",
         f"Load: load average {' '.join(meta.get('load_start', ['?']))} at the start and "
         f"{' '.join(meta.get('load_end', ['?']))} at the end"
         + (f"; processes other than the benchmark's used about {meta['other_cpu']:.0%} of the two "
            "vCPUs over the run (builds and a CI run share this machine)"
            if meta.get("other_cpu") is not None else "") + "."]
    for m in meta.get("merged", []):
        o.append(f"Rows merged from a later run (`--merge`): {m}.")
    o += ["", "## Summary against the targets of issue #13 (multiplexing and resumption)", "",
          "| Metric | spiffe-tunnel | best peer, best setting | ratio | target | |",
          "|---|---|---|---|---|---|"]
    o += summary_newconn(R)
    pr = R.paired("bulk", MUX, "spiffe-tunnel", "gbit_s_1")
    o += ["", "Best peer, best setting = the best median among stunnel, haproxy, nginx and socat "
          "with full handshakes and stunnel, haproxy and nginx with session resumption on "
          "(`-resume`). The throughput ratios are the median of per-repetition ratios (the "
          "multiplexed and the dedicated pair run back to back in each repetition)"
          + (f"; single stream per repetition: {pr[1]:.2f}–{pr[2]:.2f}×" if pr else "")
          + ". What bounds each figure, from the same run:", ""]
    o += newconn_bound_lines(R)
    o += ["", "## Summary against the targets of issue #5", "",
         "| Metric | spiffe-tunnel | best peer | ratio | target | |", "|---|---|---|---|---|---|"]
    o += summary(R)
    o += ["", "Best peer = best median among stunnel, haproxy, nginx and socat (TLS peers only, "
          "full handshakes: resumption off as in spiffe-tunnel's default); for the busy-polling row, also haproxy with its `busy-polling`. "
          f"Load average when the run ended: {' '.join(meta.get('load_end', []))}.",
          "", "## Machine and versions", ""]
    for k in ("machine", "os", "kernel", "spiffe-tunnel", "binary", "openssl", "stunnel", "haproxy",
              "nginx", "socat", "iperf3"):
        o.append(f"- {k}: `{meta.get(k, '?')}`")
    o += ["", "Peers:", ""]
    for p, note in meta.get("peers", {}).items():
        if note:
            o.append(f"- **{p}**: {note}")
    o += ["", "## Results", ""] + tables(R, meta) + ["", "## Plots", ""]
    for img in imgs:
        o.append(f"![{img[:-4]}](bench/{img})")
    o.append("")
    if NOTES.exists():
        o += ["", NOTES.read_text()]
    (docs / "benchmarks.md").write_text("\n".join(o) + "\n")


# Metrics of the A/B comparison (bench/run --reference): (test, metric, unit, higher is better).
AB_METRICS = [
    ("bulk", "gbit_s_1", "Gbit/s", True),
    ("bulk", "cpu_s_per_GB_1", "CPU s/GB", False),
    ("bulk", "gbit_s_4", "Gbit/s", True),
    ("conn", "conn_per_s", "conn/s", True),
    ("conn", "cpu_ms_per_conn", "CPU ms", False),
    ("latency", "p50_us", "µs", False),
    ("memory", "kib_per_conn", "KiB/conn", False),
]


def compare(rows, new: str, ref: str) -> list[str]:
    """A table of new/reference ratios with each side's median and min–max over repetitions.

    The run-to-run spread is the reference's own (max-min)/median: a ratio inside 1 ± spread is
    no measurable difference.
    """
    R = Results([{k: str(v) for k, v in r.items()} for r in rows])
    out = [f"| metric | {new} | {ref} | ratio | reference spread | verdict |",
           "|---|---|---|---|---|---|"]
    for test, metric, unit, higher in AB_METRICS:
        a, b = R.spread(test, new, metric), R.spread(test, ref, metric)
        if a is None or b is None:
            continue
        ratio = a[1] / b[1] if b[1] else float("nan")
        spread = max((b[2] - b[0]) / b[1], (a[2] - a[0]) / a[1]) if b[1] and a[1] else 0.0
        worse = ratio < 1 - spread if higher else ratio > 1 + spread
        better = ratio > 1 + spread if higher else ratio < 1 - spread
        verdict = "worse" if worse else "better" if better else "within spread"
        out.append(f"| {test} {metric} ({unit}) | {R.cell(test, new, metric)} | "
                   f"{R.cell(test, ref, metric)} | {ratio:.3f} | ±{spread:.1%} | {verdict} |")
    return out
