"""Keys: versioned cryptographic keys whose private parts never leave Coffer (or the HSM).

Software keys are stored sealed under the barrier like secret values; HSM keys live in the PKCS#11 token and
storage holds only a reference. Every operation goes through a crypto.keys.KeyBackend.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import functools
import logging
import re
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coffer.barrier import VaultView
from coffer.clock import now
from coffer.crypto.keys import (
    HSM_TYPES,
    SOFTWARE_TYPES,
    KeyBackend,
    KeyMaterial,
    KeyMissing,
    KeyOperationError,
)
from coffer.errors import BadParameter, Forbidden
from coffer.objects import lifecycle, rules
from coffer.storage import ObjectRow, Transaction, VersionRow

log = logging.getLogger("coffer.keys")

KIND = "key"
KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export")
DEFAULT_OPS = {
    "RSA": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
    "EC": ["sign", "verify"],
    "oct": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
}
# Operations still allowed outside a key's nbf/exp window (Key Vault's rule).
_ALLOWED_OUTSIDE_DATES = frozenset({"decrypt", "unwrapKey", "verify"})
_PUBLIC_OPERATIONS = frozenset({"encrypt", "verify", "wrapKey"})  # with an RSA or EC key: its public members suffice
# An ISO 8601 duration as Key Vault's rotation policies take them: P90D, P3M, P1Y10D, P2W, PT48H, P1DT12H.
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


# HSM objects of keys that a transaction drops (purged keys, retired CA keys, released pending keys) are destroyed
# only once it has committed: a commit that failed after a destroy would leave a key that works nowhere. Until then
# they wait in `meta` under this prefix (followed by the token reference, an object id and not key material), in the
# same transaction; `Backends.destroy_queued` destroys them after the commit, and the maintenance job what is left
# (after a crash, or while the HSM was away).
HSM_DESTROY_QUEUE = "hsm-destroy:"


@dataclass
class Backends:
    software: KeyBackend
    hsm: KeyBackend | None = None
    destroy_queued: Callable[[list[str]], object] | None = None  # Coffer.destroy_queued_hsm_objects
    # per open transaction: the entries it queued and the one callback that destroys them after its commit
    _queued_by: weakref.WeakKeyDictionary[Transaction, tuple[list[str], Callable[[], object]]] = dataclasses.field(
        default_factory=weakref.WeakKeyDictionary, repr=False, compare=False
    )

    def destroy_after_commit(self, tx: Transaction, material: KeyMaterial) -> None:
        """Queue the HSM object of a key that `tx` drops, to be destroyed once `tx` has committed: by one callback for
        all that `tx` queued (what other transactions left is the maintenance job's). Entries undone with a
        savepoint are gone from the queue by then, and skipped."""
        entry = HSM_DESTROY_QUEUE + material.private.decode("ascii")
        tx.meta_put(entry, material.kty.encode(), touch=False)
        if self.destroy_queued is None:
            return
        if (queued := self._queued_by.get(tx)) is None:
            entries: list[str] = []
            queued = self._queued_by[tx] = (entries, functools.partial(self.destroy_queued, entries))
        queued[0].append(entry)
        tx.after_commit(queued[1])  # again if a savepoint undid its registration

    def for_type(self, kty: str) -> KeyBackend:
        if kty in HSM_TYPES:
            if self.hsm is None:
                raise BadParameter("No HSM is configured on this server, so HSM-protected keys are not available.")
            return self.hsm
        return self.software


@dataclass
class Key:
    obj: ObjectRow
    row: VersionRow

    @property
    def kty(self) -> str:
        return str(self.row.extra["kty"])

    @property
    def key_ops(self) -> list[str]:
        return list(self.row.extra.get("key_ops", []))

    @property
    def public(self) -> dict[str, str]:
        return dict(self.row.extra.get("public", {}))


# --- validation ------------------------------------------------------------------------------------------
def _check_kty(view: VaultView, kty: Any) -> str:
    if kty not in SOFTWARE_TYPES + HSM_TYPES:
        raise BadParameter(f"The key type (kty) {str(kty)[:32]!r} is not supported.")
    check_protection(view, str(kty))
    return str(kty)


def check_protection(view: VaultView, kty: str) -> None:
    """HSM key types need a premium vault (Key Vault's rule); the certificates and the internal CA use it too."""
    if kty in HSM_TYPES and view.vault.sku != "premium":
        raise BadParameter(f"Hardware key operation not allowed on standard vault: kty {kty} needs a premium vault.")


def _check_key_ops(value: Any, default: list[str]) -> list[str]:
    if value is None:
        return list(default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter("Property key_ops must be a list of strings.")
    wanted = {v.lower(): v for v in KEY_OPS}
    unknown = [v for v in value if v.lower() not in wanted]
    if unknown:
        raise BadParameter(f"Invalid key operation {unknown[0][:32]!r}.")
    return list(dict.fromkeys(wanted[v.lower()] for v in value))


def _check_release_policy(body: dict[str, Any]) -> None:
    if body.get("release_policy") is not None:
        raise BadParameter("Key release policies are not supported by this server.", code="NotSupported")
    if (body.get("attributes") or {}).get("exportable"):
        raise BadParameter("AKV.SKR.1004: Exportable keys must have release policy.")


def _int_field(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadParameter(f"Property {field} must be an integer.")
    return value


# --- creating versions -----------------------------------------------------------------------------------
def _store(
    view: VaultView, obj: ObjectRow, material: KeyMaterial, *, key_ops: list[str], attributes: Any, tags: Any
) -> Key:
    attrs = rules.check_attributes(attributes)
    tags = rules.check_tags(tags)
    version = rules.new_version()
    stamp = now()
    exp = attrs.get("exp")
    expiry = (obj.data.get("rotationPolicy") or {}).get("attributes", {}).get("expiryTime")
    if exp is None and expiry:
        exp = _add_duration(stamp, expiry)
    extra: dict[str, Any] = {
        "kty": material.kty,
        "key_ops": key_ops,
        "public": material.public,
        "hsm": material.kty in HSM_TYPES,
    }
    if material.size:
        extra["size"] = material.size
    if material.curve:
        extra["crv"] = material.curve
    row = VersionRow(
        vault=view.name,
        kind=KIND,
        name=obj.name,
        version=version,
        created=stamp,
        updated=stamp,
        enabled=attrs.get("enabled", True),
        nbf=attrs.get("nbf"),
        exp=exp,
        tags=tags,
        payload=view.seal(KIND, obj.name, version, "key", material.private),
        extra=extra,
    )
    view.version_put(row)
    obj.latest = version
    view.object_put(obj)
    return Key(obj, row)


def create(view: VaultView, backends: Backends, name: str, body: dict[str, Any]) -> Key:
    rules.check_name(name, "key")
    kty = _check_kty(view, body.get("kty"))
    _check_release_policy(body)
    size, exponent = _int_field(body, "key_size"), _int_field(body, "public_exponent")
    curve = body.get("crv")
    if curve is not None and not isinstance(curve, str):
        raise BadParameter("Property crv must be a string.")
    family = kty.removesuffix("-HSM")
    if family == "RSA" and size is None:
        size = 2048
    if family == "EC" and curve is None:
        curve = "P-256"
    if family == "oct" and size is None:
        size = 256
    key_ops = _check_key_ops(body.get("key_ops"), DEFAULT_OPS[family])
    obj = lifecycle.free_unmanaged(view, KIND, name, "replaced")
    try:
        material = backends.for_type(kty).generate(kty, size=size, curve=curve, public_exponent=exponent)
    except KeyOperationError as exc:
        raise BadParameter(str(exc)) from None
    return _store(view, obj, material, key_ops=key_ops, attributes=body.get("attributes"), tags=body.get("tags"))


def import_key(view: VaultView, backends: Backends, name: str, body: dict[str, Any]) -> Key:
    rules.check_name(name, "key")
    jwk = body.get("key")
    if not isinstance(jwk, dict):
        raise BadParameter("Property key (a JSON web key) is required.")
    kty = jwk.get("kty")
    if body.get("Hsm") is True and kty in SOFTWARE_TYPES:
        kty = f"{kty}-HSM"
    _check_kty(view, kty)
    _check_release_policy(body)
    family = str(kty).removesuffix("-HSM")
    key_ops = _check_key_ops(jwk.get("key_ops"), DEFAULT_OPS[family])
    obj = lifecycle.free_unmanaged(view, KIND, name, "replaced")
    try:
        material = backends.for_type(str(kty)).import_jwk({**jwk, "kty": str(kty)})
    except KeyOperationError as exc:
        raise BadParameter(str(exc)) from None
    return _store(view, obj, material, key_ops=key_ops, attributes=body.get("attributes"), tags=body.get("tags"))


def rotate(view: VaultView, backends: Backends, name: str) -> Key:
    """A new version with the same type, size or curve and key_ops."""
    obj = lifecycle.live(view, KIND, name)
    lifecycle.refuse_if_managed(view, KIND, obj, "rotated")
    current = Key(obj, lifecycle.version(view, KIND, obj, None))
    extra, public = current.row.extra, current.public
    exponent = public.get("e")
    material = backends.for_type(current.kty).generate(
        current.kty,
        size=extra.get("size"),
        curve=extra.get("crv"),
        public_exponent=int.from_bytes(_b64url_decode(exponent), "big") if exponent else None,
    )
    return _store(view, obj, material, key_ops=current.key_ops, attributes=None, tags=current.row.tags)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- reading and changing --------------------------------------------------------------------------------
def get(view: VaultView, name: str, version: str | None) -> Key:
    return Key(*lifecycle.live_version(view, KIND, name, version))


def update(view: VaultView, name: str, version: str | None, body: dict[str, Any]) -> Key:
    key = get(view, name, version)
    lifecycle.refuse_if_managed(view, KIND, key.obj, "updated")
    _check_release_policy(body)
    if "key_ops" in body:
        key.row.extra["key_ops"] = _check_key_ops(body["key_ops"], key.key_ops)
    if "tags" in body:
        key.row.tags = rules.check_tags(body["tags"])
    for field, value in rules.check_attributes(body.get("attributes")).items():
        setattr(key.row, field, value)
    if key.row.nbf is not None and key.row.exp is not None and key.row.nbf > key.row.exp:
        raise BadParameter("Property attributes has invalid value: nbf must not be later than exp.")
    key.row.updated = now()
    view.version_put(key.row)
    return key


def delete(view: VaultView, name: str) -> Key:
    obj = lifecycle.live(view, KIND, name)
    lifecycle.refuse_if_managed(view, KIND, obj, "deleted")
    key = Key(obj, lifecycle.version(view, KIND, obj, None))
    lifecycle.soft_delete(view, obj)
    return key


def get_deleted(view: VaultView, name: str) -> Key:
    obj = lifecycle.deleted(view, KIND, name)
    return Key(obj, lifecycle.version(view, KIND, obj, None))


def recover(view: VaultView, name: str) -> Key:
    obj = lifecycle.deleted(view, KIND, name)
    lifecycle.recover(view, obj)
    return Key(obj, lifecycle.version(view, KIND, obj, None))


def purge(view: VaultView, backends: Backends, name: str) -> None:
    obj = lifecycle.purgeable(view, KIND, name)
    destroy_versions(view, backends, obj)
    view.object_purge(KIND, obj.name)


def destroy_versions(view: VaultView, backends: Backends, obj: ObjectRow) -> None:
    """HSM objects leave the token once the transaction has committed; software keys vanish with their rows."""
    after = None
    while True:
        rows = view.version_list(KIND, obj.name, after_seq=after, limit=100)
        if not rows:
            return
        for row in rows:
            if row.extra.get("hsm"):
                backends.destroy_after_commit(view.tx, _material(view, row))
        after = rows[-1].seq


def list_latest(view: VaultView, *, deleted: bool, after: str | None, limit: int) -> list[Key]:
    return [Key(o, r) for o, r in lifecycle.latest_rows(view, KIND, deleted=deleted, after=after, limit=limit)]


def list_versions(view: VaultView, name: str, *, after_seq: int | None, limit: int) -> list[Key]:
    obj, rows = lifecycle.version_rows(view, KIND, name, after_seq=after_seq, limit=limit)
    return [Key(obj, row) for row in rows]


# --- cryptographic operations ----------------------------------------------------------------------------
def _material(view: VaultView, row: VersionRow, *, private: bool = True) -> KeyMaterial:
    """The key as the backends take it; with private=False without its private part (which stays sealed)."""
    extra = row.extra
    return KeyMaterial(
        kty=str(extra["kty"]),
        public=dict(extra.get("public", {})),
        private=view.open(KIND, row.name, row.version, "key", row.payload) if private else b"",
        size=extra.get("size"),
        curve=extra.get("crv"),
    )


def _check_usable(key: Key, op: str) -> None:
    row = key.row
    if not row.enabled:
        raise Forbidden(f"Operation {op} is not allowed on a disabled key.", inner="KeyDisabled")
    if op not in key.key_ops:
        raise BadParameter(f"Operation {op} is not permitted by the key's key_ops.", code="BadParameter")
    stamp = now()
    if op not in _ALLOWED_OUTSIDE_DATES:
        if row.exp is not None and stamp > row.exp:
            raise Forbidden(f"Operation {op} is not allowed on an expired key.", inner="KeyExpired")
        if row.nbf is not None and stamp < row.nbf:
            raise Forbidden(f"Operation {op} is not allowed on a key that is not yet valid.", inner="KeyNotYetValid")


def operate(
    view: VaultView,
    backends: Backends,
    name: str,
    version: str | None,
    op: str,
    inputs: dict[str, bytes | None],
    alg: str,
) -> tuple[Key, Callable[[], dict[str, bytes | bool | None]]]:
    """Encrypt, decrypt, sign, verify, wrapKey or unwrapKey (inputs are decoded bytes): the key, checked usable, and
    the operation itself as a function, to run when and where the caller chooses (outside the transaction)."""
    key = get(view, name, version)
    _check_usable(key, op)
    backend = backends.for_type(key.kty)
    material = _material(view, key.row, private=not (op in _PUBLIC_OPERATIONS and key.kty in ("RSA", "EC")))
    value = inputs.get("value") or b""

    def compute() -> dict[str, bytes | bool | None]:
        try:
            if op == "encrypt":
                result = backend.encrypt(material, alg, value, iv=inputs.get("iv"), aad=inputs.get("aad"))
                return {"value": result.value, "iv": result.iv, "tag": result.tag, "aad": result.aad}
            if op == "decrypt":
                iv, aad, tag = inputs.get("iv"), inputs.get("aad"), inputs.get("tag")
                return {"value": backend.decrypt(material, alg, value, iv=iv, aad=aad, tag=tag)}
            if op == "wrapKey":
                return {"value": backend.wrap(material, alg, value)}
            if op == "unwrapKey":
                return {"value": backend.unwrap(material, alg, value)}
            if op == "sign":
                return {"value": backend.sign(material, alg, inputs.get("digest") or value)}
            if op == "verify":
                return {"value": backend.verify(material, alg, inputs.get("digest") or b"", value)}
        except KeyOperationError as exc:
            raise BadParameter(str(exc)) from None
        raise BadParameter(f"Unknown key operation {op}.")

    return key, compute


def random_bytes(count: Any) -> bytes:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 128:
        raise BadParameter("GetRandomBytesRequest: count cannot be greater than 128 or less than 1")
    return secrets.token_bytes(count)


# --- rotation policy -------------------------------------------------------------------------------------
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last second a date can name


def _add_duration(start: int, duration: str) -> int:
    match = _DURATION.match(duration)
    if not match or not any(match.groups()):
        raise BadParameter(f"Invalid ISO 8601 duration {duration[:32]!r}: use PnYnMnD or PTnH, e.g. P90D.")
    years, months, weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    moment = datetime.fromtimestamp(start, UTC)
    month_index = moment.month - 1 + months + 12 * years
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])  # Jan 31 + P1M: the last day of February
    try:
        end = int(moment.replace(year=year, month=month, day=day).timestamp())
        end += (weeks * 7 + days) * 86400 + hours * 3600 + minutes * 60 + seconds
    except (ValueError, OverflowError):  # past year 9999
        end = _MAX_TIMESTAMP + 1
    if end > _MAX_TIMESTAMP:
        raise BadParameter(f"Invalid ISO 8601 duration {duration[:32]!r}: the time it gives is out of range.")
    return end


# Key Vault's limits on a rotation policy (docs: how-to-configure-key-rotation; the expiryTime model doc).
_MIN_TRIGGER_SECONDS = 7 * 86400  # a rotation no sooner than 7 days after creation, nor later than 7 before expiry
_MIN_EXPIRY_SECONDS = 28 * 86400


def _check_policy(actions: list[dict[str, Any]], expiry: str | None, stamp: int) -> None:
    """Key Vault's rules for a policy whose members are well formed (durations measured from `stamp`)."""
    kinds = [action["action"]["type"] for action in actions]
    if kinds.count("Rotate") > 1 or kinds.count("Notify") > 1:
        raise BadParameter("A rotation policy can have at most one Rotate and one Notify lifetime action.")
    expires_after = None
    if expiry is not None:
        expires_after = _add_duration(stamp, expiry) - stamp
        if expires_after < _MIN_EXPIRY_SECONDS:
            raise BadParameter(f"The rotation policy's expiryTime {expiry[:32]!r} must be at least 28 days.")
    for action in actions:
        ((member, duration),) = action["trigger"].items()
        kind = action["action"]["type"]
        if member == "timeAfterCreate" and kind != "Rotate":
            raise BadParameter("The timeAfterCreate trigger is allowed only for a Rotate lifetime action.")
        if member == "timeBeforeExpiry" and kind == "Rotate" and expires_after is None:
            raise BadParameter("A Rotate action triggered by timeBeforeExpiry needs the policy's expiryTime.")
        length = _add_duration(stamp, duration) - stamp
        if length < _MIN_TRIGGER_SECONDS:
            raise BadParameter(f"The lifetime action's {member} {duration[:32]!r} must be at least 7 days.")
        if kind == "Rotate" and expires_after is not None and length > expires_after - _MIN_TRIGGER_SECONDS:
            raise BadParameter(
                f"The lifetime action's {member} {duration[:32]!r} must leave at least 7 days before the expiryTime "
                f"{str(expiry)[:32]!r}."
            )


def get_policy(view: VaultView, name: str) -> dict[str, Any]:
    obj = lifecycle.live(view, KIND, name)
    policy = obj.data.get("rotationPolicy")
    if policy is None:
        return {
            "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
            "attributes": {},
        }
    return dict(policy)


def set_policy(view: VaultView, name: str, body: dict[str, Any]) -> dict[str, Any]:
    obj = lifecycle.live(view, KIND, name)
    actions = body.get("lifetimeActions") or []
    if not isinstance(actions, list):
        raise BadParameter("lifetimeActions must be a list.")
    clean_actions = []
    shape = "A lifetime action must be an object with a trigger object and an action object."
    for item in actions:
        action = item or {}
        if not isinstance(action, dict):
            raise BadParameter(shape)
        trigger, what = action.get("trigger") or {}, action.get("action") or {}
        if not isinstance(trigger, dict) or not isinstance(what, dict):
            raise BadParameter(shape)
        kind = str(what.get("type", ""))
        if kind.lower() not in ("rotate", "notify"):
            raise BadParameter("A lifetime action's type must be Rotate or Notify.")
        triggers = {k: str(v) for k, v in trigger.items() if k in ("timeAfterCreate", "timeBeforeExpiry") and v}
        if len(triggers) != 1:
            raise BadParameter("A lifetime action needs exactly one trigger: timeAfterCreate or timeBeforeExpiry.")
        clean_actions.append(
            {"trigger": triggers, "action": {"type": "Rotate" if kind.lower() == "rotate" else "Notify"}}
        )
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise BadParameter("The rotation policy's attributes must be an object.")
    expiry = attributes.get("expiryTime")
    stamp = now()
    # durations are measured from now, as the scheduler will apply them (from 0, P7990Y would pass)
    _check_policy(clean_actions, None if expiry is None else str(expiry), stamp)
    previous = obj.data.get("rotationPolicy") or {}
    created = (previous.get("attributes") or {}).get("created", stamp)
    policy = {
        "lifetimeActions": clean_actions,
        "attributes": {**({"expiryTime": expiry} if expiry else {}), "created": created, "updated": stamp},
    }
    obj.data = {**obj.data, "rotationPolicy": policy}
    view.object_put(obj)
    return policy


def due_action(key: Key, at: int) -> str | None:
    """ "Rotate" or "Notify" when the key's rotation policy says so at time `at` (for the scheduler)."""
    policy = key.obj.data.get("rotationPolicy") or {}
    for action in policy.get("lifetimeActions", []):
        trigger, kind = action["trigger"], action["action"]["type"]
        if "timeAfterCreate" in trigger and _add_duration(key.row.created, trigger["timeAfterCreate"]) <= at:
            return str(kind)
        before = trigger.get("timeBeforeExpiry")
        if before and key.row.exp is not None and key.row.exp - _add_duration(0, before) <= at:
            return str(kind)
    return None


# --- backup and restore ----------------------------------------------------------------------------------
def backup(view: VaultView, name: str) -> bytes:
    obj, rows = lifecycle.backup_rows(view, KIND, name)
    versions = [
        {
            **lifecycle.backup_version(r),
            "tags": r.tags,
            "managed": r.managed,
            "extra": r.extra,
            "key": view.open(KIND, r.name, r.version, "key", r.payload).hex(),
        }
        for r in rows
    ]
    return lifecycle.seal_backup(view, obj, versions, with_data=True)


def _parse_backup(view: VaultView, document: dict[str, Any]) -> tuple[str, str, list[VersionRow], dict[str, Any]]:
    name, latest = rules.check_name(str(document["name"]), "key"), str(document["latest"])
    rows = []
    for item in document["versions"]:
        version = str(item["version"])
        if not re.fullmatch(r"[0-9a-f]{32}", version) or not isinstance(item["extra"], dict):
            raise ValueError("bad version")
        rows.append(
            VersionRow(
                vault=view.name,
                kind=KIND,
                name=name,
                version=version,
                created=int(item["created"]),
                updated=int(item["updated"]),
                enabled=bool(item["enabled"]),
                nbf=item["nbf"],
                exp=item["exp"],
                tags=rules.check_tags(item["tags"]),
                managed=bool(item["managed"]),
                extra=item["extra"],
                payload=view.seal(KIND, name, version, "key", bytes.fromhex(item["key"])),
            )
        )
    lifecycle.latest_restored(rows, latest)
    return name, latest, rows, dict(document.get("data") or {})


def restore(view: VaultView, backends: Backends, blob: bytes) -> Key:
    """An HSM key's versions get copies of their token objects: the restored key and the original (in this vault
    after a purge, or in another vault) each own theirs, so purging or deleting one never breaks the other."""
    name, latest, rows, data = lifecycle.read_backup(view, KIND, blob, lambda document: _parse_backup(view, document))
    lifecycle.check_restorable(view, KIND, name)
    copies: list[tuple[KeyBackend, KeyMaterial]] = []
    try:
        for row in rows:
            if row.extra.get("hsm"):
                backend = backends.for_type(str(row.extra["kty"]))
                try:
                    copy = backend.duplicate(_material(view, row))
                except KeyMissing as exc:
                    raise BadParameter(f"{exc} (HSM key backups restore only where the token holds the key)") from None
                except KeyOperationError as exc:
                    raise BadParameter(str(exc)) from None
                copies.append((backend, copy))
                row.payload = view.seal(KIND, row.name, row.version, "key", copy.private)
        return Key(*lifecycle.put_restored(view, KIND, name, latest, rows, data))
    except BaseException:
        for backend, copy in copies:  # made for nothing
            try:
                backend.destroy(copy)
            except Exception as error:
                log.warning("could not remove the copy of an HSM key of a failed restore (%s)", type(error).__name__)
        raise
