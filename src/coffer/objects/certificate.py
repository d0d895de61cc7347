"""Certificates: versioned X.509 certificates, each version backed by a managed key and a managed secret of the
same name and version id (Key Vault's model). Issuer "Self" issues at once; soft delete, recovery and purge cover
the certificate and its backing key and secret together."""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from coffer.barrier import VaultView
from coffer.clock import now
from coffer.crypto import certs
from coffer.crypto.keys import (
    CURVES,
    HSM_TYPES,
    RSA_SIZES,
    KeyBackend,
    KeyBackendUnavailable,
    KeyMaterial,
    KeyOperationError,
)
from coffer.errors import BadParameter, Conflict, NotFound
from coffer.objects import key as keys
from coffer.objects import lifecycle, rules
from coffer.objects import secret as secrets
from coffer.storage import ObjectRow, VersionRow

log = logging.getLogger("coffer")

KIND = "certificate"
CA_KIND = "certificate-ca"
CA_PROVIDERS = ("Coffer", "coffer-internal-ca")
_ISSUER_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
CERTIFICATE_KEY_TYPES = ("RSA", "EC", "RSA-HSM", "EC-HSM")
_HSM_EXPORTABLE = (
    "Exportable keys are supported only for key types RSA and EC: the private key of an HSM key (RSA-HSM, EC-HSM) "
    "cannot be exported, so key_props.exportable must be false."
)
_IN_PROGRESS = (
    "A new key vault certificate can not be created or imported while a pending key vault certificate's status is "
    "inProgress."
)


@dataclass
class Certificate:
    obj: ObjectRow
    row: VersionRow

    @property
    def cer(self) -> str:
        return str(self.row.extra["cer"])

    @property
    def x5t(self) -> str:
        return str(self.row.extra["x5t"])

    @property
    def policy(self) -> dict[str, Any]:
        return dict(self.obj.data.get("policy") or {})


# --- policy ----------------------------------------------------------------------------------------------
def _str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f"Property {field} must be a list of strings.")
    return list(value)


