"""Generic helpers for the integration tests: ports, polling, temp dirs, child processes.

Nothing here knows about SPIRE or the daemon; spire.py and conftest.py build on it.
No pytest dependency, so the module can also be used from a plain Python shell.

Process rule: a ManagedProcess only ever signals the PID it started itself (never a process
group, never by name). Every ManagedProcess that is still running at interpreter exit is
terminated by an atexit hook, so a crashed test session does not leak daemons.
"""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence, TypeVar, Union

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]

# Unix socket paths must fit into sockaddr_un.sun_path (108 bytes including the NUL).
SUN_PATH_MAX = 107


class HarnessError(RuntimeError):
    """A harness step failed; the message carries the relevant log tail."""


class StopWaiting(HarnessError):
    """Raised by a wait_for() predicate to give up at once (e.g. the process died)."""


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()
_port_lock = threading.Lock()
# Below Linux' default ephemeral range (32768-60999), so outgoing connections of other
# processes never grab a port between free_port() and the moment the test binds it.
_PORT_RANGE = (20000, 32000)


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and was not returned before by this process."""
    with _port_lock:
        for _ in range(500):
            port = random.randrange(*_PORT_RANGE)
            if port not in _handed_out and _bindable(port, host):
                _handed_out.add(port)
                return port
    raise HarnessError("no free TCP port found")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- polling

def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.2,
             desc: str = "condition", on_timeout: Optional[Callable[[], str]] = None) -> T:
    """Call predicate until it returns something truthy and return that value.

    Exceptions raised by the predicate count as "not yet" (the last one is reported if the
    timeout expires), except StopWaiting, which propagates at once.
    on_timeout() may return extra text (e.g. a log tail) for the error.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StopWaiting:
            raise
        except Exception as exc:  # noqa: BLE001 - the predicate decides what failure means
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.1f}s waiting for {desc}"
            if last_exc is not None:
                msg += f"; last error: {last_exc!r}"
            if on_timeout is not None:
                msg += "\n" + on_timeout()
            raise TimeoutError(msg)
        time.sleep(interval)


def wait_for_line_in(lines: list[str], cv: threading.Condition,
                     pattern: Union[str, "re.Pattern[str]"], timeout: float, start: int,
                     finished: Callable[[], bool], fail: Callable[[str, str], Exception],
                     poll: float = 0.5) -> "re.Match[str]":
    """Wait until a line of `lines` (index >= start) matches the regex; return the match.

    A reader thread appends to `lines` and notifies `cv`. `finished()` (called holding `cv`) says
    that no more lines can come, e.g. the process exited and its output was read to the end;
    then, or when `timeout` expires, the exception `fail(reason, pattern)` is raised, reason
    being "exited" or "timeout".
    """
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline = time.monotonic() + timeout
    idx = start
    with cv:
        while True:
            while idx < len(lines):
                m = rx.search(lines[idx])
                idx += 1
                if m:
                    return m
            if finished():
                raise fail("exited", rx.pattern)
            left = deadline - time.monotonic()
            if left <= 0:
                raise fail("timeout", rx.pattern)
            cv.wait(min(left, poll))


# --------------------------------------------------------------------------- files and dirs

