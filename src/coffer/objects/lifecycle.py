"""What secrets, keys and certificates share: lookups of live and soft-deleted objects with Azure's errors,
listings, soft delete, recover and purge, and the sealed backup document with its restore checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from coffer.barrier import VaultView
from coffer.clock import now
from coffer.crypto import envelope
from coffer.errors import BadParameter, Conflict, Forbidden, NotFound
from coffer.objects import rules
from coffer.storage import ObjectRow, VersionRow

_T = TypeVar("_T")

_TITLES = {
    "secret": ("secret", "Secret", "SecretNotFound"),
    "key": ("key", "Key", "KeyNotFound"),
    "certificate": ("certificate", "Certificate", "CertificateNotFound"),
}


def not_found(kind: str, name: str, version: str | None = None) -> NotFound:
    word, _, code = _TITLES[kind]
    ident = f"{name}/{version}" if version else name
    return NotFound(
        f"A {word} with (name/id) {ident} was not found in this key vault. If you recently deleted this {word} you "
        "may be able to recover it using the correct recovery command. For help resolving this issue, please see "
        "https://go.microsoft.com/fwlink/?linkid=2125182",
        code=code,
    )


def live(view: VaultView, kind: str, name: str) -> ObjectRow:
    rules.check_name(name, _TITLES[kind][0])
    obj = view.object_get(kind, name)
    if obj is None or obj.deleted is not None or obj.latest is None:
        raise not_found(kind, name)
    return obj


def live_version(view: VaultView, kind: str, name: str, wanted: str | None) -> tuple[ObjectRow, VersionRow]:
    """`live` and `version` in one storage lookup (the read path of every get and key operation)."""
    rules.check_name(name, _TITLES[kind][0])
    obj, row = view.object_with_version(kind, name, wanted or None)
    if obj is None or obj.deleted is not None or obj.latest is None:
        raise not_found(kind, name)
    if row is None:
        raise not_found(kind, obj.name, wanted)
    return obj, row


def version(view: VaultView, kind: str, obj: ObjectRow, wanted: str | None) -> VersionRow:
    row = view.version_get(kind, obj.name, wanted or obj.latest or "")
    if row is None:
        raise not_found(kind, obj.name, wanted)
    return row


def deleted(view: VaultView, kind: str, name: str) -> ObjectRow:
    rules.check_name(name, _TITLES[kind][0])
    obj = view.object_get(kind, name)
    if obj is None or obj.deleted is None:
        _, title, code = _TITLES[kind]
        raise NotFound(f"Deleted {title} not found: {name}", code=code)
    return obj


def free_name(view: VaultView, kind: str, name: str) -> ObjectRow:
    """The object a new version goes to: existing, or new; 409 while the name is soft-deleted."""
    rules.check_name(name, _TITLES[kind][0])
    obj = view.object_get(kind, name)
    if obj is not None and obj.deleted is not None:
        raise _name_taken_by_deleted(kind, obj)
    return obj or ObjectRow(vault=view.name, kind=kind, name=name)


def free_unmanaged(view: VaultView, kind: str, name: str, verb: str) -> ObjectRow:
    """`free_name` and `refuse_if_managed` in one storage lookup (the object with its latest version)."""
    rules.check_name(name, _TITLES[kind][0])
    obj, latest = view.object_with_version(kind, name, None)
    if obj is None:
        return ObjectRow(vault=view.name, kind=kind, name=name)
    if obj.deleted is not None:
        raise _name_taken_by_deleted(kind, obj)
    if latest is not None and latest.managed:
        raise _managed(kind, obj, verb)
    return obj


def _name_taken_by_deleted(kind: str, obj: ObjectRow) -> Conflict:
    word, title, _ = _TITLES[kind]
    return Conflict(
        f"{title} {obj.name} is currently in a deleted but recoverable state, and its name cannot be reused; in "
        f"this state, the {word} can only be recovered or purged.",
        inner="ObjectIsDeletedButRecoverable",
    )


def _managed(kind: str, obj: ObjectRow, verb: str) -> Forbidden:
    _, title, _ = _TITLES[kind]
    return Forbidden(
        f"{title} {obj.name} is managed by certificate {obj.name}: it cannot be {verb} directly. Use the "
        "certificate's operations instead.",
        inner="ManagedObject",
    )


def soft_delete(view: VaultView, obj: ObjectRow) -> None:
    stamp = now()
    obj.deleted = stamp
    obj.purge_at = stamp + view.vault.retention_days * rules.DAY
    view.object_put(obj)


def purgeable(view: VaultView, kind: str, name: str) -> ObjectRow:
    """The soft-deleted object to purge: 404 when there is none, then 403 under purge protection."""
    obj = deleted(view, kind, name)
    check_purge_allowed(view)
    return obj


def recover(view: VaultView, obj: ObjectRow) -> None:
    obj.deleted = obj.purge_at = None
    view.object_put(obj)


def check_purge_allowed(view: VaultView) -> None:
    if view.vault.purge_protection:
        raise Forbidden(
            'Operation "purge" is not allowed because purge protection is enabled for this vault. Key Vault '
            "service will automatically purge it after the retention period has passed.\r\n"
            f"Vault: {view.name};location=local"
        )


def refuse_if_managed(view: VaultView, kind: str, obj: ObjectRow | None, verb: str) -> None:
    """The key and secret behind a certificate change only through the certificate, as in Key Vault."""
    if obj is None or obj.latest is None:
        return
    latest = view.version_get(kind, obj.name, obj.latest)
    if latest is not None and latest.managed:
        raise _managed(kind, obj, verb)


# --- listings ----------------------------------------------------------------------------------------------------
def latest_rows(
    view: VaultView, kind: str, *, deleted: bool, after: str | None, limit: int
) -> list[tuple[ObjectRow, VersionRow]]:
    """A page of live (or soft-deleted) objects, each with its latest version."""
    objects = view.object_list(kind, deleted=deleted, after=after, limit=limit)
    latest = view.latest_versions(kind, objects)
    return [(o, latest[o.name.lower()]) for o in objects if o.name.lower() in latest]


def version_rows(
    view: VaultView, kind: str, name: str, *, after_seq: int | None, limit: int
) -> tuple[ObjectRow, list[VersionRow]]:
    """A live object and a page of its versions."""
    obj = live(view, kind, name)
    return obj, view.version_list(kind, obj.name, after_seq=after_seq, limit=limit)


# --- backup and restore ------------------------------------------------------------------------------------------
# The plaintext of a backup blob (sealed under the installation's backup key, bound to the kind):
#   {"format": 1, "kind", "name", "latest", ["data"], "versions": [{"version", "created", "updated", "enabled",
#    "nbf", "exp", <fields of the kind>}], <more fields of the kind>}
BACKUP_FORMAT = 1
MAX_BACKUP_VERSIONS = 500
BAD_BACKUP = "Backup blob contains invalid data. It may have been made by another installation or altered."


def backup_rows(view: VaultView, kind: str, name: str) -> tuple[ObjectRow, list[VersionRow]]:
    """A live object and all its versions, at most MAX_BACKUP_VERSIONS of them."""
    obj = live(view, kind, name)
    rows = view.version_list(kind, obj.name, after_seq=None, limit=MAX_BACKUP_VERSIONS + 1)
    if len(rows) > MAX_BACKUP_VERSIONS:
        raise BadParameter(
            f"Backup of a {_TITLES[kind][0]} with more than {MAX_BACKUP_VERSIONS} versions is not supported."
        )
    return obj, rows


def backup_version(row: VersionRow) -> dict[str, Any]:
    """The fields every kind's backup keeps of a version; each kind adds its own after them."""
    return {
        "version": row.version,
        "created": row.created,
        "updated": row.updated,
        "enabled": row.enabled,
        "nbf": row.nbf,
        "exp": row.exp,
    }


