"""The scheduled purge job (`Coffer.purge_due`), in process on a real dev installation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from coffer.app import Coffer
from coffer.barrier import VaultView
from coffer.config import Config
from coffer.objects import secret, vault
from coffer.storage import ObjectRow

NOW = 2_000_000_000


@pytest.fixture()
def coffer(tmp_path: Path) -> Iterator[Coffer]:
    app = Coffer(Config(data_dir=tmp_path / "data", dev=True))
    app.start_dev()
    yield app
    app.close()


def set_and_delete(app: Coffer, vault_name: str, name: str, versions: int = 1) -> ObjectRow:
    with app.storage.write() as tx:
        row = tx.vault_get(vault_name)
        assert row is not None
        view = VaultView(tx, app.barrier, row)
        for i in range(versions):
            secret.set(view, name, f"value-{i}")
        return secret.delete(view, name).obj


def set_purge_at(app: Coffer, vault_name: str, name: str, purge_at: int) -> None:
    with app.storage.write() as tx:
        obj = tx.object_get(vault_name, "secret", name)
        assert obj is not None and obj.deleted is not None
        obj.purge_at = purge_at
        tx.object_put(obj)


def audit_records(app: Coffer) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in app.config.audit_path.read_bytes().splitlines()]


def test_purge_due_removes_objects_past_their_date(coffer: Coffer) -> None:
    with coffer.storage.write() as tx:
        tenant = tx.vault_get("dev")
        assert tenant is not None
        vault.create(tx, coffer.barrier, "week-vault", tenant.tenant_id, {"softDeleteRetentionInDays": 7})
    deleted = set_and_delete(coffer, "week-vault", "Expired", versions=3)
    assert deleted.purge_at == deleted.deleted + 7 * 86400  # type: ignore[operator]
    set_and_delete(coffer, "week-vault", "not-yet")
    set_and_delete(coffer, "dev", "dev-expired")
    with coffer.storage.write() as tx:
        row = tx.vault_get("week-vault")
        assert row is not None
        secret.set(VaultView(tx, coffer.barrier, row), "live", "value")
    set_purge_at(coffer, "week-vault", "expired", NOW - 1)
    set_purge_at(coffer, "dev", "dev-expired", NOW)  # due exactly now
    set_purge_at(coffer, "week-vault", "not-yet", NOW + 1)
    before = len(audit_records(coffer))

    assert coffer.purge_due(NOW) == 2

    with coffer.storage.read() as tx:
        assert tx.object_get("week-vault", "secret", "expired") is None
        assert tx.version_list("week-vault", "secret", "expired", after_seq=None, limit=10) == []
        assert tx.object_get("dev", "secret", "dev-expired") is None
        not_yet = tx.object_get("week-vault", "secret", "not-yet")
        assert not_yet is not None and not_yet.deleted is not None
        live = tx.object_get("week-vault", "secret", "live")
        assert live is not None and live.deleted is None
    new = audit_records(coffer)[before:]
    assert len(new) == 2
    by_vault = {record["properties"]["vault"]: record for record in new}  # type: ignore[index]
    assert set(by_vault) == {"week-vault", "dev"}
    week = by_vault["week-vault"]
    assert week["operationName"] == "SecretPurge"
    assert week["resultSignature"] == "NoContent" and week["resultType"] == "Success"
    assert week["identity"] == {"claim": {"oid": "coffer-scheduler"}}
    assert week["properties"]["id"].endswith("/deletedsecrets/Expired")  # type: ignore[index]
    assert week["properties"]["id"].startswith("https://week-vault.localhost")  # type: ignore[index]
    assert week["category"] == "AuditEvent" and week["time"]

    # nothing more is due; the later one goes when its time comes
    assert coffer.purge_due(NOW) == 0
    assert coffer.purge_due(NOW + 1) == 1
    with coffer.storage.read() as tx:
        assert tx.object_get("week-vault", "secret", "not-yet") is None


def test_purge_due_honours_the_limit(coffer: Coffer) -> None:
    for i in range(5):
        set_and_delete(coffer, "dev", f"s{i}")
        set_purge_at(coffer, "dev", f"s{i}", NOW - 100 + i)
    assert coffer.purge_due(NOW, limit=2) == 2
    assert coffer.purge_due(NOW, limit=2) == 2
    assert coffer.purge_due(NOW, limit=2) == 1
    assert coffer.purge_due(NOW, limit=2) == 0
    with coffer.storage.read() as tx:
        assert tx.object_list("dev", "secret", deleted=True, after=None, limit=10) == []


def test_purge_due_does_nothing_while_sealed(coffer: Coffer) -> None:
    set_and_delete(coffer, "dev", "expired")
    set_purge_at(coffer, "dev", "expired", NOW - 1)
    coffer.seal()
    before = len(audit_records(coffer))
    assert coffer.purge_due(NOW) == 0
    with coffer.storage.read() as tx:
        assert tx.object_get("dev", "secret", "expired") is not None
    assert len(audit_records(coffer)) == before


def test_purge_due_ignores_live_and_recovered_objects(coffer: Coffer) -> None:
    set_and_delete(coffer, "dev", "recovered")
    with coffer.storage.write() as tx:
        row = tx.vault_get("dev")
        assert row is not None
        secret.recover(VaultView(tx, coffer.barrier, row), "recovered")
    assert coffer.purge_due(NOW + 10**9) == 0
    with coffer.storage.read() as tx:
        obj = tx.object_get("dev", "secret", "recovered")
        assert obj is not None and obj.deleted is None and obj.purge_at is None
