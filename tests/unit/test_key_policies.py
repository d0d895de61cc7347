"""The scheduler's rotation-policy job, in process: Rotate makes a new version once due; Notify is recorded once."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from coffer.app import Coffer
from coffer.barrier import VaultView
from coffer.config import Config
from coffer.errors import BadParameter
from coffer.objects import key


def _coffer(tmp_path: Path) -> Coffer:
    coffer = Coffer(Config(data_dir=tmp_path / "data", dev=True))
    coffer.start_dev()
    return coffer


def _versions(coffer: Coffer, name: str) -> int:
    with coffer.storage.read() as tx:
        view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
        return len(key.list_versions(view, name, after_seq=None, limit=100))


def test_rotate_action_makes_a_new_version_when_due(tmp_path: Path) -> None:
    coffer = _coffer(tmp_path)
    try:
        with coffer.storage.write() as tx:
            view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
            key.create(view, coffer.key_backends, "rotating", {"kty": "EC", "crv": "P-256"})
            key.set_policy(view, "rotating", {"lifetimeActions": [
                {"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "Rotate"}}],
                "attributes": {"expiryTime": "P90D"}})
        now = int(time.time())
        assert coffer.run_key_policies(now) == 0  # not due yet
        assert coffer.run_key_policies(now + 31 * 86400) == 1
        assert _versions(coffer, "rotating") == 2
        with coffer.storage.read() as tx:
            view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
            latest = key.get(view, "rotating", None)
        assert latest.row.exp is not None and latest.row.exp > now + 80 * 86400  # expiryTime applied
        audit = [orjson.loads(line) for line in coffer.config.audit_path.read_bytes().splitlines()]
        assert any(r["operationName"] == "KeyRotateIfDue" for r in audit)
    finally:
        coffer.close()


def test_notify_is_recorded_once_per_version(tmp_path: Path) -> None:
    coffer = _coffer(tmp_path)
    try:
        soon = int(time.time()) + 10 * 86400
        with coffer.storage.write() as tx:
            view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
            key.create(view, coffer.key_backends, "expiring", {"kty": "EC", "attributes": {"exp": soon}})
            key.set_policy(view, "expiring", {"lifetimeActions": [
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}]})
        now = int(time.time())
        assert coffer.run_key_policies(now) == 1
        assert coffer.run_key_policies(now) == 0
        assert _versions(coffer, "expiring") == 1
    finally:
        coffer.close()


@pytest.mark.parametrize(("duration", "seconds"), [
    ("P90D", 90 * 86400), ("P2W", 14 * 86400), ("PT48H", 48 * 3600), ("P1DT12H", 36 * 3600),
    ("PT90M", 90 * 60), ("PT30S", 30), ("P1W2DT3H4M5S", 9 * 86400 + 3 * 3600 + 4 * 60 + 5),
])
def test_durations_in_days_weeks_and_hours(duration: str, seconds: int) -> None:
    start = 1_700_000_000
    assert key._add_duration(start, duration) == start + seconds


def test_durations_in_months_and_years_follow_the_calendar() -> None:
    jan31 = 1_706_659_200  # 2024-01-31T00:00:00Z
    assert key._add_duration(jan31, "P1Y") == 1_738_281_600  # 2025-01-31
    assert key._add_duration(jan31, "P1M") == 1_709_164_800  # 2024-02-29: the last day of a shorter month
    jan15 = 1_705_276_800  # 2024-01-15T00:00:00Z
    assert key._add_duration(jan15, "P1MT1H") == 1_707_958_800  # 2024-02-15T01:00:00Z


@pytest.mark.parametrize("duration", ["P", "PT", "P1H", "PT1D", "P-1D", "P1.5D", "48H", "p90d", "P90D ", "PT1H1D"])
def test_malformed_durations_are_bad_parameters(duration: str) -> None:
    with pytest.raises(BadParameter):
        key._add_duration(1_700_000_000, duration)


def test_a_rotation_that_fails_half_way_leaves_nothing_and_the_others_rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first key's rotation fails after its new version was written (its audit record could not be written):
    that version is undone, and the next key still rotates in the same run."""
    coffer = _coffer(tmp_path)
    try:
        with coffer.storage.write() as tx:
            view = VaultView(tx, coffer.barrier, tx.vault_get("dev"))  # type: ignore[arg-type]
            for name in ("first", "second"):
                key.create(view, coffer.key_backends, name, {"kty": "EC", "crv": "P-256"})
                key.set_policy(view, name, {"lifetimeActions": [
                    {"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "Rotate"}}]})
        audit_job = Coffer._audit_job
        failed: list[str] = []

        def failing_once(self: Coffer, operation: str, vault_name: str, object_id: str, reason: str,
                         **kw: str) -> None:
            if operation == "KeyRotateIfDue" and not failed:
                failed.append(object_id)
                raise OSError("audit device gone")
            audit_job(self, operation, vault_name, object_id, reason, **kw)

        monkeypatch.setattr(Coffer, "_audit_job", failing_once)
        due = int(time.time()) + 31 * 86400
        assert coffer.run_key_policies(due) == 1
        assert "/keys/first/" in failed[0]
        assert [_versions(coffer, name) for name in ("first", "second")] == [1, 2]
        coffer.run_key_policies(due)  # the next run rotates it
        assert _versions(coffer, "first") == 2
    finally:
        coffer.close()
