"""Drive the ASGI stack comparison: start each server, measure idle RSS, load it with wrk, write a Markdown report.

Called by run.sh, which checks the tools and makes the certificate. Every case runs on this machine in one go:
{uvicorn, granian} x {raw ASGI app, Starlette Request/Response app} x {1, 2 workers}, over HTTPS with keep-alive.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATH = "/secrets/hello?api-version=7.5"


@dataclass
class Case:
    server: str  # "uvicorn" | "granian" | "granian-embed"
    app: str  # "raw" | "starlette"
    workers: int
    rps: list[float] = field(default_factory=list)  # one entry per round
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    idle_rss_kib: int = 0  # whole process tree, first round
    proc_rss_kib: list[int] = field(default_factory=list)  # every process of the server, parent first
    loaded_rss_kib: int = 0  # whole process tree right after the last load run
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.server} / {self.app} / {self.workers}w"

    @property
    def mean_rps(self) -> float:
        return statistics.fmean(self.rps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(case: Case, port: int, cert: Path, key: Path) -> list[str]:
    py = sys.executable
    target = f"apps:{case.app}"
    if case.server == "uvicorn":
        # The options coffer.cli.server passes to uvicorn.Config, plus the loop/parser choice made explicit.
        return [
            py, "-m", "uvicorn", target,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(case.workers),
            "--loop", "uvloop", "--http", "httptools",
            "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--log-level", "warning", "--no-access-log", "--no-server-header",
            "--lifespan", "off", "--timeout-keep-alive", "30",
        ]  # fmt: skip
    if case.server == "granian-embed":
        return [py, str(HERE / "granian_embed.py"), case.app, str(port), str(cert), str(key)]
    # granian: defaults (runtime mode auto -> mt for ASGI, 1 runtime thread, loop auto -> uvloop, TLS >= 1.3).
    return [
        py, "-m", "granian", target,
        "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", str(case.workers),
        "--ssl-certificate", str(cert), "--ssl-keyfile", str(key),
        "--log-level", "warning",
    ]  # fmt: skip


def wait_ready(port: int, deadline: float) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}{PATH}", context=ctx, timeout=2) as r:
                if r.status == 200:
                    return r.read()
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer: {last}")


def tree_rss(root: int) -> tuple[int, list[int]]:
    """Total RSS (KiB) of root and all its descendants, and the RSS of each of those processes (root first)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True, check=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for pid, ppid, r in rows:
        children.setdefault(ppid, []).append(pid)
        rss[pid] = r
    seen, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in rss:
            seen.append(pid)
            stack.extend(children.get(pid, []))
    return sum(rss[p] for p in seen), [rss[p] for p in seen]


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def wrk(url: str, seconds: int, connections: int, threads: int, latency: bool) -> str:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    if latency:
        args.append("--latency")
    return subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout


def parse_wrk(out: str, case: Case) -> None:
    case.rps.append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))  # type: ignore[union-attr]
    case.p50_ms.append(to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)))  # type: ignore[union-attr]
    case.p99_ms.append(to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)))  # type: ignore[union-attr]
    problems = []
    if m := re.search(r"Socket errors: (.*)", out):
        problems.append("socket errors: " + m.group(1).strip())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        problems.append(f"non-2xx: {m.group(1)}")
    if problems:
        case.errors.append("; ".join(problems))


