"""Crash durability harness (issue #9): a mixed workload of writes through the real Azure SDKs, `kill -9` of the
server at a random moment of every cycle, restart, and a full check of what the server acknowledged.

    .venv/bin/python -m bench.crash [--cycles 100] [--storage sqlite|postgres] [--workers 4] [--seed N] [--out F]

Each cycle, `--workers` threads write as fast as the server answers, each on objects of its own (so each thread's
model of its objects is exact): secret versions (set_secret), software keys (create_rsa_key RSA-2048 /
create_ec_key P-256), soft deletes (begin_delete_secret / begin_delete_key), recoveries
(begin_recover_deleted_secret / begin_recover_deleted_key) and role assignments (KeyVaultAccessControlClient
create / delete at scope "/" for an application principal created through the admin API). The SDK clients make no
retries, so a request cut by the kill fails instead of being replayed after the restart. After a random delay
(`--min-delay`..`--max-delay` s) the server gets SIGKILL. Then, before the restart, the storage must pass its
integrity checks (SQLite: `PRAGMA integrity_check` on the files exactly as the kill left them, read-only, and
`Storage.integrity_check()`; PostgreSQL: `Storage.integrity_check()`). After the restart:

* each operation that was in flight at the kill is resolved: the object must be wholly in its state before the
  operation or wholly in its state after it (a new secret version listed only if it reads back with the exact value;
  a new key version listed only if the key signs and the signature verifies with the public key the server returns;
  a deleted object either readable or in the deleted list, never both nor neither; a role assignment either whole
  or absent); the model takes the state found;
* every acknowledged write so far is checked: every secret version reads back with its value and the version list
  is exactly the model's; every key version returns the same public key (n, e / crv, x, y) and signs a fresh digest
  so that the signature verifies locally with the acknowledged public key; deleted objects are deleted (in the
  deleted list, not readable), recovered ones readable; acknowledged role assignments exist with their principal
  and role, deleted ones do not.

The result (cycles, acknowledged writes per kind, in-flight operations found applied / not applied, failures) is
printed and written to bench/results/crash-<storage>-<UTC date>[-N].md (or `--out`). Ctrl-C (SIGINT) or SIGTERM
ends the run after the current cycle, with its summary. Secret values never appear in
it nor in failure messages (names and versions only). Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import logging
import os
import random
import secrets
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope
from azure.keyvault.keys import KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.secrets import SecretClient
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from tests.support import postgres
from tests.support.server import DevServer

from coffer.authz import roles
from coffer.cli.client import CofferClient

RESULTS = Path(__file__).resolve().parent / "results"
UNTHROTTLED = {"COFFER_THROTTLE_VAULT_CREATES": "0", "COFFER_THROTTLE_VAULT": "0", "COFFER_THROTTLE_PRINCIPAL": "0"}
SECRETS_PER_WORKER = 3
ROLE_IDS = (roles.SECRETS_USER, roles.CRYPTO_USER)
# one assignment per principal, role and scope (a second one is 409 RoleAssignmentExists): each worker has its own
# principal and these four slots
ROLE_SLOTS = [(role, scope) for role in ROLE_IDS for scope in (KeyVaultRoleScope.GLOBAL, KeyVaultRoleScope.KEYS)]
TRANSPORT_ERRORS = (ServiceRequestError, ServiceResponseError, ConnectionError, OSError)
# operation -> weight; an operation whose precondition does not hold (nothing to delete, ...) is skipped
WEIGHTS = {
    "secret-set": 45, "key-create": 12, "secret-delete": 8, "secret-recover": 8, "key-delete": 5, "key-recover": 5,
    "role-create": 10, "role-delete": 7,
}


STOP = threading.Event()  # set by SIGINT / SIGTERM in main(): the run ends after the current cycle, with its summary


class HarnessFailure(AssertionError):
    pass


# --- the model -----------------------------------------------------------------------------------------------------

@dataclass
class ObjectState:
    """A secret or a key: its versions in creation order (secret: value; key: public JWK fields), and whether it is
    soft-deleted. No versions: the object does not exist."""

    versions: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class RoleState:
    principal: str
    role_id: str
    scope: str


@dataclass
class Model:
    secrets: dict[str, ObjectState] = field(default_factory=dict)
    keys: dict[str, ObjectState] = field(default_factory=dict)
    key_types: dict[str, str] = field(default_factory=dict)  # name -> "RSA" | "EC"
    roles: dict[str, RoleState] = field(default_factory=dict)  # assignment name -> what it grants (existing only)
    roles_deleted: dict[str, str] = field(default_factory=dict)  # name -> scope: acknowledged deleted, stays absent


@dataclass
class InFlight:
    op: str
    name: str
    payload: Any = None  # secret set: the value; role create: RoleState


@dataclass
class Stats:
    acked: Counter[str] = field(default_factory=Counter)  # operation -> acknowledged writes, whole run
    in_flight: Counter[str] = field(default_factory=Counter)  # "op applied" / "op not applied"
    checks: Counter[str] = field(default_factory=Counter)  # what the last verification checked
    cycles: int = 0
    failures: list[str] = field(default_factory=list)
    cycle_seconds: list[float] = field(default_factory=list)


def public_jwk(key: KeyVaultKey) -> tuple[Any, ...]:
    jwk: Any = key.key
    if key.key_type in ("RSA", "RSA-HSM"):
        return ("RSA", bytes(jwk.n), bytes(jwk.e))
    return ("EC", str(jwk.crv), bytes(jwk.x), bytes(jwk.y))


def verify_locally(material: tuple[Any, ...], digest: bytes, signature: bytes) -> bool:
    try:
        if material[0] == "RSA":
            rsa_key = rsa.RSAPublicNumbers(int.from_bytes(material[2], "big"), int.from_bytes(material[1], "big"))
            rsa_key.public_key().verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            x, y = int.from_bytes(material[2], "big"), int.from_bytes(material[3], "big")
            ec_key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
            half = len(signature) // 2  # JWS: r || s
            from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

            der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
            ec_key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        return True
    except (InvalidSignature, ValueError):
        return False


# --- clients -------------------------------------------------------------------------------------------------------

class Clients:
    """SDK clients on one server start, no retries (a request cut by the kill must fail, not be replayed)."""

    def __init__(self, server: DevServer, retry_total: int = 0) -> None:
        self.server = server
        self.credential = ClientSecretCredential(
            server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
            authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
        )
        common: dict[str, Any] = {"connection_verify": server.ca, "retry_total": retry_total}
        self.secrets = SecretClient(server.vault_url, self.credential, **common)
        self.keys = KeyClient(server.vault_url, self.credential, **common)
        self.acl = KeyVaultAccessControlClient(server.vault_url, self.credential, **common)
        self._common = common

    def crypto(self, key: KeyVaultKey) -> CryptographyClient:
        return CryptographyClient(key, self.credential, **self._common)

    def close(self) -> None:
        for client in (self.secrets, self.keys, self.acl):
            client.close()
        self.credential.close()


# --- the workload --------------------------------------------------------------------------------------------------

class Worker(threading.Thread):
    """Writes on its own objects until the server dies; records what was acknowledged in the model, and the one
    operation in flight when the transport failed."""

    def __init__(self, index: int, clients: Clients, model: Model, stats: Stats, principal: str,
                 rng: random.Random) -> None:
        super().__init__(daemon=True, name=f"crash-worker-{index}")
        self.index = index
        self.clients = clients
        self.model = model
        self.stats = stats
        self.principal = principal
        self.rng = rng
        self.in_flight: InFlight | None = None
        self.stopped_by: BaseException | None = None
        self.unexpected: list[str] = []
        self.secret_names = [f"w{index}-secret-{i}" for i in range(SECRETS_PER_WORKER)]
        self.key_names = {f"w{index}-rsa": "RSA", f"w{index}-ec": "EC"}
        self.acked: Counter[str] = Counter()  # merged into the stats after the cycle

    def candidates(self) -> list[tuple[str, str]]:
        m = self.model
        options: list[tuple[str, str]] = []
        for name in self.secret_names:
            state = m.secrets.get(name)
            if state is None or not state.deleted:
                options.append(("secret-set", name))
            if state is not None and state.versions and not state.deleted:
                options.append(("secret-delete", name))
            if state is not None and state.deleted:
                options.append(("secret-recover", name))
        for name in self.key_names:
            state = m.keys.get(name)
            if state is None or not state.deleted:
                options.append(("key-create", name))
            if state is not None and state.versions and not state.deleted:
                options.append(("key-delete", name))
            if state is not None and state.deleted:
                options.append(("key-recover", name))
        mine = {n: r for n, r in list(m.roles.items()) if r.principal == self.principal}
        if len(mine) < len(ROLE_SLOTS):
            options.append(("role-create", str(uuid.uuid4())))
        for name in mine:
            options.append(("role-delete", name))
        return options

    def run(self) -> None:
        while True:
            options = self.candidates()
            op, name = self.rng.choices(options, weights=[WEIGHTS[o] / sum(1 for p, _ in options if p == o)
                                                          for o, _ in options])[0]
            try:
                self.perform(op, name)
            except TRANSPORT_ERRORS as exc:  # the kill: connection refused / reset mid-request
                self.stopped_by = exc
                return
            except HttpResponseError as exc:
                if exc.status_code is None:  # IncompleteReadError ("Incomplete download"): the answer cut mid-body
                    self.stopped_by = exc
                    return
                self.unexpected.append(f"{op} {name}: HTTP {exc.status_code} {getattr(exc.error, 'code', '')}")
                self.in_flight = None
                if len(self.unexpected) > 5:
                    return
            except BaseException as exc:
                self.unexpected.append(f"{op} {name}: {type(exc).__name__}: {exc}")
                self.stopped_by = exc
                return

    def perform(self, op: str, name: str) -> None:
        m, c = self.model, self.clients
        if op == "secret-set":
            value = f"{name}:{secrets.token_urlsafe(24)}"
            self.in_flight = InFlight(op, name, value)
            result = c.secrets.set_secret(name, value)
            self.in_flight = None
            if result.value != value or not result.properties.version:
                raise HarnessFailure(f"set_secret {name} answered a different value or no version")
            m.secrets.setdefault(name, ObjectState()).versions[result.properties.version] = value
        elif op == "key-create":
            kty = self.key_names[name]
            self.in_flight = InFlight(op, name, kty)
            key = c.keys.create_rsa_key(name, size=2048) if kty == "RSA" else c.keys.create_ec_key(name, curve="P-256")
            self.in_flight = None
            assert key.properties.version
            m.key_types[name] = kty
            m.keys.setdefault(name, ObjectState()).versions[key.properties.version] = public_jwk(key)
        elif op in ("secret-delete", "secret-recover", "key-delete", "key-recover"):
            self.in_flight = InFlight(op, name)
            begin: Any = {
                "secret-delete": c.secrets.begin_delete_secret,
                "secret-recover": c.secrets.begin_recover_deleted_secret,
                "key-delete": c.keys.begin_delete_key,
                "key-recover": c.keys.begin_recover_deleted_key,
            }[op]
            # acknowledged when the DELETE / POST recover answers (Coffer applies both at once); the poller is not
            # waited on: its polls are reads, and they run in a thread of their own
            begin(name)
            self.in_flight = None
            table = m.secrets if op.startswith("secret") else m.keys
            table[name].deleted = op.endswith("delete")
        elif op == "role-create":
            taken = {(r.role_id, r.scope) for r in list(m.roles.values()) if r.principal == self.principal}
            role_id, scope = self.rng.choice([slot for slot in ROLE_SLOTS if slot not in taken])
            role = RoleState(self.principal, role_id, scope_text(scope))
            self.in_flight = InFlight(op, name, role)
            c.acl.create_role_assignment(scope, role_definition_id(role.role_id), role.principal, name=name)
            self.in_flight = None
            m.roles[name] = role
        elif op == "role-delete":
            self.in_flight = InFlight(op, name, m.roles[name])
            c.acl.delete_role_assignment(m.roles[name].scope, name)
            self.in_flight = None
            m.roles_deleted[name] = m.roles.pop(name).scope
        else:  # pragma: no cover
            raise ValueError(op)
        self.acked[op] += 1


def scope_text(scope: Any) -> str:
    """"/" or "/keys" from a KeyVaultRoleScope / RoleScope enum member or a string."""
    return str(getattr(scope, "value", scope))


def role_definition_id(role_id: str) -> str:
    return f"/providers/Microsoft.Authorization/roleDefinitions/{role_id}"


# --- observation and verification ----------------------------------------------------------------------------------

def _exists(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ResourceNotFoundError:
        return None


def observe_secret(c: Clients, name: str) -> ObjectState | None:
    """What the server holds for `name` (None: nothing). Fails when the secret is half there: both readable and
    deleted, or listed versions that do not read back."""
    live = _exists(c.secrets.get_secret, name)
    deleted = _exists(c.secrets.get_deleted_secret, name)
    if live is not None and deleted is not None:
        raise HarnessFailure(f"secret {name} is both readable and in the deleted list")
    if live is None and deleted is None:
        return None
    if deleted is not None:
        return ObjectState(deleted=True)
    state = ObjectState()
    for props in c.secrets.list_properties_of_secret_versions(name):
        version = str(props.version)
        state.versions[version] = c.secrets.get_secret(name, version).value
    return state


def observe_key(c: Clients, name: str) -> ObjectState | None:
    live = _exists(c.keys.get_key, name)
    deleted = _exists(c.keys.get_deleted_key, name)
    if live is not None and deleted is not None:
        raise HarnessFailure(f"key {name} is both readable and in the deleted list")
    if live is None and deleted is None:
        return None
    if deleted is not None:
        return ObjectState(deleted=True)
    state = ObjectState()
    for props in c.keys.list_properties_of_key_versions(name):
        version = str(props.version)
        state.versions[version] = public_jwk(c.keys.get_key(name, version))
    return state


def observe_role(c: Clients, name: str, scope: str) -> RoleState | None:
    got = _exists(c.acl.get_role_assignment, scope, name)
    return None if got is None else role_of(got)


def role_of(assignment: Any) -> RoleState:
    props = assignment.properties
    return RoleState(props.principal_id, props.role_definition_id.rsplit("/", 1)[-1], scope_text(props.scope))


def check_key_signs(c: Clients, name: str, version: str, material: tuple[Any, ...]) -> None:
    key = c.keys.get_key(name, version)
    if public_jwk(key) != material:
        raise HarnessFailure(f"key {name}/{version}: the public key differs from the acknowledged one")
    digest = hashlib.sha256(secrets.token_bytes(32)).digest()
    alg = SignatureAlgorithm.rs256 if material[0] == "RSA" else SignatureAlgorithm.es256
    with c.crypto(key) as crypto:
        signature = crypto.sign(alg, digest).signature
    if not verify_locally(material, digest, signature):
        raise HarnessFailure(f"key {name}/{version}: its signature does not verify with the acknowledged public key")


def resolve(c: Clients, model: Model, flight: InFlight, stats: Stats) -> None:
    """The object an in-flight operation touched is wholly before or wholly after it; the model takes what is found."""
    kind = flight.op
    if kind.startswith("secret"):
        before = model.secrets.get(flight.name)
        found = observe_secret(c, flight.name)
        before_versions = dict(before.versions) if before else {}
        if found is None:
            applied = False
            if before is not None and before.versions:
                raise HarnessFailure(f"{kind} in flight: secret {flight.name} vanished (had acknowledged versions)")
        elif found.deleted:
            applied = kind == "secret-delete" and not (before and before.deleted)
            if not (applied or (before is not None and before.deleted)):
                raise HarnessFailure(f"{kind} in flight: secret {flight.name} is deleted, which it never was")
            found.versions = before_versions
        else:
            extra = {v: val for v, val in found.versions.items() if v not in before_versions}
            missing = set(before_versions) - set(found.versions)
            if missing:
                raise HarnessFailure(f"{kind} in flight: secret {flight.name} lost acknowledged versions {missing}")
            if kind == "secret-set":
                if len(extra) > 1 or any(val != flight.payload for val in extra.values()):
                    raise HarnessFailure(f"secret-set in flight: {flight.name} has {len(extra)} unknown version(s), "
                                         "not exactly the value that was being set")
                applied = bool(extra)
            else:
                if extra:
                    raise HarnessFailure(f"{kind} in flight: secret {flight.name} has unknown versions")
                applied = kind == "secret-recover"
                if kind == "secret-delete" and before is not None and before.deleted:
                    raise HarnessFailure(f"secret {flight.name} came back without a recover")
            found.versions = {**before_versions, **extra}
        if found is None:
            model.secrets.pop(flight.name, None)
        else:
            model.secrets[flight.name] = found
    elif kind.startswith("key"):
        before = model.keys.get(flight.name)
        found = observe_key(c, flight.name)
        before_versions = dict(before.versions) if before else {}
        if found is None:
            applied = False
            if before is not None and before.versions:
                raise HarnessFailure(f"{kind} in flight: key {flight.name} vanished (had acknowledged versions)")
        elif found.deleted:
            applied = kind == "key-delete" and not (before and before.deleted)
            if not (applied or (before is not None and before.deleted)):
                raise HarnessFailure(f"{kind} in flight: key {flight.name} is deleted, which it never was")
            found.versions = before_versions
        else:
            extra = {v: mat for v, mat in found.versions.items() if v not in before_versions}
            if set(before_versions) - set(found.versions):
                raise HarnessFailure(f"{kind} in flight: key {flight.name} lost acknowledged versions")
            if kind == "key-create":
                if len(extra) > 1:
                    raise HarnessFailure(f"key-create in flight: {flight.name} has {len(extra)} unknown versions")
                for version, material in extra.items():
                    if material[0] != flight.payload:
                        raise HarnessFailure(f"key-create in flight: {flight.name}/{version} has the wrong type")
                    check_key_signs(c, flight.name, version, material)  # wholly there: usable
                applied = bool(extra)
            else:
                if extra:
                    raise HarnessFailure(f"{kind} in flight: key {flight.name} has unknown versions")
                applied = kind == "key-recover"
            found.versions = {**before_versions, **extra}
        if found is None:
            model.keys.pop(flight.name, None)
        else:
            model.keys[flight.name] = found
            model.key_types.setdefault(flight.name, flight.payload if kind == "key-create" else "")
    else:
        expected: RoleState = flight.payload
        found_role = observe_role(c, flight.name, expected.scope)
        if found_role is not None and found_role != expected:
            raise HarnessFailure(f"{kind} in flight: role assignment {flight.name} grants something else")
        applied = (found_role is not None) == (kind == "role-create")
        if found_role is None:
            model.roles.pop(flight.name, None)
            if kind == "role-delete":
                model.roles_deleted[flight.name] = expected.scope
        else:
            model.roles[flight.name] = found_role
    stats.in_flight[f"{kind} {'applied' if applied else 'not applied'}"] += 1


def verify_all(c: Clients, model: Model, stats: Stats, pool: ThreadPoolExecutor) -> None:
    """Every acknowledged (or resolved) write is there and intact; nothing else is."""
    checks: Counter[str] = Counter()
    tasks: list[Any] = []

    def secret_version(name: str, version: str, value: str) -> None:
        got = c.secrets.get_secret(name, version)
        if got.value != value or got.properties.version != version:
            raise HarnessFailure(f"secret {name}/{version} does not read back with its acknowledged value")

    for name, state in model.secrets.items():
        live = _exists(c.secrets.get_secret, name)
        deleted = _exists(c.secrets.get_deleted_secret, name)
        if state.deleted:
            if live is not None or deleted is None:
                raise HarnessFailure(f"secret {name} should be deleted (readable={live is not None})")
            checks["secrets deleted"] += 1
            continue
        if live is None or deleted is not None:
            raise HarnessFailure(f"secret {name} should be readable (in deleted list={deleted is not None})")
        if state.versions and live.properties.version != list(state.versions)[-1]:
            raise HarnessFailure(f"secret {name}: the latest version is not the last acknowledged one")
        listed = {p.version for p in c.secrets.list_properties_of_secret_versions(name)}
        if listed != set(state.versions):
            raise HarnessFailure(f"secret {name}: {len(set(state.versions) - listed)} acknowledged versions not "
                                 f"listed, {len(listed - set(state.versions))} unknown versions listed")
        for version, value in state.versions.items():
            tasks.append(pool.submit(secret_version, name, version, value))
        checks["secret versions"] += len(state.versions)

    for name, state in model.keys.items():
        live = _exists(c.keys.get_key, name)
        deleted = _exists(c.keys.get_deleted_key, name)
        if state.deleted:
            if live is not None or deleted is None:
                raise HarnessFailure(f"key {name} should be deleted (readable={live is not None})")
            checks["keys deleted"] += 1
            continue
        if live is None or deleted is not None:
            raise HarnessFailure(f"key {name} should be readable (in deleted list={deleted is not None})")
        listed = {p.version for p in c.keys.list_properties_of_key_versions(name)}
        if listed != set(state.versions):
            raise HarnessFailure(f"key {name}: listed versions differ from the acknowledged ones")
        for version, material in state.versions.items():
            tasks.append(pool.submit(check_key_signs, c, name, version, material))
        checks["key versions (sign + verify)"] += len(state.versions)

    listed_roles = {
        a.name: role_of(a)
        for scope in {scope for _, scope in ROLE_SLOTS}
        for a in c.acl.list_role_assignments(scope)
    }
    for name, role in model.roles.items():
        if listed_roles.get(name) != role:
            raise HarnessFailure(f"role assignment {name} is missing or grants something else")
        checks["role assignments present"] += 1
    for name, scope in model.roles_deleted.items():
        if name in listed_roles or observe_role(c, name, scope) is not None:
            raise HarnessFailure(f"role assignment {name} was deleted but exists")
        checks["role assignments absent"] += 1
    for task in tasks:
        task.result()  # re-raises the first failure
    stats.checks = checks


# --- the run -------------------------------------------------------------------------------------------------------

def sqlite_file_integrity(db: Path) -> list[str]:
    """PRAGMA integrity_check through a read-only connection (the files are not modified)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall() if row[0] != "ok"]
    finally:
        conn.close()


