"""Runs spiffe-tunnel processes for the integration tests and reads their logs.

A Daemon only ever signals the PID it started. Its stderr (the log) is collected line by line so a
test can wait for "listening on", or assert that a rejection was logged with its reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from helpers import wait_for_line_in

REPO = Path(__file__).resolve().parents[2]


def binary() -> Path:
    """The spiffe-tunnel binary under test: $SPIFFE_TUNNEL_BIN or the release build."""
    env = os.environ.get("SPIFFE_TUNNEL_BIN")
    path = Path(env) if env else REPO / "build" / "release" / "spiffe-tunnel"
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: build first (cmake --preset release && "
                           f"cmake --build --preset release)")
    return path


_ubsan_vptr: Optional[bool] = None


def has_ubsan_vptr_check() -> bool:
    """Whether the binary under test carries UBSan's vptr check (a sanitizer build)."""
    global _ubsan_vptr
    if _ubsan_vptr is None:
        _ubsan_vptr = b"__ubsan_handle_dynamic_type_cache_miss" in binary().read_bytes()
    return _ubsan_vptr


class Daemon:
    def __init__(self, args: Sequence[str], env: Optional[dict] = None, name: str = "daemon",
                 wrapper: Sequence[str] = ()):
        # `wrapper`: a command that execs the daemon (e.g. systemd-socket-activate ... --).
        self.args = [str(w) for w in wrapper] + [str(binary())] + [str(a) for a in args]
        self.name = name
        self.lines: list[str] = []
        self._cv = threading.Condition()
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=full_env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cv:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def log(self) -> str:
        with self._cv:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match:
        """Waits for a log line (index >= start) matching the regex; returns the match."""

        def finished() -> bool:
            return self.proc.poll() is not None and not self._reader.is_alive()

        def fail(reason: str, pattern: str) -> AssertionError:
            # Called holding self._cv: read the lines directly (self.log would take it again).
            log = "\n".join(self.lines)
            if reason == "exited":
                return AssertionError(f"{self.name} exited rc={self.proc.returncode} before "
                                      f"/{pattern}/:\n{log}")
            return AssertionError(f"{self.name}: no /{pattern}/ within {timeout}s:\n{log}")

        return wait_for_line_in(self.lines, self._cv, pattern, timeout, start, finished, fail,
                                poll=0.2)

    def wait_listening(self, timeout: float = 15.0) -> int:
        """Waits for the first tunnel's listener and returns its port."""
        return int(self.wait_for(r"listening on [^ ]+:(\d+)", timeout).group(1))

    def mark(self) -> int:
        """Index of the next log line: pass it as wait_for(start=...) / count(start=...)."""
        with self._cv:
            return len(self.lines)

    def count(self, pattern: str, start: int = 0) -> int:
        """How many log lines from index `start` on match the regex."""
        rx = re.compile(pattern)
        with self._cv:
            return sum(1 for line in self.lines[start:] if rx.search(line))

    def tail(self, lines: int = 60) -> str:
        with self._cv:
            return "\n".join(self.lines[-lines:])

    def wait_tunnel_port(self, tunnel: str, timeout: float = 15.0) -> int:
        """Port of the named tunnel's listener (for `run -c` daemons with several tunnels)."""
        rx = rf"tunnel={re.escape(tunnel)} mode=\S+ listening on [^ ]+:(\d+)"
        return int(self.wait_for(rx, timeout).group(1))

    def wait_exit(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def run_once(args: Sequence[str], timeout: float = 15.0) -> subprocess.CompletedProcess:
    """Runs spiffe-tunnel to completion (for commands that should exit, e.g. on bad input)."""
    return subprocess.run([str(binary())] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


class Backend:
    """A plain TCP service behind a server tunnel: echoes, or answers after the client's EOF.

    mode "echo": every byte comes back; FIN is answered with FIN.
    mode "digest": reads until EOF, then replies "<sha256 hex> <byte count>" and closes
    (proves that a client's half-close travelled through both tunnels).
    mode "greet": sends a greeting line at once and closes.
    Counts connections and bytes so a test can assert a refused peer never reached it.
    """

    def __init__(self, mode: str = "echo", unix_path: Optional[str] = None):
        # unix_path: listen on a unix stream socket there instead of a TCP port (port is None).
        self.mode = mode
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.port = None
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        self.sock.listen(128)
        self.connections = 0
        self.bytes_received = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        digest = hashlib.sha256()
        total = 0
        try:
            if self.mode == "greet":
                conn.sendall(b"hello from the backend\n")
                conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                total += len(data)
                with self._lock:
                    self.bytes_received += len(data)
                if self.mode == "echo":
                    conn.sendall(data)
                else:
                    digest.update(data)
            if self.mode == "digest":
                conn.sendall(f"{digest.hexdigest()} {total}".encode())
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def exchange(port, payload: bytes, timeout: float = 30.0) -> bytes:
    """Connects, sends payload, half-closes, returns everything received until EOF. `port` is a
    TCP port on 127.0.0.1, or a unix socket path (str)."""
    if isinstance(port, str):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        conn.connect(port)
    else:
        conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with conn as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


# --------------------------------------------------------------------------- log and stream helpers
# (used by test_workload_api.py; generic enough for any daemon test)

class DaemonSet:
    """Daemons started for one test (fixture `tunnel_daemons`) or one module; stop_all() stops
    each by its PID. report_sections() gives their log tails for a failing test's report."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []

    def start(self, args: Sequence[str], env: Optional[dict] = None, name: str = "daemon") -> Daemon:
        d = Daemon(args, env=env, name=name)
        self.daemons.append(d)
        return d

    def stop_all(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()

    def report_sections(self) -> list[tuple[str, str]]:
        return [(f"spiffe-tunnel {d.name} (pid {d.proc.pid}, rc={d.proc.poll()})", d.tail(40))
                for d in self.daemons]


class EchoStream:
    """A long transfer through an echo path: a sender thread writes `chunk`-sized random blocks
    every `interval` seconds until finish(); a reader thread hashes what comes back.

        s = EchoStream(port); ...; sent, sent_sha, got, got_sha = s.finish()
    finish() half-closes, waits for EOF and returns byte counts and SHA-256 hex digests of both
    directions, so a test can assert that nothing was lost, duplicated or reordered.
    """

    def __init__(self, port: int, chunk: int = 64 << 10, interval: float = 0.05,
                 timeout: float = 60.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.chunk, self.interval = chunk, interval
        self.sent = self.received = 0
        self._sent_sha, self._recv_sha = hashlib.sha256(), hashlib.sha256()
        self._stop = threading.Event()
        self.error: Optional[BaseException] = None
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sender.start()

    def _send(self) -> None:
        block = os.urandom(self.chunk * 4)
        i = 0
        try:
            while not self._stop.is_set():
                off = (i % 4) * self.chunk
                data = block[off:off + self.chunk] + i.to_bytes(8, "big")  # no two chunks alike
                self.sock.sendall(data)
                self._sent_sha.update(data)
                self.sent += len(data)
                i += 1
                self._stop.wait(self.interval)
        except OSError as exc:
            self.error = exc

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                self._recv_sha.update(data)
                self.received += len(data)
        except OSError as exc:
            self.error = self.error or exc

    def finish(self, timeout: float = 60.0) -> tuple[int, str, int, str]:
        self._stop.set()
        self._sender.join(timeout)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.error = self.error or exc
        self._reader.join(timeout)
        alive = self._reader.is_alive()
        self.sock.close()
        if alive:
            raise AssertionError(f"no EOF within {timeout}s after sending {self.sent} bytes "
                                 f"(received {self.received})")
        return self.sent, self._sent_sha.hexdigest(), self.received, self._recv_sha.hexdigest()


def echo_roundtrip(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Like exchange(), but sends from a thread, so large payloads through an echo path cannot
    deadlock on full socket buffers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send, daemon=True)
        t.start()
        chunks = []
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
        t.join(timeout)
        return b"".join(chunks)
