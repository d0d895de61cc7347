"""Key Vault JSON on the wire: bundles, items, paging links, base64url."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import quote

from coffer.errors import BadParameter
from coffer.objects import rules
from coffer.objects.key import Key
from coffer.objects.secret import Secret
from coffer.storage import VaultRow

MAX_RESULTS = 25
_SKIPTOKEN = re.compile(r"[A-Za-z0-9_-]+={0,2}")
# base64url as the SDK sends it (unpadded), padded, or with the standard alphabet's + and /; nothing else
_BASE64 = re.compile(r"[A-Za-z0-9_+/-]*={0,2}")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: Any, field: str = "value") -> bytes:
    if not isinstance(text, str) or not text:
        raise BadParameter(f"Property {field} is required and must be a base64url string.")
    # Python's decoder silently drops characters outside the alphabet ("!!!" would decode to b"")
    if not _BASE64.fullmatch(text) or len(text.rstrip("=")) % 4 == 1:
        raise BadParameter(f"Property {field} is not valid base64url.")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadParameter(f"Property {field} is not valid base64url.") from None


def page_size(query: Any) -> int:
    raw = query.get("maxresults")
    if raw is None or raw == "":
        return MAX_RESULTS
    # ASCII only: str.isdigit() also accepts e.g. "²", which int() rejects
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_RESULTS:
        raise BadParameter(f"Invalid value for maxresults: {raw[:16]!r}. It must be between 1 and {MAX_RESULTS}.")
    return int(raw)


def skiptoken(query: Any) -> str | None:
    raw = query.get("$skiptoken")
    if not raw:
        return None
    # base64's decoder skips characters outside the alphabet, so "%%%" would decode to "" (= first page)
    if not _SKIPTOKEN.fullmatch(raw):
        raise BadParameter("Invalid $skiptoken.")
    try:
        value = b64url_decode(raw, "$skiptoken").decode("utf-8")
    except (BadParameter, UnicodeDecodeError):
        raise BadParameter("Invalid $skiptoken.") from None
    if not value:
        raise BadParameter("Invalid $skiptoken.")
    return value


def version_position(query: Any) -> int | None:
    """The `$skiptoken` of a versions listing: a version's position, ASCII digits fitting a 64-bit integer."""
    after = skiptoken(query)
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise BadParameter("Invalid $skiptoken.")
    return int(after) if after else None


def page(
    values: list[dict[str, Any]], *, vault_url: str, path: str, api_version: str | None, last: str | None, size: int
) -> dict[str, Any]:
    """A list page; `last` (the last item's position when more follow) becomes the next link's skiptoken."""
    link = next_link(vault_url, path, api_version, last, size) if last else None
    return {"value": values, "nextLink": link}


def next_link(vault_url: str, path: str, api_version: str | None, after: str, size: int) -> str:
    token = b64url_encode(after.encode("utf-8"))
    return f"{vault_url}{path}?api-version={quote(api_version or '7.4', safe='')}&$skiptoken={token}&maxresults={size}"


def attributes(item: Secret | Key, vault: VaultRow) -> dict[str, Any]:
    row = item.row
    result: dict[str, Any] = {"enabled": row.enabled}
    if row.nbf is not None:
        result["nbf"] = row.nbf
    if row.exp is not None:
        result["exp"] = row.exp
    result.update(
        created=row.created,
        updated=row.updated,
        recoverableDays=vault.retention_days,
        recoveryLevel=rules.recovery_level(vault),
    )
    return result


def _supports_previous_version(api_version: str | None) -> bool:
    return bool(api_version) and api_version[:4].isdigit() and api_version >= "2025-06-01"  # type: ignore[index,operator]


def secret_id(vault_url: str, secret: Secret, *, versioned: bool = True) -> str:
    base = f"{vault_url}/secrets/{secret.obj.name}"
    return f"{base}/{secret.row.version}" if versioned else base


def secret_bundle(
    secret: Secret, vault: VaultRow, vault_url: str, api_version: str | None, *, with_value: bool
) -> dict[str, Any]:
    row = secret.row
    body: dict[str, Any] = {}
    if with_value and secret.value is not None:
        body["value"] = secret.value
    body["id"] = secret_id(vault_url, secret)
    if row.content_type is not None:
        body["contentType"] = row.content_type
    body["attributes"] = attributes(secret, vault)
    if row.tags is not None:
        body["tags"] = row.tags
    if row.kid:
        body["kid"] = row.kid
    if row.managed:
        body["managed"] = True
    previous = row.extra.get("previousVersion")
    if previous and _supports_previous_version(api_version):
        body["previousVersion"] = previous
    return body


def secret_item(secret: Secret, vault: VaultRow, vault_url: str, *, versioned: bool) -> dict[str, Any]:
    row = secret.row
    item: dict[str, Any] = {
        "id": secret_id(vault_url, secret, versioned=versioned),
        "attributes": attributes(secret, vault),
    }
    if row.tags is not None:
        item["tags"] = row.tags
    if row.content_type is not None:
        item["contentType"] = row.content_type
    if row.managed:
        item["managed"] = True
    return item


def deleted_fields(secret: Secret, vault_url: str) -> dict[str, Any]:
    return {
        "recoveryId": f"{vault_url}/deletedsecrets/{secret.obj.name}",
        "deletedDate": secret.obj.deleted,
        "scheduledPurgeDate": secret.obj.purge_at,
    }


def key_id(vault_url: str, key: Key, *, versioned: bool = True) -> str:
    base = f"{vault_url}/keys/{key.obj.name}"
    return f"{base}/{key.row.version}" if versioned else base


def key_bundle(key: Key, vault: VaultRow, vault_url: str) -> dict[str, Any]:
    """A KeyBundle: the public JWK only, never private or symmetric material."""
    jwk: dict[str, Any] = {"kid": key_id(vault_url, key), "kty": key.kty, "key_ops": key.key_ops, **key.public}
    body: dict[str, Any] = {"key": jwk, "attributes": attributes(key, vault)}
    if key.row.tags is not None:
        body["tags"] = key.row.tags
    if key.row.managed:
        body["managed"] = True
    return body


def key_item(key: Key, vault: VaultRow, vault_url: str, *, versioned: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"kid": key_id(vault_url, key, versioned=versioned), "attributes": attributes(key, vault)}
    if key.row.tags is not None:
        item["tags"] = key.row.tags
    if key.row.managed:
        item["managed"] = True
    return item


def deleted_key_fields(key: Key, vault_url: str) -> dict[str, Any]:
    return {
        "recoveryId": f"{vault_url}/deletedkeys/{key.obj.name}",
        "deletedDate": key.obj.deleted,
        "scheduledPurgeDate": key.obj.purge_at,
    }
