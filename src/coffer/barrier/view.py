"""A transaction seen through one vault: clear columns pass through, sealed fields are bound to
(vault, kind, name, version, field) by the associated data, so a blob moved elsewhere fails to open."""

from __future__ import annotations

from coffer.barrier.seal import Barrier
from coffer.crypto import envelope
from coffer.storage import ObjectRow, Transaction, VaultRow, VersionRow


class VaultView:
    def __init__(self, tx: Transaction, barrier: Barrier, vault: VaultRow) -> None:
        self.tx = tx
        self.barrier = barrier
        self.vault = vault

    @property
    def name(self) -> str:
        return self.vault.name

    def seal(self, kind: str, name: str, version: str, field: str, plaintext: bytes) -> bytes:
        aad = envelope.aad(self.vault.name.lower(), kind, name.lower(), version.lower(), field)
        return envelope.seal(self.barrier.vault_key(self.vault), plaintext, aad, term=self.vault.key_term)

    def open(self, kind: str, name: str, version: str, field: str, sealed: bytes) -> bytes:
        aad = envelope.aad(self.vault.name.lower(), kind, name.lower(), version.lower(), field)
        return envelope.open(self.barrier.vault_key(self.vault), sealed, aad)

    # storage access, chrooted to this vault
    def object_get(self, kind: str, name: str) -> ObjectRow | None:
        return self.tx.object_get(self.vault.name, kind, name)

    def object_put(self, row: ObjectRow) -> None:
        row.vault = self.vault.name
        self.tx.object_put(row)

    def object_purge(self, kind: str, name: str) -> None:
        self.tx.object_purge(self.vault.name, kind, name)

    def object_list(self, kind: str, *, deleted: bool, after: str | None, limit: int) -> list[ObjectRow]:
        return self.tx.object_list(self.vault.name, kind, deleted=deleted, after=after, limit=limit)

    def version_get(self, kind: str, name: str, version: str) -> VersionRow | None:
        return self.tx.version_get(self.vault.name, kind, name, version)

    def object_with_version(
        self, kind: str, name: str, version: str | None
    ) -> tuple[ObjectRow | None, VersionRow | None]:
        return self.tx.object_with_version(self.vault.name, kind, name, version)

    def version_put(self, row: VersionRow) -> None:
        row.vault = self.vault.name
        self.tx.version_put(row)

    def version_list(self, kind: str, name: str, *, after_seq: int | None, limit: int) -> list[VersionRow]:
        return self.tx.version_list(self.vault.name, kind, name, after_seq=after_seq, limit=limit)

    def latest_versions(self, kind: str, objects: list[ObjectRow]) -> dict[str, VersionRow]:
        return self.tx.latest_versions(self.vault.name, kind, objects)
