"""Secrets: versioned values with soft delete, recovery, purge, backup and restore."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any

from coffer.barrier import VaultView
from coffer.clock import now
from coffer.crypto import certs
from coffer.errors import BadParameter, Forbidden
from coffer.objects import lifecycle, rules
from coffer.storage import ObjectRow, VersionRow

KIND = "secret"
MAX_VALUE_BYTES = 25 * 1024


@dataclass
class Secret:
    obj: ObjectRow
    row: VersionRow
    value: str | None = None


def _live(view: VaultView, name: str) -> ObjectRow:
    return lifecycle.live(view, KIND, name)


def _version(view: VaultView, obj: ObjectRow, version: str | None) -> VersionRow:
    return lifecycle.version(view, KIND, obj, version)


def _open_value(view: VaultView, row: VersionRow) -> str:
    return view.open(KIND, row.name, row.version, "value", row.payload).decode("utf-8")


def set(
    view: VaultView, name: str, value: Any, *, content_type: Any = None, tags: Any = None, attributes: Any = None
) -> Secret:
    rules.check_name(name)
    if not isinstance(value, str):
        raise BadParameter("Property value is required and must be a string.")
    encoded = value.encode("utf-8")
    if len(encoded) > MAX_VALUE_BYTES:
        raise BadParameter(f"Secret is beyond the maximum permitted length of {MAX_VALUE_BYTES} bytes.")
    content_type = rules.check_content_type(content_type)
    tags = rules.check_tags(tags)
    attrs = rules.check_attributes(attributes)
    obj = lifecycle.free_unmanaged(view, KIND, name, "set")
    previous = obj.latest
    version = rules.new_version()
    stamp = now()
    row = VersionRow(
        vault=view.name,
        kind=KIND,
        name=obj.name,
        version=version,
        created=stamp,
        updated=stamp,
        enabled=attrs.get("enabled", True),
        nbf=attrs.get("nbf"),
        exp=attrs.get("exp"),
        content_type=content_type,
        tags=tags,
        payload=view.seal(KIND, obj.name, version, "value", encoded),
        extra={"previousVersion": previous} if previous else {},
    )
    view.version_put(row)
    obj.latest = version
    view.object_put(obj)
    return Secret(obj, row, value)


def get(view: VaultView, name: str, version: str | None) -> Secret:
    obj, row = lifecycle.live_version(view, KIND, name, version)
    if not row.enabled:
        raise Forbidden("Operation get is not allowed on a disabled secret.", inner="SecretDisabled")
    return Secret(obj, row, _open_value(view, row))


PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"


def convert(item: Secret, out_content_type: str | None) -> Secret:
    """Key Vault's `outContentType` on get: a certificate's secret stored as PKCS#12 is returned as PEM (private key,
    when the certificate's key is exportable, then the chain). The stored type itself is returned as is; any other
    conversion (PEM to PKCS#12 included: Key Vault converts PFX to PEM only) or type is refused."""
    if not out_content_type:
        return item
    wanted = out_content_type.strip().lower()
    if wanted not in (PKCS12, PEM):
        raise BadParameter(
            f"The value {out_content_type[:64]!r} of parameter outContentType is not supported: use {PKCS12} or {PEM}."
        )
    stored = (item.row.content_type or "").lower()
    if wanted == stored:
        return item
    if wanted != PEM or stored != PKCS12 or not item.row.managed or item.value is None:
        raise BadParameter(
            f"The secret's content type {(item.row.content_type or 'none')[:64]!r} cannot be converted to "
            f"{wanted}: only the {PKCS12} secret of a certificate converts, to {PEM}."
        )
    try:
        pem = certs.pkcs12_to_pem(base64.b64decode(item.value, validate=True))
    except (ValueError, certs.CertificateError):
        raise BadParameter("The secret's value is not a PKCS#12 certificate: it cannot be converted.") from None
    return Secret(item.obj, replace(item.row, content_type=PEM), pem)


def update(
    view: VaultView,
    name: str,
    version: str | None,
    *,
    content_type: Any = None,
    tags: Any = None,
    attributes: Any = None,
    fields: frozenset[str] = frozenset(),
) -> Secret:
    """Change properties; only the fields present in the request body (`fields`) are touched."""
    obj = _live(view, name)
    lifecycle.refuse_if_managed(view, KIND, obj, "updated")
    row = _version(view, obj, version)
    if "contentType" in fields:
        row.content_type = rules.check_content_type(content_type)
    if "tags" in fields:
        row.tags = rules.check_tags(tags)
    attrs = rules.check_attributes(attributes)
    for key, value in attrs.items():
        setattr(row, key, value)
    if row.nbf is not None and row.exp is not None and row.nbf > row.exp:
        raise BadParameter("Property attributes has invalid value: nbf must not be later than exp.")
    row.updated = now()
    view.version_put(row)
    return Secret(obj, row)


def delete(view: VaultView, name: str) -> Secret:
    obj = _live(view, name)
    lifecycle.refuse_if_managed(view, KIND, obj, "deleted")
    row = _version(view, obj, None)
    lifecycle.soft_delete(view, obj)
    return Secret(obj, row)


def get_deleted(view: VaultView, name: str) -> Secret:
    obj = lifecycle.deleted(view, KIND, name)
    return Secret(obj, _version(view, obj, None))


def recover(view: VaultView, name: str) -> Secret:
    obj = lifecycle.deleted(view, KIND, name)
    lifecycle.recover(view, obj)
    return Secret(obj, _version(view, obj, None))


def purge(view: VaultView, name: str) -> None:
    obj = lifecycle.purgeable(view, KIND, name)
    view.object_purge(KIND, obj.name)


def list_latest(view: VaultView, *, deleted: bool, after: str | None, limit: int) -> list[Secret]:
    return [Secret(o, r) for o, r in lifecycle.latest_rows(view, KIND, deleted=deleted, after=after, limit=limit)]


def list_versions(view: VaultView, name: str, *, after_seq: int | None, limit: int) -> list[Secret]:
    obj, rows = lifecycle.version_rows(view, KIND, name, after_seq=after_seq, limit=limit)
    return [Secret(obj, row) for row in rows]


def backup(view: VaultView, name: str) -> bytes:
    obj, rows = lifecycle.backup_rows(view, KIND, name)
    versions = [
        {
            **lifecycle.backup_version(r),
            "contentType": r.content_type,
            "tags": r.tags,
            "managed": r.managed,
            "kid": r.kid,
            "extra": r.extra,
            "value": _open_value(view, r),
        }
        for r in rows
    ]
    return lifecycle.seal_backup(view, obj, versions, with_data=False)


def _restored_rows(view: VaultView, name: str, versions: list[Any], latest: str) -> list[VersionRow]:
    """Every version of a backup document, checked and sealed; raises before anything is written."""
    rules.check_name(name)
    rows: list[VersionRow] = []
    for item in versions:
        if not isinstance(item, dict):
            raise ValueError("version entry is not an object")
        version, value, created, updated = item["version"], item["value"], item["created"], item["updated"]
        if not isinstance(version, str) or not rules.NAME_PATTERN.fullmatch(version) or not isinstance(value, str):
            raise ValueError("invalid version or value")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (created, updated)):
            raise ValueError("invalid dates")
        if not isinstance(item["enabled"], bool) or not isinstance(item["managed"], bool):
            raise ValueError("invalid flags")
        if not (item["kid"] is None or isinstance(item["kid"], str)) or not isinstance(item.get("extra") or {}, dict):
            raise ValueError("invalid kid or extra")
        dates = rules.check_attributes({"nbf": item["nbf"], "exp": item["exp"]})
        rows.append(
            VersionRow(
                vault=view.name,
                kind=KIND,
                name=name,
                version=version,
                created=created,
                updated=updated,
                enabled=item["enabled"],
                nbf=dates["nbf"],
                exp=dates["exp"],
                content_type=rules.check_content_type(item["contentType"]),
                tags=rules.check_tags(item["tags"]),
                managed=item["managed"],
                kid=item["kid"],
                extra=item.get("extra") or {},
                payload=view.seal(KIND, name, version, "value", value.encode("utf-8")),
            )
        )
    lifecycle.latest_restored(rows, latest)
    return rows


def _parse_backup(view: VaultView, document: dict[str, Any]) -> tuple[str, str, list[VersionRow]]:
    name, latest = str(document["name"]), str(document["latest"])
    return name, latest, _restored_rows(view, name, list(document["versions"]), latest)


def restore(view: VaultView, blob: bytes) -> Secret:
    name, latest, rows = lifecycle.read_backup(view, KIND, blob, lambda document: _parse_backup(view, document))
    lifecycle.check_restorable(view, KIND, name)
    return Secret(*lifecycle.put_restored(view, KIND, name, latest, rows))