def check_storage(server: DevServer) -> None:
    if not server.on_postgres:
        problems = sqlite_file_integrity(server.data_dir / "coffer.db")
        if problems:
            raise HarnessFailure(f"PRAGMA integrity_check after the kill: {problems[:5]}")
    storage = server.open_storage()
    try:
        problems = storage.integrity_check()
    finally:
        storage.close()
    if problems:
        raise HarnessFailure(f"Storage.integrity_check() after the kill: {problems[:5]}")


def make_server(data_dir: Path, storage: str) -> DevServer:
    if storage == "postgres":
        dsn = postgres.shared_server().new_database()
        return DevServer(data_dir, server_env={**UNTHROTTLED, "COFFER_DATABASE_URL": dsn})
    return DevServer(data_dir, server_env=dict(UNTHROTTLED), sqlite=True)


def create_principals(server: DevServer, count: int) -> list[str]:
    admin = CofferClient(addr=server.authority, ca_cert=server.ca, data_dir=server.data_dir,
                         tenant_id=server.env["COFFER_TENANT_ID"], client_id=server.env["COFFER_CLIENT_ID"],
                         client_secret=server.env["COFFER_CLIENT_SECRET"])
    try:
        return [
            str(admin.call("POST", "/admin/identity/principals",
                           {"displayName": f"crash-harness-app-{i}", "kind": "application"})["objectId"])
            for i in range(count)
        ]
    finally:
        admin.http.close()


