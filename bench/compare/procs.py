"""Processes of a benchmark run: free ports, servers in their own process group (stopped on exit whatever
happens), the resident memory and CPU time of a process tree."""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on both loopback addresses (Coffer listens on 127.0.0.1 and ::1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


class Server:
    """A server process started in a new session (its own process group), output to a log file."""

    _running: list[Server] = []

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        Server._running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to the process group, SIGKILL after `timeout` seconds."""
        if self in Server._running:
            Server._running.remove(self)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # helpers of the server (worker processes) that outlived it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()

    @classmethod
    def stop_all(cls) -> None:
        for server in list(cls._running):
            with contextlib.suppress(Exception):
                server.stop(timeout=5)


atexit.register(Server.stop_all)


def _install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the run like Ctrl-C does, so `finally` blocks and atexit stop the servers."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


_install_signal_handlers()


def _table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, rss KiB, cpu ticks) for every process, from /proc."""
    rows: dict[int, tuple[int, int, int]] = {}
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state): ppid = field 4, utime 14, stime 15, rss 24 (pages)
        rows[int(entry)] = (int(fields[1]), int(fields[21]) * page_kib, int(fields[11]) + int(fields[12]))
    return rows


def tree(root: int) -> list[int]:
    """root and all its descendants that are alive."""
    rows = _table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in rows.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in rows:
            seen.append(pid)
            stack.extend(children.get(pid, []))
    return seen


def tree_rss_kib(root: int) -> tuple[int, list[int]]:
    """Total RSS (KiB) of the process tree under root, and each process's (root first)."""
    rows = _table()
    pids = tree(root)
    per = [rows[p][1] for p in pids if p in rows]
    return sum(per), per


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of the live processes of the tree (children that already exited are not
    counted; server workers live for the whole run)."""
    rows = _table()
    return sum(rows[p][2] for p in tree(root) if p in rows) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLK_TCK


def children_cpu_seconds() -> float:
    """CPU seconds used by this process's waited-for children (wrk) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_cores(seconds: float = 1.0) -> float:
    """How many CPUs the whole machine kept busy over the next `seconds`."""
    b0, t0 = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (machine_busy_seconds() - b0) / (time.monotonic() - t0)


def wait_for_quiet(max_seconds: float, threshold: float = 0.3) -> tuple[float, float]:
    """Wait (at most max_seconds) until the machine is nearly idle: another benchmark or test suite running on the
    same cores would distort every number. Returns (seconds waited, busy cores at the last check)."""
    start = time.monotonic()
    busy = busy_cores()
    while busy > threshold and time.monotonic() - start < max_seconds:
        time.sleep(2)
        busy = busy_cores()
    return time.monotonic() - start, busy


def load_average() -> float:
    return os.getloadavg()[0]


def wait_until(check: object, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception as error:
            last = error
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else ""))