def seal_backup(
    view: VaultView, obj: ObjectRow, versions: list[dict[str, Any]], *, with_data: bool, **more: Any
) -> bytes:
    """The backup blob of `obj`: its document (with the object's `data` when `with_data`, then `more`), sealed."""
    document: dict[str, Any] = {"format": BACKUP_FORMAT, "kind": obj.kind, "name": obj.name, "latest": obj.latest}
    if with_data:
        document["data"] = obj.data
    document["versions"] = versions
    document.update(more)
    return view.barrier.seal_backup(obj.kind, orjson.dumps(document))


def read_backup(view: VaultView, kind: str, blob: bytes, parse: Callable[[dict[str, Any]], _T]) -> _T:
    """Open a backup blob of this kind and `parse` its document (which raises ValueError, KeyError, TypeError or
    BadParameter on anything wrong): a blob of another installation, kind or format, or altered, is a 400."""
    try:
        document = orjson.loads(view.barrier.open_backup(kind, blob))
        if not isinstance(document, dict):
            raise ValueError("backup document is not an object")
        if document.get("format") != BACKUP_FORMAT or document.get("kind") != kind:
            raise ValueError("unexpected backup document")
        return parse(document)
    except (envelope.DecryptionFailed, BadParameter, ValueError, KeyError, TypeError):
        raise BadParameter(BAD_BACKUP) from None


def latest_restored(rows: list[VersionRow], latest: str) -> VersionRow:
    """The latest version among those of a backup; ValueError when the backup lacks it (or has no versions)."""
    for row in rows:
        if row.version == latest:
            return row
    raise ValueError("latest version missing")


def check_restorable(view: VaultView, kind: str, name: str, companions: tuple[str, ...] = ()) -> None:
    """409 while the name is taken, live or soft-deleted, by the kind restored or by one of its `companions`."""
    word = _TITLES[kind][0]
    words = [word, *(_TITLES[k][0] for k in companions)]
    rivals = word if not companions else f"{', '.join(words[:-1])} or {words[-1]}"
    for taken in (kind, *companions):
        if view.object_get(taken, name) is not None:
            raise Conflict(
                f"There was a conflict restoring the {word} '{name}'. This can happen if either: a second {rivals} "
                f"with the same name was created after the first {word} was deleted; or the {word} was recovered "
                "before the restore."
            )


def put_restored(
    view: VaultView, kind: str, name: str, latest: str, rows: list[VersionRow], data: dict[str, Any] | None = None
) -> tuple[ObjectRow, VersionRow]:
    """Write a restored object and its versions; returns it with its latest version."""
    obj = ObjectRow(vault=view.name, kind=kind, name=name, latest=latest, data=dict(data or {}))
    for row in rows:
        view.version_put(row)
    view.object_put(obj)
    return obj, latest_restored(rows, latest)
