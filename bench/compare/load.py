"""Load with wrk at fixed concurrency (requests, headers and bodies from a generated Lua script), and latency of
sequential calls from one client."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.compare import procs
from bench.compare.model import Latency, Load, Request

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _lua_string(text: str) -> str:
    level = "=" * 3
    while f"]{level}]" in text:
        level += "="
    return f"[{level}[{text}]{level}]"


def lua_script(request: Request, path: Path) -> Path:
    """The wrk script of a request; written with mode 0600, as it holds a bearer token."""
    lines = [f"wrk.method = {_lua_string(request.method)}"]
    for name, value in request.headers.items():
        lines.append(f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}")  # "[[" would start a string
    if request.body is not None:
        lines.append(f"wrk.body = {_lua_string(request.body)}")
    if len(request.paths) == 1:
        lines.append(f"wrk.path = {_lua_string(request.paths[0])}")
    else:
        # Cycle through the paths; each wrk thread starts at a different place.
        lines += [
            "local paths = {" + ", ".join(_lua_string(p) for p in request.paths) + "}",
            "local n = 0",
            "local started = 0",
            "function setup(thread) thread:set('offset', started * 17) started = started + 1 end",
            "function init(args) n = (offset or 0) % #paths end",
            "request = function()",
            "  n = n % #paths + 1",
            "  return wrk.format(nil, paths[n])",
            "end",
        ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> Load:
    def need(pattern: str) -> str:
        m = re.search(pattern, out, re.M)
        if not m:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return m.group(1)

    load = Load(
        rps=float(need(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=_ms(need(r"^\s+50%\s+(\S+)")),
        p90_ms=_ms(need(r"^\s+90%\s+(\S+)")),
        p99_ms=_ms(need(r"^\s+99%\s+(\S+)")),
        requests=int(need(r"(\d+) requests in")),
    )
    problems = []
    if m := re.search(r"Socket errors: (.*)", out):
        problems.append("socket errors: " + m.group(1).strip())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        problems.append(f"non-2xx: {m.group(1)}")
    load.errors = "; ".join(problems)
    return load


def wrk(
    base_url: str,
    script: Path,
    *,
    seconds: int,
    connections: int,
    threads: int,
    warmup: int,
    server_pid: int | None,
    log: Path | None = None,
) -> Load:
    """wrk -t{threads} -c{connections} after `warmup` seconds of unmeasured load; the server tree's CPU use."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", "--timeout", "10s", "-s", str(script)]
    if warmup > 0:
        subprocess.run([*args, f"-d{warmup}s", base_url], capture_output=True, text=True, check=True)
    cpu0 = procs.tree_cpu_seconds(server_pid) if server_pid else 0.0
    busy0, wrk0, own0 = procs.machine_busy_seconds(), procs.children_cpu_seconds(), procs.own_cpu_seconds()
    t0 = time.monotonic()
    result = subprocess.run([*args, f"-d{seconds}s", "--latency", base_url], capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    cpu1 = procs.tree_cpu_seconds(server_pid) if server_pid else 0.0
    busy1, wrk1, own1 = procs.machine_busy_seconds(), procs.children_cpu_seconds(), procs.own_cpu_seconds()
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"--- {script.name} {base_url}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip()[:300]}")
    load = parse_wrk(result.stdout)
    load.seconds = seconds
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout):
        # A measurement of error answers measures nothing: stop here rather than report it.
        raise RuntimeError(f"{m.group(1)} of {load.requests} answers to {script.name} were not 2xx (see {log})")
    if server_pid:
        load.cpu_cores = (cpu1 - cpu0) / elapsed
    load.wrk_cores = (wrk1 - wrk0) / elapsed
    # What else ran on the machine meanwhile (other servers idling, other people's jobs): a disturbance check.
    load.other_cores = max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (wrk1 - wrk0) - (own1 - own0)) / elapsed
    return load


def combine(rounds: list[Load]) -> Load:
    """One operation's measurement on one system from its rounds (of equal length, alternating with the other
    system's, so that the VM's drift falls on both alike): requests/s and CPU the mean of the rounds, the latency
    percentiles the median of the rounds' percentiles."""
    if len(rounds) == 1:
        return rounds[0]
    mean, median = statistics.fmean, statistics.median
    return Load(
        rps=mean([r.rps for r in rounds]),
        p50_ms=median([r.p50_ms for r in rounds]),
        p90_ms=median([r.p90_ms for r in rounds]),
        p99_ms=median([r.p99_ms for r in rounds]),
        requests=sum(r.requests for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        errors="; ".join(dict.fromkeys(r.errors for r in rounds if r.errors)),
        cpu_cores=mean([r.cpu_cores for r in rounds]),
        wrk_cores=mean([r.wrk_cores for r in rounds]),
        other_cores=mean([r.other_cores for r in rounds]),
        requests_per_op=rounds[0].requests_per_op,
        rounds_rps=[r.rps for r in rounds],
    )


def sequential(call: Callable[[], object], *, samples: int, warmup: int, client: str) -> Latency:
    """`samples` timed calls one after another after `warmup` untimed ones; p50/p99 in milliseconds."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return Latency(
        client=client,
        samples=samples,
        p50_ms=statistics.median(times),
        p99_ms=_percentile(times, 99),
        mean_ms=statistics.fmean(times),
    )


def _percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the value below which pct % of the samples lie)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]