def _dict(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadParameter(f"Property {field} must be an object.")
    return value


def check_policy(body: Any, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete policy from a (possibly partial) request policy merged over `previous`."""
    given = _dict(body, "policy")
    old = previous or {}
    given_key_props = _dict(given.get("key_props"), "key_props")
    key_props = {**_dict(old.get("key_props"), "key_props"), **given_key_props}
    kty = key_props.get("kty") or "RSA"
    if kty not in CERTIFICATE_KEY_TYPES:
        raise BadParameter(f"The key type (kty) {str(kty)[:32]!r} is not supported for certificates.")
    key_props["kty"] = kty
    family = kty.removesuffix("-HSM")
    if family == "RSA":
        key_props.setdefault("key_size", 2048)
        key_props.pop("crv", None)
        if isinstance(key_props["key_size"], bool) or key_props["key_size"] not in RSA_SIZES:
            raise BadParameter(f"Property key_size must be one of {', '.join(map(str, RSA_SIZES))}.")
    else:
        key_props["crv"] = key_props.get("crv") or "P-256"
        key_props.pop("key_size", None)
        if key_props["crv"] not in CURVES:
            raise BadParameter(f"Property crv must be one of {', '.join(CURVES)}.")
    if kty in HSM_TYPES:
        # the private key of an HSM key never leaves the token: Key Vault allows exportable keys only for RSA and EC
        if given_key_props.get("exportable") is True:
            raise BadParameter(_HSM_EXPORTABLE)
        key_props["exportable"] = False
    else:
        key_props["exportable"] = bool(key_props.get("exportable", True))
    key_props["reuse_key"] = bool(key_props.get("reuse_key", False))
    secret_props = {
        **_dict(old.get("secret_props"), "secret_props"),
        **_dict(given.get("secret_props"), "secret_props"),
    }
    content_type = secret_props.get("contentType") or PKCS12
    if content_type not in (PKCS12, PEM):
        raise BadParameter(f"Content type {str(content_type)[:48]!r} is not supported: use {PKCS12} or {PEM}.")
    secret_props["contentType"] = content_type
    x509_props = {**_dict(old.get("x509_props"), "x509_props"), **_dict(given.get("x509_props"), "x509_props")}
    sans = _dict(x509_props.get("sans"), "sans")
    subject = x509_props.get("subject")
    names = [*_str_list(sans.get("dns_names"), "dns_names"), *_str_list(sans.get("emails"), "emails")]
    names += _str_list(sans.get("upns"), "upns")
    if not subject and not names:
        raise BadParameter("Property policy.x509_props needs a subject or subject alternative names.")
    if subject is not None and not isinstance(subject, str):
        raise BadParameter("Property subject must be a string.")
    months = x509_props.get("validity_months", 12)
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 1200:
        raise BadParameter("Property validity_months must be an integer between 1 and 1200.")
    x509_props["validity_months"] = months
    usages = _str_list(x509_props.get("key_usage"), "key_usage")
    if [u for u in usages if u not in certs.KEY_USAGES]:
        raise BadParameter("Property key_usage has an unknown key usage.")
    if "key_usage" not in x509_props:
        x509_props["key_usage"] = (
            ["digitalSignature", "keyEncipherment"] if family == "RSA" else ["digitalSignature", "keyAgreement"]
        )
    if "ekus" not in x509_props:
        x509_props["ekus"] = list(certs.DEFAULT_EKUS)
    _str_list(x509_props["ekus"], "ekus")
    issuer = {**_dict(old.get("issuer"), "issuer"), **_dict(given.get("issuer"), "issuer")}
    issuer["name"] = issuer.get("name") or "Self"
    if not isinstance(issuer["name"], str) or not _ISSUER_NAME.fullmatch(issuer["name"]):
        raise BadParameter(f"Issuer {str(issuer['name'])[:32]!r} is not a valid issuer name.")
    if issuer["name"].lower() in ("self", "unknown"):
        issuer["name"] = "Self" if issuer["name"].lower() == "self" else "Unknown"
    lifetime = given.get("lifetime_actions", old.get("lifetime_actions"))
    if lifetime is None:
        lifetime = [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}]
    if not isinstance(lifetime, list):
        raise BadParameter("Property lifetime_actions must be a list.")
    for action in lifetime:
        trigger = _dict(_dict(action, "lifetime_actions").get("trigger"), "trigger")
        percentage = trigger.get("lifetime_percentage")
        if percentage is not None and (
            isinstance(percentage, bool) or not isinstance(percentage, int) or not 1 <= percentage <= 99
        ):
            raise BadParameter("Property lifetime_percentage must be an integer between 1 and 99.")
    stamp = now()
    old_attrs = _dict(old.get("attributes"), "attributes")
    enabled = _dict(given.get("attributes"), "attributes").get("enabled", old_attrs.get("enabled", True))
    return {
        "key_props": key_props,
        "secret_props": secret_props,
        "x509_props": x509_props,
        "lifetime_actions": lifetime,
        "issuer": issuer,
        "attributes": {"enabled": bool(enabled), "created": old_attrs.get("created", stamp), "updated": stamp},
    }


# --- creating ------------------------------------------------------------------------------------------------
def create(
    view: VaultView, backends: keys.Backends, name: str, body: dict[str, Any], *, vault_url: str
) -> tuple[ObjectRow, Certificate | None]:
    """Issue a version per the policy: at once for issuer Self or an internal CA (the certificate), or, for issuer
    Unknown, a pending operation with a CSR (None). obj.data["pending"] holds the operation. Policies with kty
    RSA-HSM or EC-HSM (premium vaults) get a key generated in the HSM, which signs the certificate or CSR there."""
    rules.check_name(name, "certificate")
    obj = lifecycle.free_name(view, KIND, name)
    pending = obj.data.get("pending") or {}
    if pending.get("status") == "inProgress":
        raise Conflict(_IN_PROGRESS)
    policy = check_policy(body.get("policy"), obj.data.get("policy"))
    tags = rules.check_tags(body.get("tags"))
    attrs = rules.check_attributes(body.get("attributes"))
    key_obj = lifecycle.free_name(view, keys.KIND, name)
    secret_obj = lifecycle.free_name(view, "secret", name)
    kp, x5 = policy["key_props"], policy["x509_props"]
    keys.check_protection(view, kp["kty"])
    backend = backends.for_type(kp["kty"])
    ca = None
    if policy["issuer"]["name"] not in ("Self", "Unknown"):
        ca = _internal_ca(view, backends, policy["issuer"]["name"])
    material = _reused_key(view, key_obj, kp) if kp["reuse_key"] else None
    reused = material is not None
    if material is None:
        try:
            material = backend.generate(kp["kty"], size=kp.get("key_size"), curve=kp.get("crv"))
        except KeyOperationError as exc:
            raise BadParameter(str(exc)) from None
    try:
        signer = certs.key_signer(backend, material)
        if policy["issuer"]["name"] == "Unknown":
            _start_pending(view, obj, signer, material, policy, tags, attrs, reused=reused)
            return obj, None
        try:
            der = certs.issue(
                signer,
                (ca[0], ca[1][0]) if ca is not None else None,
                **_subject(x5),
                validity_months=int(x5["validity_months"]),
            )
        except (certs.CertificateError, KeyOperationError) as exc:
            raise BadParameter(str(exc)) from None
        chain = ca[1] if ca is not None else []
        return obj, _store(view, obj, key_obj, secret_obj, material, der, chain, policy, tags, attrs, vault_url)
    except BaseException:
        if not reused:  # an HSM key made for nothing leaves the token again
            _destroy_quietly(backend, material)
        raise


class _Subject(TypedDict):
    subject: str
    dns_names: list[str]
    emails: list[str]
    upns: list[str]
    key_usage: list[str]
    ekus: list[str]


def _subject(x5: dict[str, Any]) -> _Subject:
    """What a policy's x509_props ask of a certificate or CSR: subject, alternative names and usages."""
    sans = x5.get("sans") or {}
    return _Subject(
        subject=x5.get("subject") or "",
        dns_names=list(sans.get("dns_names") or []),
        emails=list(sans.get("emails") or []),
        upns=list(sans.get("upns") or []),
        key_usage=list(x5.get("key_usage") or []),
        ekus=list(x5.get("ekus") or []),
    )


def _destroy_quietly(backend: KeyBackend, material: KeyMaterial) -> None:
    try:
        backend.destroy(material)
    except (KeyBackendUnavailable, KeyOperationError) as exc:
        log.warning("could not remove an unused %s key from the HSM: %s", material.kty, type(exc).__name__)


def _store(
    view: VaultView,
    obj: ObjectRow,
    key_obj: ObjectRow,
    secret_obj: ObjectRow,
    material: KeyMaterial,
    der: bytes,
    chain: list[bytes],
    policy: dict[str, Any],
    tags: dict[str, str] | None,
    attrs: dict[str, Any],
    vault_url: str,
) -> Certificate:
    """Write the certificate version and its backing key and secret versions (one version id)."""
    name = obj.name
    kp = policy["key_props"]
    info = certs.inspect(der)
    version = rules.new_version()
    stamp = now()
    enabled = attrs.get("enabled", True)
    content_type = policy["secret_props"]["contentType"]
    hsm = material.kty in HSM_TYPES
    exportable = bool(kp["exportable"]) and not hsm
    private = material.private if exportable else None  # HSM keys: a reference, never part of the secret
    if content_type == PEM:
        value = certs.export_pem(der, private, chain)
    else:
        value = base64.b64encode(certs.export_pkcs12(der, private, name, chain)).decode("ascii")

    def new_row(kind: str, row_name: str) -> VersionRow:
        return VersionRow(
            vault=view.name,
            kind=kind,
            name=row_name,
            version=version,
            created=stamp,
            updated=stamp,
            enabled=enabled,
            nbf=info.not_before,
            exp=info.not_after,
            tags=tags,
        )

    key_extra: dict[str, Any] = {
        "kty": material.kty,
        "key_ops": list(keys.DEFAULT_OPS[material.family]),
        "public": material.public,
        "hsm": hsm,
    }
    if material.size:
        key_extra["size"] = material.size
    if material.curve:
        key_extra["crv"] = material.curve
    key_row = new_row(keys.KIND, key_obj.name)
    key_row.managed = True
    key_row.payload = view.seal(keys.KIND, key_obj.name, version, "key", material.private)
    key_row.extra = key_extra
    secret_row = new_row("secret", secret_obj.name)
    secret_row.content_type = content_type
    secret_row.managed = True
    secret_row.kid = f"{vault_url}/keys/{key_obj.name}/{version}"
    secret_row.payload = view.seal("secret", secret_obj.name, version, "value", value.encode("utf-8"))
    cert_row = new_row(KIND, obj.name)
    cert_row.content_type = content_type
    cert_row.extra = {"cer": base64.b64encode(der).decode("ascii"), "x5t": info.x5t}
    for row, target in ((key_row, key_obj), (secret_row, secret_obj), (cert_row, obj)):
        view.version_put(row)
        target.latest = version
    view.object_put(key_obj)
    view.object_put(secret_obj)
    obj.data = {
        **obj.data,
        "policy": policy,
        "pending": {
            "issuer": {"name": policy["issuer"]["name"]},
            "cancellation_requested": False,
            "status": "completed",
            "request_id": rules.new_version(),
            "target": obj.name,
        },
    }
    view.object_put(obj)
    return Certificate(obj, cert_row)


def _reused_key(view: VaultView, key_obj: ObjectRow, key_props: dict[str, Any]) -> KeyMaterial | None:
    """The latest backing key again (policy reuse_key), when it is a key of the policy's type, size or curve (an
    HSM key is reused by reference: the new version signs with the same token object)."""
    if key_obj.latest is None:
        return None
    row = view.version_get(keys.KIND, key_obj.name, key_obj.latest)
    if row is None or not row.managed or row.extra.get("kty") != key_props["kty"]:
        return None
    if bool(row.extra.get("hsm")) != (key_props["kty"] in HSM_TYPES):
        return None
    if row.extra.get("size") != key_props.get("key_size") or row.extra.get("crv") != key_props.get("crv"):
        return None
    return KeyMaterial(
        kty=str(row.extra["kty"]),
        public=dict(row.extra.get("public") or {}),
        private=view.open(keys.KIND, row.name, row.version, "key", row.payload),
        size=row.extra.get("size"),
        curve=row.extra.get("crv"),
    )


def _start_pending(
    view: VaultView,
    obj: ObjectRow,
    signer: certs.Signer,
    material: KeyMaterial,
    policy: dict[str, Any],
    tags: dict[str, str] | None,
    attrs: dict[str, Any],
    *,
    reused: bool,
) -> None:
    """Issuer Unknown: keep the new key (sealed; an HSM key's reference) and its CSR until the signed certificate is
    merged."""
    try:
        csr = certs.build_csr(signer, **_subject(policy["x509_props"]))
    except (certs.CertificateError, KeyOperationError) as exc:
        raise BadParameter(str(exc)) from None
    request_id = rules.new_version()
    sealed = view.seal(KIND, obj.name, "pending-" + request_id, "key", material.private)
    obj.data = {
        **obj.data,
        "policy": policy,
        "pending": {
            "issuer": {"name": "Unknown"},
            "csr": base64.b64encode(csr).decode("ascii"),
            "cancellation_requested": False,
            "status": "inProgress",
            "status_details": "Pending certificate created. Please Perform Merge to complete the request.",
            "request_id": request_id,
            "key": sealed.hex(),
            "kty": material.kty,
            "hsm": material.kty in HSM_TYPES,
            "reused": reused,
            "public": material.public,
            "size": material.size,
            "crv": material.curve,
            "newPolicy": policy,
            "tags": tags,
            "attributes": attrs,
        },
    }
    view.object_put(obj)
    return None


def _pending_material(view: VaultView, obj: ObjectRow, pending: dict[str, Any]) -> KeyMaterial:
    private = view.open(KIND, obj.name, "pending-" + str(pending["request_id"]), "key", bytes.fromhex(pending["key"]))
    return KeyMaterial(
        kty=str(pending["kty"]),
        public=dict(pending.get("public") or {}),
        private=private,
        size=pending.get("size"),
        curve=pending.get("crv"),
    )


def _release_pending_key(view: VaultView, backends: keys.Backends, obj: ObjectRow, pending: dict[str, Any]) -> None:
    """A pending operation that will never be merged: its HSM key leaves the token (unless it is a reused key, which
    a version still holds). A software key is forgotten with the operation."""
    if not pending.get("key") or not pending.get("hsm") or pending.get("reused"):
        return
    backends.destroy_after_commit(view.tx, _pending_material(view, obj, pending))


def release_hsm_objects(view: VaultView, backends: keys.Backends, obj: ObjectRow) -> None:
    """Before a certificate object is purged: the HSM key of its unmerged pending operation leaves the token (the
    backing key's versions are the key object's, see key.destroy_versions)."""
    _release_pending_key(view, backends, obj, dict(obj.data.get("pending") or {}))


def merge(view: VaultView, name: str, body: dict[str, Any], *, vault_url: str) -> Certificate:
    obj, pending = pending_operation(view, name)
    if pending.get("status") != "inProgress" or not pending.get("key"):
        raise BadParameter("Pending certificate not found or not in progress.", code="PendingCertificateNotFound")
    x5c = body.get("x5c")
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise BadParameter("Property x5c is required: a list of base64 DER certificates.")
    try:
        chain = [base64.b64decode(c, validate=True) for c in x5c]
    except ValueError:
        raise BadParameter("Property x5c holds invalid base64.") from None
    request_id = str(pending["request_id"])
    material = _pending_material(view, obj, pending)
    try:
        if not certs.matches_key(chain[0], material):
            raise BadParameter("Public key from x509 certificate and key of this instance doesn't match")
        for extra in chain[1:]:
            certs.inspect(extra)
    except certs.CertificateError as exc:
        raise BadParameter(str(exc)) from None
    tags = rules.check_tags(body["tags"]) if body.get("tags") is not None else pending.get("tags")
    attrs = {**(pending.get("attributes") or {}), **rules.check_attributes(body.get("attributes"))}
    key_obj = lifecycle.free_name(view, keys.KIND, name)
    secret_obj = lifecycle.free_name(view, "secret", name)
    cert = _store(
        view, obj, key_obj, secret_obj, material, chain[0], chain[1:], pending["newPolicy"], tags, attrs, vault_url
    )
    obj.data["pending"] = {
        "issuer": {"name": "Unknown"},
        "csr": pending.get("csr"),
        "cancellation_requested": False,
        "status": "completed",
        "request_id": request_id,
        "target": obj.name,
    }
    view.object_put(obj)
    return cert


def delete_pending(view: VaultView, backends: keys.Backends, name: str) -> tuple[ObjectRow, dict[str, Any]]:
    obj, pending = pending_operation(view, name)
    _release_pending_key(view, backends, obj, pending)
    if obj.latest is None:
        view.object_purge(KIND, obj.name)
    else:
        obj.data = {k: v for k, v in obj.data.items() if k != "pending"}
        view.object_put(obj)
    return obj, pending


def cancel_pending(
    view: VaultView, backends: keys.Backends, name: str, body: dict[str, Any]
) -> tuple[ObjectRow, dict[str, Any]]:
    obj, pending = pending_operation(view, name)
    flag = body.get("cancellation_requested")
    if not isinstance(flag, bool):
        raise BadParameter("Property cancellation_requested is required and must be a boolean.")
    if flag and pending.get("status") == "inProgress":
        _release_pending_key(view, backends, obj, pending)
        pending.update(cancellation_requested=True, status="cancelled", status_details="Cancelled by the user.")
        pending.pop("key", None)
        obj.data = {**obj.data, "pending": pending}
        view.object_put(obj)
    return obj, pending


def import_certificate(
    view: VaultView, backends: keys.Backends, name: str, body: dict[str, Any], *, vault_url: str
) -> Certificate:
    rules.check_name(name, "certificate")
    value, password = body.get("value"), body.get("pwd")
    if not isinstance(value, str) or not value:
        raise BadParameter("Property value is required and must be a string.")
    if password is not None and not isinstance(password, str):
        raise BadParameter("Property pwd must be a string.")
    obj = lifecycle.free_name(view, KIND, name)
    if (obj.data.get("pending") or {}).get("status") == "inProgress":
        raise Conflict(_IN_PROGRESS)
    try:
        imported = certs.load_import(value, password)
        info = certs.inspect(imported.cert_der)
    except certs.CertificateError as exc:
        raise BadParameter(str(exc)) from None
    try:
        material = backends.software.import_jwk(certs.private_jwk(imported.private_der))
    except (KeyOperationError, certs.CertificateError) as exc:
        raise BadParameter(str(exc)) from None
    given = dict(body.get("policy") or {})
    previous = obj.data.get("policy") or {}
    if (given.get("key_props") or {}).get("kty") in HSM_TYPES:
        raise BadParameter(
            "Importing a certificate's private key into the HSM is not supported by this server: import it with "
            "key type RSA or EC, or create the certificate with an HSM key type instead.",
            code="NotSupported",
        )
    x509_props = {**(previous.get("x509_props") or {}), **(given.get("x509_props") or {})}
    x509_props.setdefault("subject", info.subject)
    key_props = {**(previous.get("key_props") or {}), **(given.get("key_props") or {})}
    key_props.update(kty=material.kty, key_size=material.size, crv=material.curve)
    secret_props = dict(given.get("secret_props") or previous.get("secret_props") or {})
    if not secret_props.get("contentType"):
        secret_props["contentType"] = PEM if imported.pem else PKCS12
    policy = check_policy(
        {**given, "x509_props": x509_props, "key_props": key_props, "secret_props": secret_props}, previous
    )
    tags = rules.check_tags(body.get("tags"))
    attrs = rules.check_attributes(body.get("attributes"))
    key_obj = lifecycle.free_name(view, keys.KIND, name)
    secret_obj = lifecycle.free_name(view, "secret", name)
    return _store(
        view, obj, key_obj, secret_obj, material, imported.cert_der, imported.chain, policy, tags, attrs, vault_url
    )


# --- reading and changing ------------------------------------------------------------------------------------
def get(view: VaultView, name: str, version: str | None) -> Certificate:
    obj = lifecycle.live(view, KIND, name)
    return Certificate(obj, lifecycle.version(view, KIND, obj, version))


def pending_operation(view: VaultView, name: str) -> tuple[ObjectRow, dict[str, Any]]:
    rules.check_name(name, "certificate")
    obj = view.object_get(KIND, name)
    if obj is None or obj.deleted is not None or not obj.data.get("pending"):
        raise lifecycle.not_found(KIND, name)
    return obj, dict(obj.data["pending"])


def _backing(view: VaultView, kind: str, name: str, version: str) -> tuple[ObjectRow, VersionRow] | None:
    obj = view.object_get(kind, name)
    if obj is None:
        return None
    row = view.version_get(kind, obj.name, version)
    return (obj, row) if row is not None and row.managed else None


def update(view: VaultView, name: str, version: str | None, body: dict[str, Any]) -> Certificate:
    cert = get(view, name, version)
    if "policy" in body and body["policy"] is not None:
        cert.obj.data = {**cert.obj.data, "policy": check_policy(body["policy"], cert.policy)}
        view.object_put(cert.obj)
    tags = rules.check_tags(body["tags"]) if "tags" in body else None
    enabled = rules.check_attributes(body.get("attributes")).get("enabled")
    rows = [cert.row]
    for kind in (keys.KIND, "secret"):
        found = _backing(view, kind, cert.obj.name, cert.row.version)
        if found is not None:
            rows.append(found[1])
    stamp = now()
    for row in rows:
        if "tags" in body:
            row.tags = tags
        if enabled is not None:
            row.enabled = enabled
        row.updated = stamp
        view.version_put(row)
    return cert


def get_policy(view: VaultView, name: str) -> tuple[ObjectRow, dict[str, Any]]:
    obj = lifecycle.live(view, KIND, name)
    return obj, dict(obj.data.get("policy") or {})


def set_policy(view: VaultView, name: str, body: Any) -> tuple[ObjectRow, dict[str, Any]]:
    obj = lifecycle.live(view, KIND, name)
    policy = check_policy(body, obj.data.get("policy"))
    obj.data = {**obj.data, "policy": policy}
    view.object_put(obj)
    return obj, policy


def _companions(view: VaultView, name: str, *, deleted: bool) -> list[ObjectRow]:
    found = []
    for kind in (keys.KIND, "secret"):
        obj = view.object_get(kind, name)
        if obj is not None and (obj.deleted is not None) == deleted and obj.latest is not None:
            row = view.version_get(kind, obj.name, obj.latest)
            if row is not None and row.managed:
                found.append(obj)
    return found


def delete(view: VaultView, name: str) -> Certificate:
    cert = get(view, name, None)
    for companion in _companions(view, cert.obj.name, deleted=False):
        lifecycle.soft_delete(view, companion)
    lifecycle.soft_delete(view, cert.obj)
    return cert


def get_deleted(view: VaultView, name: str) -> Certificate:
    obj = lifecycle.deleted(view, KIND, name)
    return Certificate(obj, lifecycle.version(view, KIND, obj, None))


def recover(view: VaultView, name: str) -> Certificate:
    obj = lifecycle.deleted(view, KIND, name)
    for companion in _companions(view, obj.name, deleted=True):
        lifecycle.recover(view, companion)
    lifecycle.recover(view, obj)
    return Certificate(obj, lifecycle.version(view, KIND, obj, None))


def purge(view: VaultView, backends: keys.Backends, name: str) -> None:
    obj = lifecycle.purgeable(view, KIND, name)
    release_hsm_objects(view, backends, obj)
    for companion in _companions(view, obj.name, deleted=True):
        if companion.kind == keys.KIND:
            keys.destroy_versions(view, backends, companion)
        view.object_purge(companion.kind, companion.name)
    view.object_purge(KIND, obj.name)


def release_vault_hsm_objects(view: VaultView, backends: keys.Backends) -> None:
    """Before a vault is deleted: every HSM object it holds (its keys' versions, live or deleted, the keys of
    unmerged pending operations, its internal CAs' keys) leaves the token once the deletion has committed."""

    def retire_ca(obj: ObjectRow) -> None:
        for generation in obj.data["generations"]:
            _retire(view, backends, obj, generation)

    releases: dict[str, Callable[[ObjectRow], None]] = {
        keys.KIND: lambda obj: keys.destroy_versions(view, backends, obj),
        KIND: lambda obj: release_hsm_objects(view, backends, obj),
        CA_KIND: retire_ca,
    }
    for kind, release in releases.items():
        for deleted in (False, True):
            after = None
            while batch := view.object_list(kind, deleted=deleted, after=after, limit=100):
                for obj in batch:
                    release(obj)
                after = batch[-1].name.lower()


def list_latest(view: VaultView, *, deleted: bool, after: str | None, limit: int) -> list[Certificate]:
    found = lifecycle.latest_rows(view, KIND, deleted=deleted, after=after, limit=limit)
    return [Certificate(o, r) for o, r in found]


def list_versions(view: VaultView, name: str, *, after_seq: int | None, limit: int) -> list[Certificate]:
    obj, rows = lifecycle.version_rows(view, KIND, name, after_seq=after_seq, limit=limit)
    return [Certificate(obj, row) for row in rows]


# --- backup and restore --------------------------------------------------------------------------------------
def backup(view: VaultView, name: str) -> bytes:
    """The certificate object with every version, plus the sealed backups of its backing key and secret."""
    obj, rows = lifecycle.backup_rows(view, KIND, name)
    versions = [
        {**lifecycle.backup_version(r), "contentType": r.content_type, "tags": r.tags, "extra": r.extra} for r in rows
    ]
    return lifecycle.seal_backup(
        view,
        obj,
        versions,
        with_data=True,
        key=keys.backup(view, obj.name).hex(),
        secret=secrets.backup(view, obj.name).hex(),
    )


def _parse_backup(
    view: VaultView, document: dict[str, Any]
) -> tuple[str, str, list[VersionRow], dict[str, Any], bytes, bytes]:
    """(name, latest version, versions, object data, key backup blob, secret backup blob)"""
    name, latest = str(document["name"]), str(document["latest"])
    rules.check_name(name, "certificate")
    rows = []
    for item in document["versions"]:
        dates = rules.check_attributes({"nbf": item["nbf"], "exp": item["exp"]})
        extra = item["extra"]
        if not isinstance(extra, dict) or not isinstance(extra.get("cer"), str):
            raise ValueError("invalid version")
        rows.append(
            VersionRow(
                vault=view.name,
                kind=KIND,
                name=name,
                version=str(item["version"]),
                created=int(item["created"]),
                updated=int(item["updated"]),
                enabled=bool(item["enabled"]),
                nbf=dates["nbf"],
                exp=dates["exp"],
                content_type=rules.check_content_type(item["contentType"]),
                tags=rules.check_tags(item["tags"]),
                extra=extra,
            )
        )
    lifecycle.latest_restored(rows, latest)
    key_blob, secret_blob = bytes.fromhex(document["key"]), bytes.fromhex(document["secret"])
    return name, latest, rows, dict(document.get("data") or {}), key_blob, secret_blob


def restore(view: VaultView, backends: keys.Backends, blob: bytes) -> Certificate:
    """The backing key's HSM objects are copied (see keys.restore); an unmerged pending operation with an HSM key
    is not restored, as its key would stay shared with the original's."""
    parsed = lifecycle.read_backup(view, KIND, blob, lambda document: _parse_backup(view, document))
    name, latest, rows, data, key_blob, secret_blob = parsed
    lifecycle.check_restorable(view, KIND, name, (keys.KIND, secrets.KIND))
    if (data.get("pending") or {}).get("hsm"):
        data = {k: v for k, v in data.items() if k != "pending"}
    keys.restore(view, backends, key_blob)
    secrets.restore(view, secret_blob)
    return Certificate(*lifecycle.put_restored(view, KIND, name, latest, rows, data))


# --- contacts and issuers (per vault settings, kept as objects of their own kinds) -------------------------------
CONTACTS_KIND = "certificate-contacts"
ISSUER_KIND = "certificate-issuer"
_CONTACTS_NAME = "contacts"


def _contacts_not_found() -> NotFound:
    return NotFound("Contacts not found", code="ContactsNotFound")


def set_contacts(view: VaultView, body: dict[str, Any]) -> list[dict[str, Any]]:
    given = body.get("contacts")
    if not isinstance(given, list):
        raise BadParameter("Property contacts is required and must be a list.")
    contacts = []
    for item in given:
        if not isinstance(item, dict):
            raise BadParameter("Each contact must be an object.")
        contact = {k: item[k] for k in ("email", "name", "phone") if item.get(k) is not None}
        if not all(isinstance(v, str) and len(v) <= 256 for v in contact.values()):
            raise BadParameter("Contact fields must be strings of at most 256 characters.")
        if not contact.get("email"):
            raise BadParameter("Each contact needs an email address.")
        contacts.append(contact)
    obj = view.object_get(CONTACTS_KIND, _CONTACTS_NAME) or ObjectRow(
        vault=view.name, kind=CONTACTS_KIND, name=_CONTACTS_NAME
    )
    obj.data = {"contacts": contacts}
    view.object_put(obj)
    return contacts


def get_contacts(view: VaultView) -> list[dict[str, Any]]:
    obj = view.object_get(CONTACTS_KIND, _CONTACTS_NAME)
    if obj is None or not obj.data.get("contacts"):
        raise _contacts_not_found()
    return list(obj.data["contacts"])


def delete_contacts(view: VaultView) -> list[dict[str, Any]]:
    contacts = get_contacts(view)
    view.object_purge(CONTACTS_KIND, _CONTACTS_NAME)
    return contacts


def _issuer_not_found(name: str) -> NotFound:
    return NotFound(f"Issuer not found: {name}", code="CertificateIssuerNotFound")


def _check_issuer(body: dict[str, Any], previous: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    provider = body.get("provider", previous.get("provider"))
    if not isinstance(provider, str) or not provider:
        raise BadParameter("Property provider is required and must be a string.")
    issuer: dict[str, Any] = {"provider": provider}
    credentials = _dict(body.get("credentials"), "credentials")
    account = credentials.get("account_id", (previous.get("credentials") or {}).get("account_id"))
    if account is not None:
        if not isinstance(account, str):
            raise BadParameter("Property credentials.account_id must be a string.")
        issuer["credentials"] = {"account_id": account}
    org = body.get("org_details") if "org_details" in body or not partial else previous.get("org_details")
    if org is not None:
        org = _dict(org, "org_details")
        admins = org.get("admin_details") or []
        if not isinstance(admins, list) or not all(isinstance(a, dict) for a in admins):
            raise BadParameter("Property org_details.admin_details must be a list of objects.")
        fields = ("first_name", "last_name", "email", "phone")
        clean = {"admin_details": [{k: a[k] for k in fields if isinstance(a.get(k), str)} for a in admins]}
        if isinstance(org.get("id"), str):
            clean["id"] = org["id"]
        issuer["org_details"] = clean
    old_attrs = previous.get("attributes") or {}
    enabled = _dict(body.get("attributes"), "attributes").get("enabled", old_attrs.get("enabled", True))
    if not isinstance(enabled, bool):
        raise BadParameter("Property attributes.enabled must be a boolean.")
    stamp = now()
    issuer["attributes"] = {"enabled": enabled, "created": old_attrs.get("created", stamp), "updated": stamp}
    return issuer


def set_issuer(view: VaultView, name: str, body: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    rules.check_name(name, "issuer")
    obj = view.object_get(ISSUER_KIND, name)
    if partial and obj is None:
        raise _issuer_not_found(name)
    obj = obj or ObjectRow(vault=view.name, kind=ISSUER_KIND, name=name)
    issuer = _check_issuer(body, obj.data.get("issuer") or {}, partial=partial)
    password = _dict(body.get("credentials"), "credentials").get("pwd")
    if password is not None:
        if not isinstance(password, str):
            raise BadParameter("Property credentials.pwd must be a string.")
        sealed = view.seal(ISSUER_KIND, obj.name, "issuer", "pwd", password.encode("utf-8")).hex()
        obj.data = {**obj.data, "pwd": sealed}
    obj.data = {**obj.data, "issuer": issuer}
    view.object_put(obj)
    return {"name": obj.name, **issuer}


def get_issuer(view: VaultView, name: str) -> dict[str, Any]:
    rules.check_name(name, "issuer")
    obj = view.object_get(ISSUER_KIND, name)
    if obj is None:
        raise _issuer_not_found(name)
    return {"name": obj.name, **obj.data["issuer"]}


def delete_issuer(view: VaultView, name: str) -> dict[str, Any]:
    issuer = get_issuer(view, name)
    view.object_purge(ISSUER_KIND, issuer["name"])
    return issuer


def list_issuers(view: VaultView, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    objects = view.object_list(ISSUER_KIND, deleted=False, after=after, limit=limit)
    return [{"name": o.name, **o.data["issuer"]} for o in objects]


# --- Coffer's internal CA (an issuer whose provider is "Coffer") -------------------------------------------------
def _ca_not_found(name: str) -> NotFound:
    return NotFound(f"Certificate authority not found: {name}", code="CertificateAuthorityNotFound")


def _internal_ca(view: VaultView, backends: keys.Backends, issuer_name: str) -> tuple[certs.Signer, list[bytes]]:
    """(the signer, the chain above a leaf: the issuing CA certificate first, DER) of the current generation of an
    internal-CA issuer. With an intermediate, the intermediate signs and the chain is [intermediate, root]."""
    obj = view.object_get(ISSUER_KIND, issuer_name)
    if obj is None:
        raise BadParameter(
            f"Issuer {issuer_name[:32]!r} is not supported by this server: use Self, Unknown or an internal CA "
            "issuer (coffer ca create)."
        )
    provider = (obj.data.get("issuer") or {}).get("provider")
    ca = view.object_get(CA_KIND, obj.name)
    if provider not in CA_PROVIDERS or ca is None:
        raise BadParameter(
            f"Issuer {issuer_name[:32]!r} has provider {str(provider)[:32]!r}, which this server cannot issue "
            "from: use Self, Unknown or an internal CA issuer (coffer ca create)."
        )
    if not (obj.data.get("issuer") or {}).get("attributes", {}).get("enabled", True):
        raise BadParameter(f"Issuer {issuer_name[:32]!r} is disabled.")
    generation = ca.data["generations"][-1]
    issuing = generation.get("intermediate") or generation
    material = _ca_material(view, ca, issuing)
    chain = [base64.b64decode(issuing["cer"])]
    if issuing is not generation:
        chain.append(base64.b64decode(generation["cer"]))
    return certs.key_signer(backends.for_type(material.kty), material), chain


def _ca_material(view: VaultView, ca: ObjectRow, generation: dict[str, Any]) -> KeyMaterial:
    """A CA generation's key: software (sealed by the vault barrier) or a reference into the HSM. Generations of
    earlier releases hold a software RSA key and no public members."""
    private = view.open(CA_KIND, ca.name, generation["id"], "key", bytes.fromhex(generation["key"]))
    return KeyMaterial(
        kty=str(generation.get("kty") or "RSA"),
        public=dict(generation.get("public") or {}),
        private=private,
        size=generation.get("size"),
    )


def _new_generation(view: VaultView, backends: keys.Backends, obj: ObjectRow) -> dict[str, Any]:
    """A new root CA key and its self-signed certificate and, for a CA with an intermediate, an intermediate key and
    certificate signed by that root. Keys are made where the CA keeps them (in the HSM: non-extractable, and the
    certificates are signed there)."""
    years = int(obj.data["validityYears"])
    if not obj.data.get("intermediate"):
        return _new_ca_key(view, backends, obj, subject=str(obj.data["subject"]), years=years, issuer=None)
    root = _new_ca_key(view, backends, obj, subject=str(obj.data["subject"]), years=years, issuer=None, path_length=1)
    try:
        root_material = _ca_material(view, obj, root)
        root_signer = certs.key_signer(backends.for_type(root_material.kty), root_material)
        intermediate = _new_ca_key(
            view,
            backends,
            obj,
            subject=str(obj.data["intermediateSubject"]),
            years=years,
            issuer=(root_signer, base64.b64decode(root["cer"])),
        )
    except BaseException:
        _destroy_generation_quietly(view, backends, obj, root)
        raise
    return {**root, "intermediate": intermediate}


def _new_ca_key(
    view: VaultView,
    backends: keys.Backends,
    obj: ObjectRow,
    *,
    subject: str,
    years: int,
    issuer: tuple[certs.Signer, bytes] | None,
    path_length: int = 0,
) -> dict[str, Any]:
    """One CA key (in the HSM for an HSM-backed CA) and its certificate: self-signed, or signed by `issuer`."""
    kty = "RSA-HSM" if obj.data.get("hsm") else "RSA"
    backend = backends.for_type(kty)
    try:
        material = backend.generate(kty, size=int(obj.data.get("keySize") or 3072))
    except KeyOperationError as exc:
        raise BadParameter(str(exc)) from None
    try:
        der = certs.ca_certificate(
            certs.key_signer(backend, material),
            subject=subject,
            validity_years=years,
            issuer=issuer,
            path_length=path_length,
        )
        key_id = rules.new_version()
        info = certs.inspect(der)
    except BaseException:
        _destroy_quietly(backend, material)
        raise
    return {
        "id": key_id,
        "kty": kty,
        "size": material.size,
        "public": material.public,
        "hsm": kty in HSM_TYPES,
        "key": view.seal(CA_KIND, obj.name, key_id, "key", material.private).hex(),
        "cer": base64.b64encode(der).decode("ascii"),
        "x5t": info.x5t,
        "nbf": info.not_before,
        "exp": info.not_after,
        "created": now(),
    }


def _destroy_generation_quietly(
    view: VaultView, backends: keys.Backends, obj: ObjectRow, generation: dict[str, Any]
) -> None:
    """A generation made for nothing (a later step failed): its keys leave the HSM again."""
    for part in (generation, generation.get("intermediate")):
        if part and part.get("key"):
            material = _ca_material(view, obj, part)
            _destroy_quietly(backends.for_type(material.kty), material)


def _retire(view: VaultView, backends: keys.Backends, ca: ObjectRow, generation: dict[str, Any]) -> dict[str, Any]:
    """A generation that signs no more: its key goes (out of the HSM too, once the transaction has committed); its
    certificate stays, so that chains issued under it still verify."""
    if generation.get("intermediate"):
        generation = {**generation, "intermediate": _retire(view, backends, ca, generation["intermediate"])}
    if not generation.get("key"):
        return generation
    material = _ca_material(view, ca, generation)
    if material.kty in HSM_TYPES:
        backends.destroy_after_commit(view.tx, material)
    retired = {k: v for k, v in generation.items() if k != "key"}
    retired["retired"] = now()
    return retired


def ca_create(
    view: VaultView,
    backends: keys.Backends,
    name: str,
    *,
    subject: str | None,
    validity_years: int,
    hsm: bool | None = None,
    intermediate: bool = False,
    intermediate_subject: str | None = None,
) -> dict[str, Any]:
    """A new internal CA: a root key and its self-signed certificate (and, with `intermediate`, an intermediate CA
    signed by the root, which then signs the leaves); also registered as the certificate issuer NAME
    with provider "Coffer". The key is made in the HSM (`hsm` True; the default on a premium vault of a server with
    an HSM) or is a software key sealed by the vault barrier (`hsm` False; the default otherwise)."""
    rules.check_name(name, "issuer")
    if not 1 <= validity_years <= 50:
        raise BadParameter("validityYears must be between 1 and 50.")
    if view.object_get(CA_KIND, name) is not None:
        raise Conflict(f"Certificate authority {name} already exists: rotate it instead.")
    existing = view.object_get(ISSUER_KIND, name)
    if existing is not None and (existing.data.get("issuer") or {}).get("provider") not in CA_PROVIDERS:
        raise Conflict(f"Issuer {existing.name} already exists with another provider.")
    if hsm is None:
        hsm = view.vault.sku == "premium" and backends.hsm is not None
    if hsm:
        keys.check_protection(view, "RSA-HSM")
        backends.for_type("RSA-HSM")
    subject = subject or f"CN={name} Coffer CA {view.name}"
    if intermediate_subject and not intermediate:
        raise BadParameter("intermediateSubject needs intermediate: true.")
    try:
        obj = ObjectRow(
            vault=view.name,
            kind=CA_KIND,
            name=name,
            data={
                "subject": subject,
                "validityYears": validity_years,
                "keySize": 3072,
                "hsm": hsm,
                "intermediate": intermediate,
                "intermediateSubject": intermediate_subject or f"CN={name} Coffer Intermediate CA {view.name}",
                "generations": [],
            },
        )
        obj.data["generations"] = [_new_generation(view, backends, obj)]
    except certs.CertificateError as exc:
        raise BadParameter(str(exc)) from None
    view.object_put(obj)
    set_issuer(view, name, {"provider": "Coffer"})
    return ca_info(obj)


def ca_rotate(view: VaultView, backends: keys.Backends, name: str) -> dict[str, Any]:
    """A new CA key and certificate (same protection); earlier generations keep their certificates (they still
    verify old chains) but lose their keys, which sign no more (HSM keys leave the token)."""
    obj = _ca(view, name)
    fresh = _new_generation(view, backends, obj)
    try:
        retired = [_retire(view, backends, obj, g) for g in obj.data["generations"]]
    except BaseException:
        _destroy_generation_quietly(view, backends, obj, fresh)
        raise
    obj.data = {**obj.data, "generations": [*retired, fresh]}
    view.object_put(obj)
    return ca_info(obj)


def ca_delete(view: VaultView, backends: keys.Backends, name: str) -> dict[str, Any]:
    """Remove an internal CA for good: its keys (out of the HSM too), its certificates and its issuer entry.
    Certificates it issued stay, with their chains."""
    obj = _ca(view, name)
    info = ca_info(obj)
    for generation in obj.data["generations"]:
        _retire(view, backends, obj, generation)
    view.object_purge(CA_KIND, obj.name)
    issuer = view.object_get(ISSUER_KIND, obj.name)
    if issuer is not None and (issuer.data.get("issuer") or {}).get("provider") in CA_PROVIDERS:
        view.object_purge(ISSUER_KIND, issuer.name)
    return info


def _ca(view: VaultView, name: str) -> ObjectRow:
    rules.check_name(name, "issuer")
    obj = view.object_get(CA_KIND, name)
    if obj is None:
        raise _ca_not_found(name)
    return obj


def ca_get(view: VaultView, name: str) -> dict[str, Any]:
    return ca_info(_ca(view, name))


def ca_pem(view: VaultView, name: str) -> str:
    """The current CA certificate, PEM (what clients should trust)."""
    generation = _ca(view, name).data["generations"][-1]
    return certs.to_pem(base64.b64decode(generation["cer"]))


def ca_info(obj: ObjectRow) -> dict[str, Any]:
    fields = ("id", "cer", "x5t", "nbf", "exp", "created")
    generations = [
        {
            **{k: g[k] for k in fields},
            **({"intermediate": {k: g["intermediate"][k] for k in fields}} if g.get("intermediate") else {}),
        }
        for g in obj.data["generations"]
    ]
    return {
        "name": obj.name,
        "vault": obj.vault,
        "provider": "Coffer",
        "subject": obj.data["subject"],
        "validityYears": obj.data["validityYears"],
        "keyType": "RSA",
        "keySize": obj.data.get("keySize"),
        "hsm": bool(obj.data.get("hsm")),
        **({"intermediateSubject": obj.data["intermediateSubject"]} if obj.data.get("intermediate") else {}),
        "current": generations[-1],
        "previous": generations[:-1],
    }


# --- lifetime actions (the scheduler's certificate-policy job) -----------------------------------------------------
def due_actions(cert: Certificate, at: int) -> list[str]:
    """The lifetime actions (AutoRenew, EmailContacts) whose trigger has been reached for this version."""
    start, end = cert.row.nbf, cert.row.exp
    if start is None or end is None or end <= start:
        return []
    renewal = cert.obj.data.get("renewal") or {}
    if renewal.get("version") == cert.row.version and int(renewal.get("at", 0)) > start:
        # issued by the scheduler running for time `at`: its lifetime counts from then (a test clock, or a late run)
        shift = int(renewal["at"]) - start
        start, end = start + shift, end + shift
    found = []
    for item in cert.policy.get("lifetime_actions") or []:
        if not isinstance(item, dict):
            continue
        trigger = item.get("trigger") or {}
        action = (item.get("action") or {}).get("action_type")
        if not isinstance(trigger, dict) or action not in ("AutoRenew", "EmailContacts"):
            continue
        percentage, days = trigger.get("lifetime_percentage"), trigger.get("days_before_expiry")
        if isinstance(percentage, int | float) and not isinstance(percentage, bool):
            due = at >= start + (end - start) * percentage / 100
        elif isinstance(days, int | float) and not isinstance(days, bool):
            due = at >= end - days * 86400
        else:
            continue
        if due and action not in found:
            found.append(action)
    return found


def renew(view: VaultView, backends: keys.Backends, name: str, *, vault_url: str) -> Certificate | None:
    """AutoRenew: a new version with the same policy (Self and internal-CA issuers), or a new pending operation
    with a new CSR (issuer Unknown; None). The latest version's tags carry over."""
    cert = get(view, name, None)
    return create(view, backends, name, {"tags": cert.row.tags}, vault_url=vault_url)[1]
