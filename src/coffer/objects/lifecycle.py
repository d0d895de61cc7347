"""What secrets, keys and certificates share: lookups of live and soft-deleted objects with Azure's errors,
soft delete, recover and purge."""

from __future__ import annotations

from coffer.barrier import VaultView
from coffer.clock import now
from coffer.errors import Conflict, Forbidden, NotFound
from coffer.objects import rules
from coffer.storage import ObjectRow, VersionRow

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
        word, title, _ = _TITLES[kind]
        raise Conflict(
            f"{title} {obj.name} is currently in a deleted but recoverable state, and its name cannot be reused; in "
            f"this state, the {word} can only be recovered or purged.",
            inner="ObjectIsDeletedButRecoverable",
        )
    return obj or ObjectRow(vault=view.name, kind=kind, name=name)


def soft_delete(view: VaultView, obj: ObjectRow) -> None:
    stamp = now()
    obj.deleted = stamp
    obj.purge_at = stamp + view.vault.retention_days * rules.DAY
    view.object_put(obj)


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
        _, title, _ = _TITLES[kind]
        raise Forbidden(
            f"{title} {obj.name} is managed by certificate {obj.name}: it cannot be {verb} directly. Use the "
            "certificate's operations instead.",
            inner="ManagedObject",
        )