def run(cycles: int, storage: str, workers: int = 4, min_delay: float = 0.3, max_delay: float = 2.5,
        seed: int | None = None, data_dir: Path | None = None, log: Any = print,
        max_seconds: float | None = None) -> Stats:
    """The whole harness; returns the stats (failures included: a failure ends the run)."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    log(f"crash harness: {cycles} cycles on {storage}, {workers} workers, seed {seed}")
    stats = Stats()
    model = Model()
    run_started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coffer-crash-") as tmp:
        server = make_server(data_dir or Path(tmp) / "data", storage).start()
        try:
            principals = create_principals(server, workers)
            for cycle in range(1, cycles + 1):
                started = time.monotonic()
                try:
                    run_cycle(server, model, stats, principals, rng, rng.uniform(min_delay, max_delay))
                except HarnessFailure as failure:
                    stats.failures.append(f"cycle {cycle}: {failure}")
                except Exception as exc:
                    stats.failures.append(f"cycle {cycle}: {type(exc).__name__}: {exc}")
                stats.cycles = cycle
                stats.cycle_seconds.append(time.monotonic() - started)
                log(f"cycle {cycle}/{cycles}: {time.monotonic() - started:.1f} s, acknowledged so far "
                    f"{sum(stats.acked.values())}, in flight resolved {sum(stats.in_flight.values())}"
                    + (f", FAILED: {stats.failures[-1]}" if stats.failures else ""))
                if stats.failures:
                    break
                if STOP.is_set():
                    log(f"asked to stop: stopping after {cycle} cycles")
                    break
                if max_seconds is not None and time.monotonic() - run_started > max_seconds:
                    log(f"time budget of {max_seconds:.0f} s spent: stopping after {cycle} cycles")
                    break
        finally:
            server.stop()
    return stats


def run_cycle(server: DevServer, model: Model, stats: Stats, principals: list[str], rng: random.Random,
              delay: float) -> None:
    clients = Clients(server)
    try:
        clients.secrets.set_secret("warm", "x")  # token fetched, connections open: the kill lands on real work
        threads = [Worker(i, clients, model, stats, principal, random.Random(rng.random()))
                   for i, principal in enumerate(principals)]
        for thread in threads:
            thread.start()
        time.sleep(delay)
        alive = [t for t in threads if t.is_alive()]
        server.kill()
        for thread in threads:
            thread.join(60)
            if thread.is_alive():
                raise HarnessFailure(f"{thread.name} still running 60 s after the kill")
        for thread in threads:
            stats.acked.update(thread.acked)
        problems = [f"{t.name}: {u}" for t in threads for u in t.unexpected]
        if problems:
            raise HarnessFailure("unexpected answers before the kill: " + "; ".join(problems[:5]))
        if len(alive) < len(threads):
            raise HarnessFailure("a worker stopped before the kill")
    finally:
        clients.close()
    check_storage(server)
    server.restart()
    checker = Clients(server, retry_total=3)
    try:
        for thread in threads:
            if thread.in_flight is not None:
                resolve(checker, model, thread.in_flight, stats)
        with ThreadPoolExecutor(8) as pool:
            verify_all(checker, model, stats, pool)
    finally:
        checker.close()


def summary(stats: Stats, storage: str, workers: int, seconds: float, argv: list[str]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Crash durability run ({storage})", "",
        f"{when}; `python -m bench.crash {' '.join(argv)}`; {os.cpu_count()} CPUs.", "",
        f"- cycles (kill -9, integrity check, restart, full verification): **{stats.cycles}**",
        f"- workers: {workers}; wall time {seconds:.0f} s (mean cycle {seconds / max(stats.cycles, 1):.1f} s)",
        f"- acknowledged writes: **{sum(stats.acked.values())}**, every one checked after every later restart "
        "(the versions of a soft-deleted object: once it is recovered)",
        f"- operations in flight at a kill, resolved: **{sum(stats.in_flight.values())}**",
        f"- failures: **{len(stats.failures)}**", "",
        "| acknowledged operation | count |", "| --- | ---: |",
        *(f"| {op} | {n} |" for op, n in sorted(stats.acked.items())), "",
        "| in flight at a kill | found |", "| --- | ---: |",
        *(f"| {what} | {n} |" for what, n in sorted(stats.in_flight.items())), "",
        "| checked after the last restart | count |", "| --- | ---: |",
        *(f"| {what} | {n} |" for what, n in sorted(stats.checks.items())), "",
    ]
    if stats.failures:
        lines += ["## Failures", "", *(f"- {f}" for f in stats.failures), ""]
    return "\n".join(lines)


def _output_path(storage: str) -> Path:
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    path = RESULTS / f"crash-{storage}-{day}.md"
    n = 2
    while path.exists():
        path = RESULTS / f"crash-{storage}-{day}-{n}.md"
        n += 1
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default=postgres.storage_kind())
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--min-delay", type=float, default=0.3, help="seconds of load before the kill, at least")
    parser.add_argument("--max-delay", type=float, default=2.5, help="... and at most (uniform)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-minutes", type=float, help="stop after the cycle that exceeds this wall time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: STOP.set())
    logging.getLogger("azure").setLevel(logging.CRITICAL)  # cut responses are expected: the harness counts them
    started = time.monotonic()
    try:
        stats = run(args.cycles, args.storage, args.workers, args.min_delay, args.max_delay, args.seed,
                    max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    finally:
        if args.storage == "postgres":
            postgres.stop_shared_server()
    text = summary(stats, args.storage, args.workers, time.monotonic() - started, argv)
    out = args.out or _output_path(args.storage)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