def short_tmpdir(prefix: str = "st-") -> Path:
    """A fresh directory directly under /tmp, short enough for unix socket paths.

    It is world-traversable (0755) so workloads started under another uid can reach agent
    sockets and binaries below it. The caller removes it (see remove_tree).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def check_socket_path(path: PathLike) -> str:
    p = os.fspath(path)
    if len(p.encode()) > SUN_PATH_MAX:
        raise HarnessError(f"unix socket path too long ({len(p)} > {SUN_PATH_MAX}): {p}")
    return p


def remove_tree(path: PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def log_tail(path: PathLike, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return f"--- last {len(tail)} lines of {path} ---\n" + "\n".join(tail)


def world_executable(path: PathLike, fallback_dir: PathLike) -> Path:
    """Path of a copy of the executable `path` that any uid can run.

    If every ancestor directory is o+x and the file is o+rx, `path` itself is returned;
    otherwise (e.g. under /root, mode 0700) it is copied into fallback_dir with mode 0755.
    """
    p = Path(path).resolve()
    ok = p.stat().st_mode & (stat.S_IROTH | stat.S_IXOTH) == (stat.S_IROTH | stat.S_IXOTH)
    for parent in p.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            ok = False
            break
    if ok:
        return p
    dest_dir = Path(fallback_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest_dir.chmod(0o755)
    dest = dest_dir / p.name
    if not dest.exists() or dest.stat().st_size != p.stat().st_size \
            or dest.stat().st_mtime < p.stat().st_mtime:
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.copy2(p, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- users

def as_uid(uid: Optional[int], gid: Optional[int] = None) -> list[str]:
    """Command prefix that runs a program under another uid/gid (empty for None).

    Uses setpriv from util-linux: all supplementary groups are dropped, so unix:uid / unix:gid
    selectors of the SPIRE unix workload attestor see exactly uid/gid. Needs root.
    """
    if uid is None:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise HarnessError("setpriv (util-linux) is required to run a workload as another uid")
    if os.geteuid() != 0 and uid != os.geteuid():
        raise HarnessError(f"running a workload as uid {uid} needs root (we are uid {os.geteuid()})")
    g = uid if gid is None else gid
    return [setpriv, f"--reuid={uid}", f"--regid={g}", "--clear-groups", "--"]


def can_switch_uid() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


# --------------------------------------------------------------------------- commands

def run(cmd: Sequence[PathLike], *, timeout: float = 30.0, check: bool = True,
        env: Optional[Mapping[str, str]] = None, input: Optional[str] = None,
        context: str = "") -> subprocess.CompletedProcess:
    """Run a short command, capture text output; on failure raise HarnessError with both streams."""
    args = [os.fspath(c) for c in cmd]
    try:
        cp = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                            env=None if env is None else dict(env), input=input)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout}s: {' '.join(args)}\n"
                           f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}\n{context}") from None
    if check and cp.returncode != 0:
        raise HarnessError(f"command failed (exit {cp.returncode}): {' '.join(args)}\n"
                           f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}\n{context}")
    return cp


# --------------------------------------------------------------------------- long-running processes

_live: "set[ManagedProcess]" = set()
_live_lock = threading.Lock()


class ManagedProcess:
    """A child process that this test session started, with its output in a log file.

    stdout lines are also kept in memory (capture_stdout=True) so tests can wait for
    readiness lines such as "listening 127.0.0.1:1234" via wait_for_line().
    stderr goes to the log file (and stdout too, prefixed, when it is captured).
    """

    def __init__(self, cmd: Sequence[PathLike], log_path: PathLike, *, name: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[PathLike] = None,
                 capture_stdout: bool = False):
        self.cmd = [os.fspath(c) for c in cmd]
        self.log_path = Path(log_path)
        self.name = name or Path(self.cmd[0]).name
        self.env = None if env is None else dict(env)
        self.cwd = cwd
        self.capture_stdout = capture_stdout
        self.proc: Optional[subprocess.Popen] = None
        self.lines: list[str] = []
        self._lines_cv = threading.Condition()
        self._reader: Optional[threading.Thread] = None
        self.started_at: Optional[float] = None

    # -- lifecycle
    def start(self) -> "ManagedProcess":
        if self.running:
            raise HarnessError(f"{self.name} already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab", buffering=0)
        log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(self.cmd)}\n".encode())
        self.lines = []
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.capture_stdout else log, stderr=log,
            env=self.env, cwd=self.cwd, start_new_session=True)
        self.started_at = time.monotonic()
        with _live_lock:
            _live.add(self)
        if self.capture_stdout:
            self._reader = threading.Thread(target=self._read_stdout, args=(self.proc, log),
                                            daemon=True, name=f"stdout-{self.name}")
            self._reader.start()
        else:
            log.close()
        return self

    def _read_stdout(self, proc: subprocess.Popen, log) -> None:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(f"[stdout] {line}\n".encode())
                with self._lines_cv:
                    self.lines.append(line)
                    self._lines_cv.notify_all()
        finally:
            log.close()
            with self._lines_cv:
                self._lines_cv.notify_all()

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def send_signal(self, sig: int) -> None:
        if self.running:
            os.kill(self.proc.pid, sig)  # type: ignore[union-attr]

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> Optional[int]:
        """Send sig to our PID, wait, then SIGKILL. Returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._reader is not None:
            self._reader.join(timeout=5)
        with _live_lock:
            _live.discard(self)
        return self.proc.returncode

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} did not exit within {timeout}s\n{self.tail()}") from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        with _live_lock:
            _live.discard(self)
        return rc

    # -- output
    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def wait_for_line(self, pattern: Union[str, "re.Pattern[str]"], timeout: float = 30.0,
                      start: int = 0) -> "re.Match[str]":
        """Wait for a stdout line (index >= start) matching the regex; return the match.

        Fails early, with the log tail, if the process exits first.
        """
        if not self.capture_stdout:
            raise HarnessError(f"{self.name}: stdout is not captured")

        def finished() -> bool:
            return not self.running and (self._reader is None or not self._reader.is_alive())

        def fail(reason: str, pattern: str) -> HarnessError:
            if reason == "exited":
                return HarnessError(f"{self.name} exited (rc={self.returncode}) before printing "
                                    f"/{pattern}/\n{self.tail()}")
            return HarnessError(f"{self.name}: no line matching /{pattern}/ within "
                                f"{timeout}s\n{self.tail()}")

        return wait_for_line_in(self.lines, self._lines_cv, pattern, timeout, start, finished, fail)

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.running}>"

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all(processes: Iterable[ManagedProcess], timeout: float = 10.0) -> None:
    for p in list(processes):
        try:
            p.stop(timeout=timeout)
        except Exception:  # noqa: BLE001 - best-effort teardown
            pass


@atexit.register
def _stop_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    stop_all(leftovers, timeout=5)
