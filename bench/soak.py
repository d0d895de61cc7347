"""Soak (issue #9): a mixed workload at half the server's measured peak for a long time; errors must be zero and the
server's memory must level off.

    .venv/bin/python -m bench.soak [--duration 3600] [--storage sqlite|postgres] [--fraction 0.5] [--interval 5]

Starts a `coffer server --dev` (request limits off) on a fresh data directory, creates through the Azure SDK the
objects the workload uses (secrets `soak-read-NN` with known values, read only; secrets `soak-write-NN`, written; an
RSA-2048 and a P-256 key), and takes a bearer token for the dev service principal (renewed before it expires). The
workload is raw HTTPS (httpx, one keep-alive connection per thread) with that token, as the SDK sends it:

| operation | weight | requests |
| --- | ---: | --- |
| secret get (value checked) | 40 | `GET /secrets/soak-read-NN/` |
| secret set | 15 | `PUT /secrets/soak-write-NN` |
| list (first page) | 10 | `GET /secrets?maxresults=25` |
| RSA sign + verify | 15 | `POST /keys/soak-rsa/{v}/sign` (RS256), `POST .../verify` (must say true) |
| P-256 sign + verify | 20 | the same with ES256 |

1. **Peak**: `--threads` threads unpaced for `--peak-seconds` (after a short warm-up): requests per second.
2. **Soak**: the same threads paced to `--fraction` (0.5) of that rate for `--duration` seconds. Every answer that is
   not the expected 2xx, a wrong value, a verify that says false, or a transport error counts as an error. The RSS of
   the server's process tree is sampled every `--interval` seconds.
3. **Levelling off**: the mean RSS of the last quarter of the soak is compared with the mean of the second quarter
   (the first quarter is warm-up): it levels off when the last is at most `--tolerance` (5 %) above the second.

Writes bench/results/soak-<UTC date>[-N].csv (elapsed_s, rss_kib, requests, errors) and .md (or `--out` STEM),
prints the summary, and exits 1 when there was an error or the memory did not level off. No secret value, token or
client secret is written anywhere.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import hashlib
import logging
import os
import random
import secrets
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from tests.support import postgres
from tests.support.server import DevServer

RESULTS = Path(__file__).resolve().parent / "results"
UNTHROTTLED = {"COFFER_THROTTLE_VAULT_CREATES": "0", "COFFER_THROTTLE_VAULT": "0", "COFFER_THROTTLE_PRINCIPAL": "0"}
API = "api-version=7.5"
READ_NAMES = 20
WRITE_NAMES = 20
WEIGHTS = {"secret-get": 40, "secret-set": 15, "list": 10, "rsa-sign-verify": 15, "ec-sign-verify": 20}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- memory --------------------------------------------------------------------------------------------------------

def _tree(root: int) -> list[int]:
    """`root` and its descendants (worker processes, helpers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def rss_kib(root: int) -> int:
    total = 0
    for pid in _tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE // 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


# --- the workload --------------------------------------------------------------------------------------------------

@dataclass
class Setup:
    server: DevServer
    credential: ClientSecretCredential
    read_values: dict[str, str]
    key_versions: dict[str, str]
    _token: str = ""
    _expires: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def token(self) -> str:
        with self._lock:
            if time.time() > self._expires - 300:  # renewed 5 minutes before it expires
                token = self.credential.get_token(f"{self.server.authority}/.default")
                self._token, self._expires = token.token, float(token.expires_on)
            return self._token


@dataclass
class Counters:
    requests: int = 0
    errors: int = 0
    by_op: Counter[str] = field(default_factory=Counter)
    error_kinds: Counter[str] = field(default_factory=Counter)  # "op: status" (never a value)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, requests: int, error: str | None) -> None:
        with self.lock:
            self.requests += requests
            self.by_op[op] += 1
            if error is not None:
                self.errors += 1
                self.error_kinds[f"{op}: {error}"] += 1


class Pacer:
    """Hands out start times `1 / rate` apart to every thread; None: unpaced."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self, cost: int) -> None:
        if self.rate is None:
            return
        with self.lock:
            now = time.monotonic()
            if self.next < now - 1.0:  # fell behind by more than a second: do not burst to catch up
                self.next = now
            start = self.next
            self.next += cost / self.rate
        delay = start - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def one_operation(http: httpx.Client, setup: Setup, op: str, rng: random.Random) -> tuple[int, str | None]:
    """Performs `op`; returns (requests made, error or None)."""
    headers = {"Authorization": f"Bearer {setup.token()}"}
    if op == "secret-get":
        name = f"soak-read-{rng.randrange(READ_NAMES):02d}"
        r = http.get(f"/secrets/{name}/?{API}", headers=headers)
        if r.status_code != 200:
            return 1, str(r.status_code)
        return 1, None if r.json().get("value") == setup.read_values[name] else "wrong value"
    if op == "secret-set":
        name = f"soak-write-{rng.randrange(WRITE_NAMES):02d}"
        r = http.put(f"/secrets/{name}?{API}", headers=headers, json={"value": secrets.token_urlsafe(32)})
        return 1, None if r.status_code == 200 else str(r.status_code)
    if op == "list":
        r = http.get(f"/secrets?maxresults=25&{API}", headers=headers)
        if r.status_code != 200:
            return 1, str(r.status_code)
        return 1, None if len(r.json().get("value", [])) == 25 else "short page"
    kind, alg = ("rsa", "RS256") if op == "rsa-sign-verify" else ("ec", "ES256")
    base = f"/keys/soak-{kind}/{setup.key_versions[kind]}"
    digest = b64url(hashlib.sha256(rng.randbytes(32)).digest())
    r = http.post(f"{base}/sign?{API}", headers=headers, json={"alg": alg, "value": digest})
    if r.status_code != 200:
        return 1, f"sign {r.status_code}"
    signature = r.json()["value"]
    r = http.post(f"{base}/verify?{API}", headers=headers, json={"alg": alg, "digest": digest, "value": signature})
    if r.status_code != 200:
        return 2, f"verify {r.status_code}"
    return 2, None if r.json().get("value") is True else "verify said false"


def drive(setup: Setup, threads: int, seconds: float, rate: float | None, counters: Counters) -> None:
    """`threads` threads performing operations for `seconds`, paced to `rate` requests/s (None: as fast as possible)."""
    ctx = ssl.create_default_context(cafile=setup.server.ca)
    deadline = time.monotonic() + seconds
    pacer = Pacer(rate)
    ops, weights = list(WEIGHTS), list(WEIGHTS.values())
    # sign + verify is two requests: the pacer reserves the slots of both
    cost = {op: 2 if op.endswith("sign-verify") else 1 for op in ops}

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=setup.server.vault_url, verify=ctx, timeout=30) as http:
            while time.monotonic() < deadline:
                op = rng.choices(ops, weights)[0]
                pacer.wait(cost[op])
                try:
                    made, error = one_operation(http, setup, op, rng)
                except httpx.HTTPError as exc:
                    made, error = 1, type(exc).__name__
                counters.add(op, made, error)

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def prepare(server: DevServer) -> Setup:
    credential = ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
    )
    read_values = {f"soak-read-{i:02d}": secrets.token_urlsafe(32) for i in range(READ_NAMES)}
    with SecretClient(server.vault_url, credential, connection_verify=server.ca) as client:
        for name, value in read_values.items():
            client.set_secret(name, value)
        for i in range(WRITE_NAMES):
            client.set_secret(f"soak-write-{i:02d}", secrets.token_urlsafe(32))
    with KeyClient(server.vault_url, credential, connection_verify=server.ca) as keys:
        versions = {
            "rsa": str(keys.create_rsa_key("soak-rsa", size=2048).properties.version),
            "ec": str(keys.create_ec_key("soak-ec", curve="P-256").properties.version),
        }
    return Setup(server, credential, read_values, versions)


# --- the run -------------------------------------------------------------------------------------------------------

@dataclass
class Result:
    peak_rps: float
    target_rps: float
    achieved_rps: float
    duration_s: float
    requests: int
    errors: int
    error_kinds: dict[str, int]
    by_op: dict[str, int]
    samples: list[tuple[float, int, int, int]]  # elapsed s, RSS KiB, requests, errors
    q2_kib: float
    q4_kib: float
    tolerance: float
    storage: str

    @property
    def growth(self) -> float:
        return self.q4_kib / self.q2_kib - 1 if self.q2_kib else 0.0

    @property
    def levels_off(self) -> bool:
        return self.q4_kib <= self.q2_kib * (1 + self.tolerance)

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.levels_off and self.requests > 0


def quarter_means(samples: list[tuple[float, int, int, int]], duration: float) -> tuple[float, float]:
    def mean(lo: float, hi: float) -> float:
        values = [rss for t, rss, _, _ in samples if lo <= t <= hi]
        return statistics.fmean(values) if values else 0.0

    return mean(duration / 4, duration / 2), mean(duration * 3 / 4, duration)


def soak(duration: float, storage: str, fraction: float = 0.5, interval: float = 5.0, threads: int = 8,
         peak_seconds: float = 10.0, tolerance: float = 0.05, log: Any = print) -> Result:
    with tempfile.TemporaryDirectory(prefix="coffer-soak-") as tmp:
        env = dict(UNTHROTTLED)
        if storage == "postgres":
            env["COFFER_DATABASE_URL"] = postgres.shared_server().new_database()
        server = DevServer(Path(tmp) / "data", server_env=env, sqlite=storage == "sqlite").start()
        try:
            assert server.proc is not None
            pid = server.proc.pid
            setup = prepare(server)
            log(f"server up ({storage}), RSS {rss_kib(pid) / 1024:.1f} MiB; measuring the peak")
            drive(setup, threads, min(2.0, peak_seconds), None, Counters())  # warm-up
            peak = Counters()
            drive(setup, threads, peak_seconds, None, peak)
            peak_rps = peak.requests / peak_seconds
            target = peak_rps * fraction
            if peak.errors:
                log(f"errors while measuring the peak: {dict(peak.error_kinds)}")
            log(f"peak {peak_rps:.0f} requests/s; soaking at {target:.0f} requests/s for {duration:.0f} s")

            counters = Counters()
            samples: list[tuple[float, int, int, int]] = []
            started = time.monotonic()
            done = threading.Event()

            def sample() -> None:
                while True:
                    elapsed = time.monotonic() - started
                    samples.append((round(elapsed, 1), rss_kib(pid), counters.requests, counters.errors))
                    if done.wait(interval):
                        return

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            reporter_stop = threading.Event()

            def report() -> None:
                while not reporter_stop.wait(60):
                    log(f"{time.monotonic() - started:.0f} s: {counters.requests} requests, {counters.errors} "
                        f"errors, RSS {samples[-1][1] / 1024:.1f} MiB")

            threading.Thread(target=report, daemon=True).start()
            drive(setup, threads, duration, target, counters)
            elapsed = time.monotonic() - started
            reporter_stop.set()
            done.set()
            sampler.join()
            samples.append((round(elapsed, 1), rss_kib(pid), counters.requests, counters.errors))
            q2, q4 = quarter_means(samples, elapsed)
            setup.credential.close()
            # peak errors count too: the workload must never fail
            errors = counters.errors + peak.errors
            kinds = dict(counters.error_kinds + peak.error_kinds)
            return Result(peak_rps, target, counters.requests / elapsed, elapsed, counters.requests, errors, kinds,
                          dict(counters.by_op), samples, q2, q4, tolerance, storage)
        finally:
            server.stop()


def markdown(result: Result, argv: list[str], csv_name: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rss = [s[1] for s in result.samples]
    verdict = "levels off" if result.levels_off else "DOES NOT level off"
    return "\n".join([
        f"# Soak ({result.storage})", "",
        f"{when}; `python -m bench.soak {' '.join(argv)}`; {os.cpu_count()} CPUs. Memory curve: `{csv_name}`.", "",
        f"- peak (unpaced, {len(WEIGHTS)}-operation mix): **{result.peak_rps:.0f} requests/s**; soak target "
        f"{result.target_rps:.0f}/s, achieved **{result.achieved_rps:.0f}/s**",
        f"- duration **{result.duration_s:.0f} s**, requests **{result.requests}**, errors **{result.errors}**"
        + (f" ({result.error_kinds})" if result.errors else ""),
        f"- server RSS (process tree): start {rss[0] / 1024:.1f} MiB, min {min(rss) / 1024:.1f}, "
        f"max {max(rss) / 1024:.1f}, end {rss[-1] / 1024:.1f} MiB ({len(rss)} samples)",
        f"- mean RSS second quarter {result.q2_kib / 1024:.1f} MiB, last quarter {result.q4_kib / 1024:.1f} MiB: "
        f"{result.growth * 100:+.1f} % (tolerance {result.tolerance * 100:.0f} %): **memory {verdict}**",
        f"- result: **{'PASS' if result.ok else 'FAIL'}**", "",
        "| operation | performed |", "| --- | ---: |",
        *(f"| {op} | {n} |" for op, n in sorted(result.by_op.items())), "",
    ])


def write_results(result: Result, argv: list[str], stem: Path | None = None) -> tuple[Path, Path]:
    if stem is None:
        day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
        stem, n = RESULTS / f"soak-{day}", 2
        while stem.with_suffix(".md").exists() or stem.with_suffix(".csv").exists():
            stem, n = RESULTS / f"soak-{day}-{n}", n + 1
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["elapsed_s", "rss_kib", "requests", "errors"])
        writer.writerows(result.samples)
    md_path.write_text(markdown(result, argv, csv_path.name))
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600, help="seconds of paced load (default: 1 hour)")
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default=postgres.storage_kind())
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured peak")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--peak-seconds", type=float, default=10.0)
    parser.add_argument("--tolerance", type=float, default=0.05, help="last-quarter RSS over second-quarter RSS")
    parser.add_argument("--out", type=Path, help="path stem for the .csv and .md (default bench/results/soak-DATE)")
    args = parser.parse_args(argv)
    logging.getLogger("azure").setLevel(logging.WARNING)
    try:
        result = soak(args.duration, args.storage, args.fraction, args.interval, args.threads, args.peak_seconds,
                      args.tolerance)
    finally:
        if args.storage == "postgres":
            postgres.stop_shared_server()
    csv_path, md_path = write_results(result, argv, args.out)
    print(md_path.read_text())
    print(f"written to {md_path} and {csv_path}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
