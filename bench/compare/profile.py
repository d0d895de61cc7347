"""py-spy on the Coffer server under load: collapsed stacks, summarised as the functions that take the most samples
(self: where the CPU is; inclusive: which calls the time goes through)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record(
    pid: int, seconds: int, out: Path, *, gil: bool = False, idle: bool = False, subprocesses: bool = False
) -> subprocess.Popen[bytes]:
    """Start `py-spy record` (raw collapsed stacks, 200 Hz, without pausing the process); wait() on the result."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy")
    argv = [
        exe,
        "record",
        "-p",
        str(pid),
        "-d",
        str(seconds),
        "-r",
        "200",
        "--nonblocking",
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    if gil:
        argv.append("--gil")  # only the thread holding the GIL: where the interpreter's time goes
    if idle:
        argv.append("--idle")  # waiting threads too: where a request's wall time goes
    if subprocesses:
        argv.append("--subprocesses")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/src/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarise(raw: Path, top: int = 15, within: tuple[str, ...] = ()) -> dict[str, Any]:
    """Self sample shares per function and inclusive shares of Coffer's functions, from py-spy's raw output; with
    `within`, only the stacks that pass through a function of one of those names (shares of those samples)."""
    prefixes = tuple(name + " (" for name in within)
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        # py-spy puts the thread ("thread (0x...)") or process first; drop such pseudo frames
        frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        if not frames or (prefixes and not any(f.startswith(prefixes) for f in frames)):
            continue
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, count / total) for name, count in counter.most_common(top)]

    # Inclusive shares of Coffer's own functions (and the server's request handler): the request pipeline's steps.
    own = Counter(
        {
            name: n
            for name, n in inclusive.items()
            if "(coffer/" in name and "coffer/cli/" not in name and "coffer/__main__" not in name
        }
    )
    return {"samples": total, "self": share(self_counts), "inclusive": share(own)}
