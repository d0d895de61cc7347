"""Issue #9, short CI runs of the reliability harnesses (the long runs: `python -m bench.crash --cycles 100`,
`python -m bench.soak --duration 3600`; see their docstrings).

* crash: a mixed workload of writes through the Azure SDKs (secret versions, software keys, deletes, recovers, role
  assignments), kill -9 at a random moment, integrity check of the storage, restart, and every acknowledged write
  present and intact, every write in flight at the kill wholly there or wholly absent;
* soak: a mixed workload at half the measured peak, no error, the server's memory levelling off.

Both run on the suite's storage (COFFER_TEST_STORAGE: SQLite, or the throwaway PostgreSQL)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from bench import crash, soak

from tests.support import postgres


@pytest.mark.timeout(120)
def test_crash_cycles_keep_every_acknowledged_write(tmp_path: Path) -> None:
    stats = crash.run(cycles=2, storage=postgres.storage_kind(), workers=4, min_delay=0.5, max_delay=1.5,
                      data_dir=tmp_path / "data", log=lambda _: None)
    assert stats.failures == []
    assert stats.cycles == 2
    # the workload really mixes writes, and the kills landed on requests in flight
    assert stats.acked["secret-set"] > 0 and stats.acked["key-create"] > 0
    assert sum(stats.acked.values()) >= 20, stats.acked
    assert sum(stats.in_flight.values()) >= 1
    assert stats.checks["secret versions"] + stats.checks["secrets deleted"] > 0
    text = crash.summary(stats, postgres.storage_kind(), 4, 1.0, ["--cycles", "2"])
    assert "failures: **0**" in text


@pytest.mark.timeout(120)
def test_soak_has_no_errors_and_memory_levels_off(tmp_path: Path) -> None:
    result = soak.soak(duration=20, storage=postgres.storage_kind(), interval=1, peak_seconds=4, tolerance=0.10,
                       log=lambda _: None)
    csv_path, md_path = soak.write_results(result, ["--duration", "20"], tmp_path / "soak")
    assert result.errors == 0, result.error_kinds
    assert result.requests > 0 and result.peak_rps > 0
    # paced to half the peak (loosely: the machine runs other work too)
    assert result.achieved_rps <= result.peak_rps * 0.75
    assert result.levels_off, (result.q2_kib, result.q4_kib)
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) >= 15 and all(int(row["rss_kib"]) > 0 for row in rows)
    assert "memory levels off" in md_path.read_text()
