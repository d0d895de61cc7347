"""Key Vault's object rules: names, tags, attributes, soft-delete levels. Errors carry Azure's codes."""

from __future__ import annotations

import re
import uuid
from typing import Any

from coffer.errors import BadParameter
from coffer.storage import VaultRow

NAME_PATTERN = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
MAX_TAGS = 15
MAX_TAG_NAME = 256
MAX_TAG_VALUE = 256
MAX_CONTENT_TYPE = 255
DAY = 86400


def new_version() -> str:
    return uuid.uuid4().hex


def check_name(name: str, what: str = "secret") -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise BadParameter(
            f"The request URI contains an invalid name: {name[:127]!r}. A {what} name must be 1-127 "
            "characters long and contain only 0-9, a-z, A-Z and -."
        )
    return name


def check_tags(tags: Any) -> dict[str, str] | None:
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise BadParameter("Property tags has invalid value: it must be an object of string values.")
    if len(tags) > MAX_TAGS:
        raise BadParameter(f"Too many tags: at most {MAX_TAGS} tags are allowed.")
    for key, value in tags.items():
        if not isinstance(value, str):
            raise BadParameter(f"Property tags has invalid value: tag {key[:64]!r} must be a string.")
        if not key or len(key) > MAX_TAG_NAME:
            raise BadParameter(f"Tag names must be 1-{MAX_TAG_NAME} characters long.")
        if len(value) > MAX_TAG_VALUE:
            raise BadParameter(f"Tag values must be at most {MAX_TAG_VALUE} characters long.")
    return dict(tags)


def check_content_type(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadParameter("Property contentType has invalid value: it must be a string.")
    if len(value) > MAX_CONTENT_TYPE:
        raise BadParameter(f"Property contentType is too long: at most {MAX_CONTENT_TYPE} characters.")
    return value


def _int_date(attributes: dict[str, Any], field: str) -> int | None:
    value = attributes.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 253402300799:
        raise BadParameter(f"Property attributes.{field} has invalid value: it must be epoch seconds.")
    return value


def check_attributes(attributes: Any) -> dict[str, Any]:
    """The writable attributes (enabled, nbf, exp) that were given; read-only ones are ignored."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise BadParameter("Property attributes has invalid value: it must be an object.")
    result: dict[str, Any] = {}
    if "enabled" in attributes and attributes["enabled"] is not None:
        if not isinstance(attributes["enabled"], bool):
            raise BadParameter("Property attributes.enabled has invalid value: it must be a boolean.")
        result["enabled"] = attributes["enabled"]
    for field in ("nbf", "exp"):
        if field in attributes:
            result[field] = _int_date(attributes, field)
    if result.get("nbf") is not None and result.get("exp") is not None and result["nbf"] > result["exp"]:
        raise BadParameter("Property attributes has invalid value: nbf must not be later than exp.")
    return result


def recovery_level(vault: VaultRow) -> str:
    if vault.retention_days >= 90:
        return "Recoverable" if vault.purge_protection else "Recoverable+Purgeable"
    return "CustomizedRecoverable" if vault.purge_protection else "CustomizedRecoverable+Purgeable"
