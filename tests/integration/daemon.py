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

REPO = Path(__file__).resolve().parents[2]


def binary() -> Path:
    """The spiffe-tunnel binary under test: $SPIFFE_TUNNEL_BIN or the release build."""
    env = os.environ.get("SPIFFE_TUNNEL_BIN")
    path = Path(env) if env else REPO / "build" / "release" / "spiffe-tunnel"
    if not path.exists():
        raise RuntimeError(f"{path} does not exist: build first (cmake --preset release && "
                           f"cmake --build --preset release)")
    return path


class Daemon:
    def __init__(self, args: Sequence[str], env: Optional[dict] = None, name: str = "daemon"):
        self.args = [str(binary())] + [str(a) for a in args]
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
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        idx = start
        with self._cv:
            while True:
                while idx < len(self.lines):
                    m = rx.search(self.lines[idx])
                    idx += 1
                    if m:
                        return m
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"{self.name} exited rc={self.proc.returncode} before "
                                         f"/{pattern}/:\n{self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no /{pattern}/ within {timeout}s:\n{self.log}")
                self._cv.wait(min(left, 0.2))

    def wait_listening(self, timeout: float = 15.0) -> int:
        """Waits for the first tunnel's listener and returns its port."""
        return int(self.wait_for(r"listening on [^ ]+:(\d+)", timeout).group(1))

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

    def __init__(self, mode: str = "echo"):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
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


def exchange(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Connects, sends payload, half-closes, returns everything received until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