def run_case(case: Case, args: argparse.Namespace, log_dir: Path, first: bool) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    log = (log_dir / f"{case.server}-{case.app}-{case.workers}w.log").open("a")
    proc = subprocess.Popen(
        command(case, port, args.cert, args.key), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        body = wait_ready(port, time.monotonic() + 30)
        if b'"hello"' not in body:
            raise RuntimeError(f"unexpected body from {case.label}: {body[:200]!r}")
        time.sleep(args.settle)  # let every worker finish starting, then sample idle memory
        if first:
            case.idle_rss_kib, case.proc_rss_kib = tree_rss(proc.pid)
        url = f"https://127.0.0.1:{port}{PATH}"
        wrk(url, args.warmup, args.connections, args.threads, latency=False)
        out = wrk(url, args.duration, args.connections, args.threads, latency=True)
        with (log_dir / f"{case.server}-{case.app}-{case.workers}w.wrk").open("a") as f:
            f.write(out)
        parse_wrk(out, case)
        case.loaded_rss_kib, _ = tree_rss(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    openssl_v = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "CPU": cpu,
        "kernel": platform.release(),
        "OS": _os_name(),
        "Python": f"{platform.python_version()} ({ssl.OPENSSL_VERSION})",
        "uvicorn": version("uvicorn"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
        "granian": version("granian"),
        "starlette": version("starlette"),
        "orjson": version("orjson"),
        "wrk": wrk_v.split(" Copyright")[0].strip(),
        "openssl (cert, wrk)": openssl_v,
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _rng(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def report(cases: list[Case], info: dict[str, str], overhead: dict[str, float], args: argparse.Namespace) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rounds = f"mean of {args.rounds} rounds, min-max in brackets" if args.rounds > 1 else "one round"
    lines = [
        f"# ASGI stack benchmark, {when}",
        "",
        "Produced by `bench/stack/run.sh`. HTTPS (self-signed EC P-256, TLS 1.3), HTTP/1.1 with keep-alive, "
        f"`wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency` after a {args.warmup} s warm-up, "
        f"`GET {PATH}` answering a {len(_body())}-byte JSON body. The cases run one after another, "
        f"{args.rounds} round(s), every other round in reverse order. wrk and the server share the machine's cores.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        "",
        f"## Results ({rounds})",
        "",
        "| server | app | workers | req/s | p50 ms | p99 ms | idle RSS MiB | idle RSS per process MiB "
        "| RSS after load MiB | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for c in cases:
        per_proc = " + ".join(mib(k) for k in c.proc_rss_kib)
        lines.append(
            f"| {c.server} | {c.app} | {c.workers} | {_rng(c.rps, ',.0f')} | {_rng(c.p50_ms, '.2f')} | "
            f"{_rng(c.p99_ms, '.2f')} | {mib(c.idle_rss_kib)} | {per_proc} | {mib(c.loaded_rss_kib)} | "
            f"{'; '.join(c.errors) or '-'} |"
        )
    by = {(c.server, c.app, c.workers): c for c in cases}
    servers = list(dict.fromkeys(c.server for c in cases))
    lines += ["", "## Ratios of mean req/s", ""]
    for w in sorted({c.workers for c in cases}):
        for s in servers:
            a, b = by.get((s, "starlette", w)), by.get((s, "raw", w))
            if a and b:
                lines.append(f"- {s}, {w}w: starlette / raw = {a.mean_rps / b.mean_rps:.2f}")
        for other in servers[1:]:
            for app in ("raw", "starlette"):
                a, b = by.get((other, app, w)), by.get((servers[0], app, w))
                if a and b:
                    lines.append(f"- {app}, {w}w: {other} / {servers[0]} = {a.mean_rps / b.mean_rps:.2f}")
    for s in servers:
        for app in ("raw", "starlette"):
            a, b = by.get((s, app, 2)), by.get((s, app, 1))
            if a and b:
                lines.append(f"- {s} {app}: 2 workers / 1 worker = {a.mean_rps / b.mean_rps:.2f}")
    lines += [
        "",
        "## App cost without a server (`overhead.py`)",
        "",
        f"CPU time per request of each app called in-process with an in-memory scope, best of 3 x "
        f"{overhead['iterations']:,} calls on uvloop: raw {overhead['raw']:.1f} µs, "
        f"starlette {overhead['starlette']:.1f} µs; Starlette's Request/Response add "
        f"{overhead['starlette'] - overhead['raw']:.1f} µs per request.",
    ]
    return "\n".join(lines) + "\n"


def _body() -> bytes:
    sys.path.insert(0, str(HERE))
    import apps

    return apps.orjson.dumps({**apps.BODY, "path": "/secrets/hello"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cert", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--logs", type=Path, required=True)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settle", type=float, default=1.0, help="seconds between first answer and the idle RSS sample")
    p.add_argument("--rounds", type=int, default=2, help="repeat every case; the report shows mean and min-max")
    p.add_argument("--workers", default="1,2")
    p.add_argument(
        "--servers",
        default="uvicorn,granian",
        help="comma-separated; also granian-embed (granian.server.embed.Server in-process, 1 worker only)",
    )
    args = p.parse_args()

    print("app overhead (no server): ", end="", flush=True)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    overhead = json.loads(
        subprocess.run(
            [sys.executable, str(HERE / "overhead.py")], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    print(overhead, flush=True)

    cases = [
        Case(server, app, int(w))
        for w in args.workers.split(",")
        for server in args.servers.split(",")
        for app in ("raw", "starlette")
        if not (server == "granian-embed" and int(w) != 1)
    ]
    for rnd in range(args.rounds):
        for case in cases if rnd % 2 == 0 else reversed(cases):
            t0 = time.monotonic()
            run_case(case, args, args.logs, first=rnd == 0)
            print(
                f"round {rnd + 1}  {case.label:28} {case.rps[-1]:>9,.0f} req/s  p50 {case.p50_ms[-1]:6.2f} ms  "
                f"p99 {case.p99_ms[-1]:6.2f} ms  idle {mib(case.idle_rss_kib):>4} MiB "
                f"({len(case.proc_rss_kib)} procs)  {'; '.join(case.errors)}  [{time.monotonic() - t0:.0f} s]",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(cases, machine(), overhead, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
