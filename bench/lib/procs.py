"""Processes and network namespaces the benchmark starts, and their cleanup.

Everything started goes through `Registry`, which remembers PIDs and namespace names and removes
them on `cleanup()` (called from try/finally, atexit and SIGTERM/SIGINT). Only those PIDs (and
their own descendants) are signalled; nothing is killed by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional


def children_of(pid: int) -> list[int]:
    """All live descendants of pid (from /proc/*/stat parent links)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of each process and its descendants, plus reaped children (cutime+cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for top in pids:
        for pid in [top] + children_of(top):
            fields = _stat_fields(f"/proc/{pid}/stat")
            if fields:
                # fields[11..14] = utime stime cutime cstime (stat fields 14..17)
                total += sum(int(x) for x in fields[11:15])
    return total / tick


def _stat_fields(path: str) -> list[str]:
    """The fields of a /proc stat file after the command name, or [] if it is gone."""
    try:
        with open(path) as f:
            stat = f.read()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2:].split()


def thread_seconds(pids: list[int]) -> dict[int, float]:
    """utime+stime of every thread of the processes and their descendants, by thread ID."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for top in pids:
        for pid in [top] + children_of(top):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
                if fields:
                    out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def busiest_thread(before: dict[int, float], after: dict[int, float], secs: float) -> float:
    """The largest share of one CPU any single thread used between two thread_seconds() calls."""
    used = [after[t] - before.get(t, 0.0) for t in after]
    return max(used, default=0.0) / secs if secs > 0 else 0.0


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over the processes and their descendants."""
    rss = pss = 0
    for top in pids:
        for pid in [top] + children_of(top):
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1])
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1])
            except OSError:
                continue
    return rss, pss


def process_count(pids: list[int]) -> int:
    return sum(1 + len(children_of(p)) for p in pids)


class Registry:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: dict[int, subprocess.Popen] = {}
        self.namespaces: list[str] = []
        self.links: list[str] = []

    def start(self, name: str, argv: list[str], netns: Optional[str] = None,
              env: Optional[dict] = None, stdin=subprocess.DEVNULL,
              stdout=None) -> subprocess.Popen:
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv  # ip execs argv: same PID
        log = open(self.logdir / f"{name}.log", "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout if stdout is not None else log,
                             stderr=log, env=full_env, start_new_session=True)
        log.close()
        self.procs[p.pid] = p
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> None:
        """SIGTERM the process (and its descendants, e.g. socat's forks) by PID, then SIGKILL."""
        victims = [p.pid] + children_of(p.pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.time() + timeout
        for pid in victims + children_of(p.pid):
            while time.time() < deadline and os.path.exists(f"/proc/{pid}") and \
                    _state(pid) not in ("Z", "X", None):
                time.sleep(0.05)
            if _state(pid) not in ("Z", "X", None):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.procs.pop(p.pid, None)

    def add_namespace(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.namespaces.append(name)

    def cleanup(self) -> None:
        for p in list(self.procs.values()):
            try:
                self.stop(p, timeout=2.0)
            except Exception:  # noqa: BLE001 - best effort during teardown
                pass
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.namespaces.clear()


def _state(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2]
    except OSError:
        return None
