"""Runs inside a User-Mode Linux guest (see test_ktls_uml.py): a client and a server tunnel with a
backend on the guest's loopback, for one TLS configuration per case. Prints one JSON object per
case on stdout; the host-side test asserts on them.

Usage: python3 ktls_scenario.py CASE [CASE...]   where CASE is a name from CASES or a special
scenario: halfclose, reset, s_server_nst_keyupdate, ktls_on_without_module, idle_memory,
aead_limit, resumption.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import Backend, Daemon, exchange  # noqa: E402
from pki import CA  # noqa: E402

MIB = 1 << 20
STARTED: list = []  # daemons of the running case, for the error report
SIZE = int(os.environ.get("KTLS_SCENARIO_MIB", "64")) * MIB

CASES = {
    "tls13-aes128gcm": ["--cipher-suites", "TLS_AES_128_GCM_SHA256"],
    "tls13-aes256gcm": ["--cipher-suites", "TLS_AES_256_GCM_SHA384"],
    "tls13-chacha20": ["--cipher-suites", "TLS_CHACHA20_POLY1305_SHA256"],
    "tls12-aes128gcm": ["--tls-min-version", "1.2", "--tls-max-version", "1.2",
                        "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    "ktls-off": ["--cipher-suites", "TLS_AES_128_GCM_SHA256", "--ktls", "off"],
}


def tls_stat() -> dict:
    try:
        text = Path("/proc/net/tls_stat").read_text()
    except FileNotFoundError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


class Site:
    def __init__(self, root: Path):
        self.root = root
        self.ca_a, self.ca_b = CA("a.test"), CA("b.test")
        self.a_bundle = self.ca_a.write_bundle(root / "a.pem")
        self.b_bundle = self.ca_b.write_bundle(root / "b.pem")
        self.client = self.ca_a.issue("spiffe://a.test/client").write(root, "client")
        self.server = self.ca_b.issue("spiffe://b.test/server").write(root, "server")

    def bundles(self):
        return ["--bundle", f"a.test={self.a_bundle}", "--bundle", f"b.test={self.b_bundle}"]

    def server_tunnel(self, target_port, extra):
        d = Daemon(["--threads", "1", "server", "--listen", "127.0.0.1:0",
                    "--target", f"127.0.0.1:{target_port}", "--cert", self.server[0],
                    "--key", self.server[1], *self.bundles(),
                    "--allow-id", "spiffe://a.test/client", *extra], name="server")
        STARTED.append(d)
        return d, d.wait_listening()

    def client_tunnel(self, target_port, extra, expect="spiffe://b.test/server"):
        d = Daemon(["--threads", "1", "client", "--listen", "127.0.0.1:0",
                    "--target", f"127.0.0.1:{target_port}", "--cert", self.client[0],
                    "--key", self.client[1], *self.bundles(), "--expect-id", expect, *extra],
                   name="client")
        STARTED.append(d)
        return d, d.wait_listening()


def bulk(port: int, size: int) -> dict:
    block = os.urandom(MIB)
    want = hashlib.sha256()
    for _ in range(size // MIB):
        want.update(block)
    got = hashlib.sha256()
    n = 0
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        def send():
            for _ in range(size // MIB):
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        while True:
            data = s.recv(MIB)
            if not data:
                break
            got.update(data)
            n += len(data)
        t.join()
    return {"bytes_back": n, "intact": n == size and got.hexdigest() == want.hexdigest(),
            "seconds": round(time.monotonic() - start, 2)}


def paths(d: Daemon) -> list:
    return re.findall(r"tls tx=(\w+) rx=(\w+)", d.log)


def run_bulk_case(site: Site, name: str) -> dict:
    backend = Backend("echo")
    extra = CASES[name]
    server, sport = site.server_tunnel(backend.port, extra)
    client, cport = site.client_tunnel(sport, extra)
    before = tls_stat()
    result = bulk(cport, SIZE)
    after = tls_stat()
    server.wait_for(r" closed peer=", timeout=30)
    client.wait_for(r" closed peer=", timeout=30)
    client.stop(), server.stop(), backend.close()
    return {"case": name, **result,
            "tls_stat_delta": {k: after.get(k, 0) - before.get(k, 0) for k in after},
            "server_tls": paths(server), "client_tls": paths(client),
            "server_closed": re.findall(r" closed .* path=(\S+) \((.*)\)", server.log),
            "client_closed": re.findall(r" closed .* path=(\S+) \((.*)\)", client.log),
            "backend_bytes": backend.bytes_received}


def run_halfclose(site: Site) -> dict:
    backend = Backend("digest")
    server, sport = site.server_tunnel(backend.port, [])
    client, cport = site.client_tunnel(sport, [])
    payload = os.urandom(3 * MIB + 17)
    reply = exchange(cport, payload).decode()
    server.wait_for(r" closed peer=", timeout=30)
    client.stop(), server.stop(), backend.close()
    return {"case": "halfclose",
            "ok": reply == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}",
            "server_tls": paths(server), "client_tls": paths(client)}


def run_reset(site: Site, extra: list, name: str) -> dict:
    backend = Backend("echo")
    server, sport = site.server_tunnel(backend.port, extra)
    client, cport = site.client_tunnel(sport, extra)
    s = socket.create_connection(("127.0.0.1", cport), timeout=30)
    s.sendall(b"x" * 100000)
    got = 0
    while got < 100000:
        got += len(s.recv(65536))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # RST
    client_line = client.wait_for(r" closed peer=.*\((.*)\)", timeout=30).group(1)
    server_line = server.wait_for(r" closed peer=.*\((.*)\)", timeout=30).group(1)
    # The tunnels keep serving after a reset.
    after = exchange(cport, b"still alive")
    client.stop(), server.stop(), backend.close()
    return {"case": name, "client_reason": client_line, "server_reason": server_line,
            "still_alive": after == b"still alive", "server_tls": paths(server),
            "server_opened": re.findall(r" opened .*", server.log)}


def run_s_server(site: Site, root: Path) -> dict:
    """openssl s_server (kTLS on, session tickets on) behind our client tunnel: its
    NewSessionTickets must be dropped, its KeyUpdate must close the session cleanly."""
    conf = root / "ktls.cnf"
    conf.write_text("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = sd\n"
                    "[sd]\nOptions = KTLS\n")
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    ls.close()
    env = dict(os.environ, OPENSSL_CONF=str(conf))
    srv = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1", "-tls1_3",
         "-cert", str(site.server[0]), "-key", str(site.server[1]),
         "-CAfile", str(site.a_bundle), "-Verify", "2", "-num_tickets", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = {"case": "s_server_nst_keyupdate"}
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    # That probe used up -naccept 1; start the real one.
    srv.kill()
    srv.wait()
    srv = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1", "-tls1_3",
         "-cert", str(site.server[0]), "-key", str(site.server[1]),
         "-CAfile", str(site.a_bundle), "-Verify", "2", "-num_tickets", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    time.sleep(1.0)
    client, cport = site.client_tunnel(port, [])
    s = socket.create_connection(("127.0.0.1", cport), timeout=20)
    s.sendall(b"ping from the app\n")
    client.wait_for(r" opened peer=", timeout=20)
    time.sleep(0.5)
    srv.stdin.write("hello from s_server\n")
    srv.stdin.flush()
    data = b""
    deadline = time.monotonic() + 20
    while b"hello from s_server" not in data and time.monotonic() < deadline:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    out["data_after_tickets"] = b"hello from s_server\n" in data
    srv.stdin.write("k\n")  # s_server command: send a KeyUpdate
    srv.stdin.flush()
    reason = client.wait_for(r" closed peer=.*\((.*)\)", timeout=20).group(1)
    out["close_reason"] = reason
    try:
        rest = s.recv(4096)
        out["app_after_keyupdate"] = rest.decode(errors="replace")
    except OSError as e:
        out["app_after_keyupdate"] = f"error {e.errno}"
    s.close()
    srv.kill()
    out["s_server_output"] = srv.communicate()[0][-2000:]
    out["client_tls"] = paths(client)
    client.stop()
    return out


def transfer(port: int, size: int) -> dict:
    """Like bulk(), but a transfer the tunnel cuts is a result, not an error."""
    block = os.urandom(MIB)
    n, got = 0, hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        def send():
            try:
                for _ in range(size // MIB):
                    s.sendall(block)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        t = threading.Thread(target=send)
        t.start()
        try:
            while data := s.recv(MIB):
                got.update(data)
                n += len(data)
        except OSError:
            pass
        t.join()
    want = hashlib.sha256(block * (size // MIB)).hexdigest()
    return {"bytes_back": n, "intact": n == size and got.hexdigest() == want}


AEAD_LIMIT = 128  # records per key: 2 MiB of full records


def run_aead_limit(site: Site) -> dict:
    """Kernel TLS cannot re-key on this kernel: an AES-GCM session (TLS 1.3, and TLS 1.2, which
    has no KeyUpdate at all) ends with reason aead_limit near key_update_records, while a sibling pair with the default limit (at the same time) and
    a ChaCha20-Poly1305 pair with the same low limit carry all their bytes."""
    low = ["--cipher-suites", "TLS_AES_128_GCM_SHA256", "--key-update-records", str(AEAD_LIMIT)]
    chacha = ["--cipher-suites", "TLS_CHACHA20_POLY1305_SHA256",
              "--key-update-records", str(AEAD_LIMIT)]
    tls12 = [*CASES["tls12-aes128gcm"], "--key-update-records", str(AEAD_LIMIT)]
    size = 8 * MIB  # 512 full records each way
    pairs = {}
    for name, extra in (("limited", low), ("sibling", []), ("chacha", chacha),
                        ("tls12", tls12)):
        backend = Backend("echo")
        server, sport = site.server_tunnel(backend.port, extra)
        client, cport = site.client_tunnel(sport, extra)
        pairs[name] = (server, client, cport, backend)
    results: dict = {}
    threads = [threading.Thread(target=lambda n=n: results.update({n: transfer(pairs[n][2], size)}))
               for n in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: dict = {"case": "aead_limit", "limit": AEAD_LIMIT, "size": size}
    for name, (server, client, _, backend) in pairs.items():
        for end, d in (("server", server), ("client", client)):
            d.wait_for(r" closed peer=", timeout=30)
            out[f"{name}_{end}_closed"] = re.findall(
                r" closed .*bytes_from_peer=(\d+) bytes_to_peer=(\d+) .* path=(\S+)", d.log)
            out[f"{name}_{end}_ending"] = re.findall(r" ending reason=(\w+): (.*)", d.log)
            out[f"{name}_{end}_tls"] = paths(d)
        out[name] = results.get(name)
        client.stop(), server.stop(), backend.close()
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


IDLE_CONNECTIONS = 300


def idle_memory(site: Site, extra: list) -> dict:
    """RSS of both tunnel ends with IDLE_CONNECTIONS idle established tunneled connections."""
    # Each connection holds two sockets and, on the splice path, two pipes (four descriptors) in
    # each tunnel end, and two sockets here; the daemons inherit the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8 * IDLE_CONNECTIONS + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    backend = Backend("echo")
    server, sport = site.server_tunnel(backend.port, extra)
    client, cport = site.client_tunnel(sport, extra)
    pids = (server.proc.pid, client.proc.pid)

    def open_one() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", cport), timeout=60)
        s.sendall(b"x")
        assert s.recv(1) == b"x", "no echo through the tunnel pair"
        return s

    held = [open_one()]  # the first one warms up allocator arenas and the thread's buffers
    time.sleep(0.3)
    before = sum(rss_kib(p) for p in pids)
    held += [open_one() for _ in range(IDLE_CONNECTIONS)]
    time.sleep(0.5)
    after = sum(rss_kib(p) for p in pids)
    for s in held:
        s.close()
    client.stop(), server.stop(), backend.close()
    # The data path of every session, per end: {"ktls/ktls": 301} when the kernel took them all.
    sessions = {}
    for end, d in (("server", server), ("client", client)):
        counts: dict = {}
        for tx, rx in paths(d):
            counts[f"{tx}/{rx}"] = counts.get(f"{tx}/{rx}", 0) + 1
        sessions[end] = counts
    return {"kib_per_conn": round((after - before) / IDLE_CONNECTIONS, 1),
            "rss_kib": [before, after], "sessions": sessions}


def run_idle_memory(site: Site) -> dict:
    # TLS 1.3 with both directions in the kernel, beside the userspace record layer (--ktls off).
    ktls = idle_memory(site, [])
    user = idle_memory(site, ["--ktls", "off"])
    return {"case": "idle_memory", "connections": IDLE_CONNECTIONS, "ktls": ktls,
            "userspace": user}


def run_resumption(site: Site) -> dict:
    """Both ends with --session-resumption and ktls auto: the first connection (full handshake;
    the client waits for the server's NewSessionTicket before the kernel takes the receive
    direction) and the second (resumed) both run on kTLS both ways; 8 MiB each way per
    connection."""
    backend = Backend("echo")
    cipher = ["--cipher-suites", "TLS_AES_128_GCM_SHA256"]
    extra = ["--session-resumption", *cipher]
    server, sport = site.server_tunnel(backend.port, extra)
    client, cport = site.client_tunnel(sport, extra)
    before = tls_stat()
    conns = []
    for _ in range(2):
        marks = [d.mark() for d in (server, client)]
        conns.append(bulk(cport, 8 * MIB))
        for d, mark in zip((server, client), marks):
            d.wait_for(r" closed peer=", timeout=30, start=mark)
    after = tls_stat()
    client.stop(), server.stop(), backend.close()

    def resumed(d: Daemon) -> list:
        return re.findall(r" opened .*resumed=(\w+)", d.log)

    # A server that sends no ticket: the client's wait for one is bounded, kTLS still takes over.
    backend2 = Backend("echo")
    server2, sport2 = site.server_tunnel(backend2.port, cipher)
    client2, cport2 = site.client_tunnel(sport2, extra)
    t0 = time.monotonic()
    first_byte = exchange(cport2, b"x")
    no_ticket = {"first_byte_s": round(time.monotonic() - t0, 3), "echo": first_byte == b"x",
                 **bulk(cport2, 8 * MIB)}
    t0 = time.monotonic()  # a server that sent no ticket is not waited for again soon
    no_ticket["again_first_byte_s"] = round(time.monotonic() - t0, 3) if \
        exchange(cport2, b"y") == b"y" else None
    deadline = time.monotonic() + 30  # the three sessions closed
    while any(d.count(r" closed peer=") < 3 for d in (server2, client2)) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    client2.stop(), server2.stop(), backend2.close()
    no_ticket["client_tls"] = paths(client2)
    return {"case": "resumption", "conns": conns, "no_ticket": no_ticket,
            "tls_stat_delta": {k: after.get(k, 0) - before.get(k, 0) for k in after},
            "server_resumed": resumed(server), "client_resumed": resumed(client),
            "server_tls": paths(server), "client_tls": paths(client),
            "server_closed": re.findall(r" closed .* path=(\S+) \((.*)\)", server.log),
            "client_closed": re.findall(r" closed .* path=(\S+) \((.*)\)", client.log),
            "backend_bytes": backend.bytes_received}


def run_ktls_on(site: Site) -> dict:
    d = Daemon(["server", "--listen", "127.0.0.1:0", "--target", "127.0.0.1:1",
                "--cert", site.server[0], "--key", site.server[1], *site.bundles(),
                "--allow-id", "spiffe://a.test/client", "--ktls", "on"], name="server")
    rc = d.wait_exit(timeout=30)
    return {"case": "ktls_on_without_module", "rc": rc, "log": d.log}


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="ktls-"))
    site = Site(root)
    for case in sys.argv[1:]:
        try:
            if case in CASES:
                r = run_bulk_case(site, case)
            elif case == "halfclose":
                r = run_halfclose(site)
            elif case == "reset":
                r = run_reset(site, [], "reset")
            elif case == "reset-userspace":
                r = run_reset(site, ["--ktls", "off"], "reset-userspace")
            elif case == "s_server_nst_keyupdate":
                r = run_s_server(site, root)
            elif case == "ktls_on_without_module":
                r = run_ktls_on(site)
            elif case == "idle_memory":
                r = run_idle_memory(site)
            elif case == "aead_limit":
                r = run_aead_limit(site)
            elif case == "resumption":
                r = run_resumption(site)
            else:
                r = {"case": case, "error": "unknown case"}
        except Exception as e:  # reported to the host-side test, which fails on it
            r = {"case": case, "error": f"{type(e).__name__}: {e}",
                 "logs": {d.name: d.log[-3000:] for d in STARTED}}
            for d in STARTED:
                d.stop()
        STARTED.clear()
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
