"""Every built-in role, every vault data action and every scope level, decided by Coffer's Authorizer over a real
SQLite store, compared with an independent oracle (tests/support/azure_roles.py, transcribed from the reference, not
imported from coffer.authz.roles): nothing allowed that Azure refuses, nothing refused that Azure allows; an
assignment never leaks to another object, another collection or another vault. Also: the role table itself,
notDataActions of custom roles, and the legacy access-policy model for secrets."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.support.azure_roles import (
    BUILT_IN_ROLES,
    CATALOGUE,
    CONTROL_PLANE_ONLY_ROLES,
    PREFIX,
    SECRET_OPERATIONS,
    SECRET_POLICY_PERMISSIONS,
    VAULT_DATA_ACTIONS,
    covers,
    permits,
    policy_allows,
    scope_levels,
)

from coffer.authz import Authorizer, roles
from coffer.errors import Forbidden
from coffer.identity.tokens import Caller
from coffer.storage import RoleAssignmentRow, RoleDefinitionRow, VaultRow
from coffer.storage.sqlite import SqliteStorage

TENANT = "7d1f2b4e-0000-4000-8000-00000000c0ff"
VAULTS = ("v1", "v2", "v10")
# Collections whose deleted objects have their own REST collection ("/deletedsecrets/{name}", ...).
WITH_DELETED = ("secrets", "keys", "certificates")


def caller(object_id: str) -> Caller:
    return Caller(object_id=object_id, tenant_id=TENANT, client_id=str(uuid.uuid5(uuid.NAMESPACE_OID, object_id)),
                  kind="application", expires=2**40)


def other_kind(kind: str) -> str:
    return "keys" if kind == "secrets" else "secrets"


def assignment_levels(kind: str) -> dict[str, str]:
    """Where the assignment is placed: the four levels of the action's own collection, and two in another
    collection of the same vault (which must never grant anything on this one)."""
    levels = scope_levels("v1", kind, "obj")
    levels["kind of another collection"] = f"/vaults/v1/{other_kind(kind)}"
    levels["object of another collection"] = f"/vaults/v1/{other_kind(kind)}/obj"
    return levels


def targets(kind: str) -> list[tuple[str, str, str, str]]:
    """(label, vault, vault-relative operation scope, RBAC resource) of the operations decided for each action."""
    found = [
        ("obj", "v1", f"/{kind}/obj", f"/vaults/v1/{kind}/obj"),
        ("OBJ (other case)", "v1", f"/{kind}/OBJ", f"/vaults/v1/{kind}/OBJ"),
        ("other", "v1", f"/{kind}/other", f"/vaults/v1/{kind}/other"),
        ("objx (name prefix)", "v1", f"/{kind}/objx", f"/vaults/v1/{kind}/objx"),
        ("the collection", "v1", f"/{kind}", f"/vaults/v1/{kind}"),
        ("obj in v2", "v2", f"/{kind}/obj", f"/vaults/v2/{kind}/obj"),
        ("obj in v10 (vault prefix)", "v10", f"/{kind}/obj", f"/vaults/v10/{kind}/obj"),
    ]
    if kind in WITH_DELETED:
        found += [
            ("deleted obj", "v1", f"/deleted{kind}/obj", f"/vaults/v1/{kind}/obj"),
            ("deleted other", "v1", f"/deleted{kind}/other", f"/vaults/v1/{kind}/other"),
            ("the deleted collection", "v1", f"/deleted{kind}", f"/vaults/v1/{kind}"),
        ]
    return found


@dataclass
class World:
    storage: SqliteStorage
    authorizer: Authorizer
    vaults: dict[str, VaultRow]
    # (role id, kind, level) → the object id of the principal holding exactly that one assignment
    holders: dict[tuple[str, str, str], str] = field(default_factory=dict)


def decide(
    authorizer: Authorizer, who: Caller, action: str, scope: str, vault: VaultRow, policy: str | None = None
) -> bool:
    """Coffer's decision: True = allowed, False = refused with Azure's RBAC 403. `policy` is the access-policy
    permission the route names for operations whose data action covers several (as the Secrets routes do)."""
    try:
        decision = authorizer.authorize(who, action, scope, vault, policy)
    except Forbidden as refused:
        expected_inner = "ForbiddenByRbac" if vault.rbac_authorization else "AccessDenied"
        assert refused.inner == expected_inner, (action, scope, refused.inner)
        return False
    assert decision.allowed, decision  # a refusal is always raised, never returned
    return True


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    storage = SqliteStorage(Path(tmp_path_factory.mktemp("authz")) / "coffer.db")
    storage.migrate()
    holders: dict[tuple[str, str, str], str] = {}
    with storage.write() as tx:
        for name in VAULTS:
            tx.vault_put(VaultRow(name=name, tenant_id=TENANT, created=1, updated=1))
        # someone else is Administrator of everything: it must never help the callers below
        tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/", BUILT_IN_ROLES[0].id, "noise-admin", 1))
        for role in BUILT_IN_ROLES:
            for kind in CATALOGUE:
                for level, scope in assignment_levels(kind).items():
                    principal = str(uuid.uuid4())
                    holders[(role.id, kind, level)] = principal
                    tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), scope, role.id, principal, 1))
    authorizer = Authorizer()
    with storage.read() as tx:
        authorizer.reload(tx)
        vaults = {name: row for name in VAULTS if (row := tx.vault_get(name)) is not None}
        assert len(tx.role_assignment_list()) == len(holders) + 1
    assert set(vaults) == set(VAULTS)
    yield World(storage, authorizer, vaults, holders)
    storage.close()


# --- the role table ------------------------------------------------------------------------------------------------


def test_built_in_roles_match_the_reference_table() -> None:
    expected = {r.id: r.name for r in BUILT_IN_ROLES}
    assert len(expected) == 11
    assert {role_id: role.name for role_id, role in roles.BUILT_IN.items()} == expected
    for reference in BUILT_IN_ROLES:
        role = roles.BUILT_IN[reference.id]
        assert role.id == reference.id and role.built_in
        assert sorted(role.data_actions) == sorted(reference.data_actions), reference.name
        assert role.not_data_actions == (), reference.name  # "No built-in data role has notDataActions"
        assert role.assignable_scopes == ("/",), reference.name
    # the management-only Key Vault Contributor is not a data-plane role; it must not be served as one
    for role_id in CONTROL_PLANE_ONLY_ROLES.values():
        assert role_id not in roles.BUILT_IN or not roles.BUILT_IN[role_id].data_actions


def test_vault_data_action_catalogue_matches_the_reference() -> None:
    assert sorted(roles.VAULT_DATA_ACTIONS) == sorted(action for _kind, action in VAULT_DATA_ACTIONS)
    assert len(VAULT_DATA_ACTIONS) == 3 + 1 + 9 + 2 + 17 + 9 + 11


# --- the matrix ----------------------------------------------------------------------------------------------------


def test_every_role_action_and_scope_level_decides_as_azure(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    checked = allowed_count = 0
    mismatches: list[str] = []
    for role in BUILT_IN_ROLES:
        for kind, action in VAULT_DATA_ACTIONS:
            for level, assignment_scope in assignment_levels(kind).items():
                who = caller(world.holders[(role.id, kind, level)])
                for label, vault, op_scope, resource in targets(kind):
                    want = covers(assignment_scope, resource) and permits(role.data_actions, (), action)
                    got = decide(world.authorizer, who, action, op_scope, world.vaults[vault])
                    checked += 1
                    allowed_count += got
                    if got != want:
                        mismatches.append(
                            f"{role.name} assigned at {level} ({assignment_scope}), {action} on {label} "
                            f"[{vault}{op_scope}]: Coffer {'ALLOWED' if got else 'REFUSED'}, Azure "
                            f"{'allows' if want else 'refuses'}"
                        )
    with capsys.disabled():
        print(f"\nauthz matrix: {checked} decisions checked ({len(BUILT_IN_ROLES)} roles x {len(VAULT_DATA_ACTIONS)} "
              f"actions x 6 assignment scopes x 7-10 targets), {allowed_count} allowed, {len(mismatches)} mismatches")
    assert checked > 25_000
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:200])


def test_action_names_compare_case_insensitively(world: World) -> None:
    """Azure compares action names case-insensitively: a data action spelled in another case is still that data
    action (never a management action, never outside the access-policy model)."""
    mismatches = []
    for role in BUILT_IN_ROLES:
        for kind, action in VAULT_DATA_ACTIONS:
            for level in ("vault", "object", "kind of another collection"):
                assignment_scope = assignment_levels(kind)[level]
                who = caller(world.holders[(role.id, kind, level)])
                want = covers(assignment_scope, f"/vaults/v1/{kind}/obj") and permits(role.data_actions, (), action)
                for spelled in (action.lower(), action.upper()):
                    got = decide(world.authorizer, who, spelled, f"/{kind}/obj", world.vaults["v1"])
                    if got != want:
                        verdict = "ALLOWED" if got else "REFUSED"
                        mismatches.append(f"{role.name} at {level}: {spelled}: Coffer {verdict}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:100])


def test_the_oracle_is_not_vacuous() -> None:
    """Spot checks of the transcription itself, so a broken oracle cannot agree with a broken Authorizer."""
    by_name = {r.name: r for r in BUILT_IN_ROLES}
    reader, user = by_name["Key Vault Reader"], by_name["Key Vault Secrets User"]
    assert permits(reader.data_actions, (), PREFIX + "storageaccounts/sas/read")  # `*` spans slashes
    assert permits(reader.data_actions, (), PREFIX + "secrets/READMETADATA/action")
    assert not permits(reader.data_actions, (), PREFIX + "secrets/getSecret/action")
    assert not permits(user.data_actions, (), PREFIX + "secrets/setSecret/action")
    assert not permits(by_name["Key Vault Data Access Administrator"].data_actions, (), PREFIX + "secrets/delete")
    assert covers("/vaults/v1", "/VAULTS/V1/secrets/x") and not covers("/vaults/v1", "/vaults/v10/secrets/x")
    assert not covers("/vaults/v1/secrets/obj", "/vaults/v1/secrets")
    assert not covers("/vaults/v1/secrets/o", "/vaults/v1/secrets/obj")


# --- custom roles: notDataActions subtract -------------------------------------------------------------------------

CUSTOM_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "secrets but purge and delete": (
        (PREFIX + "secrets/*",),
        (PREFIX + "secrets/purge/action", PREFIX + "secrets/delete"),
    ),
    "everything but keys and any purge (mixed case)": (
        (PREFIX + "*",),
        ("microsoft.keyvault/VAULTS/keys/*", "Microsoft.KeyVault/vaults/*/PURGE/action"),
    ),
    "reads but storage": ((PREFIX + "*/read", PREFIX + "secrets/readMetadata/action"), (PREFIX + "storageaccounts/*",)),
    "all taken away": ((PREFIX + "*",), (PREFIX + "*",)),
    "wildcard in the middle": ((PREFIX + "*/action",), (PREFIX + "keys/*crypt/action", PREFIX + "*/sas/*")),
}


@pytest.fixture(scope="module")
def custom_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Authorizer, dict[str, str], VaultRow]]:
    storage = SqliteStorage(Path(tmp_path_factory.mktemp("authz-custom")) / "coffer.db")
    storage.migrate()
    holders: dict[str, str] = {}
    with storage.write() as tx:
        tx.vault_put(VaultRow(name="v1", tenant_id=TENANT, created=1, updated=1))
        for label, (data, not_data) in CUSTOM_ROLES.items():
            role_id = str(uuid.uuid4())
            tx.role_definition_put(RoleDefinitionRow(
                id=role_id, scope="/", role_name=f"Custom {label}", description=label,
                permissions=[{"actions": [], "notActions": [], "dataActions": list(data),
                              "notDataActions": list(not_data)}],
                assignable_scopes=["/"], created=1, updated=1))
            holders[label] = str(uuid.uuid4())
            tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/vaults/v1", role_id, holders[label], 1))
        # notDataActions are not deny rules: another role's grant still applies
        holders["with Secrets Officer too"] = str(uuid.uuid4())
        extra_role = str(uuid.uuid4())
        tx.role_definition_put(RoleDefinitionRow(
            id=extra_role, scope="/", role_name="Custom no purge", description="",
            permissions=[{"dataActions": [PREFIX + "secrets/*"], "notDataActions": [PREFIX + "secrets/purge/action"]}],
            assignable_scopes=["/"], created=1, updated=1))
        tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/vaults/v1", extra_role,
                                                 holders["with Secrets Officer too"], 1))
        tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/vaults/v1/secrets/obj", BUILT_IN_ROLES[2].id,
                                                 holders["with Secrets Officer too"], 1))
    authorizer = Authorizer()
    with storage.read() as tx:
        authorizer.reload(tx)
        vault = tx.vault_get("v1")
    assert vault is not None
    yield authorizer, holders, vault
    storage.close()


def test_not_data_actions_of_custom_roles_subtract(
    custom_world: tuple[Authorizer, dict[str, str], VaultRow],
) -> None:
    authorizer, holders, vault = custom_world
    mismatches = []
    allowed_total = 0
    for label, (data, not_data) in CUSTOM_ROLES.items():
        who = caller(holders[label])
        for kind, action in VAULT_DATA_ACTIONS:
            want = permits(data, not_data, action)
            got = decide(authorizer, who, action, f"/{kind}/obj", vault)
            allowed_total += got
            if got != want:
                mismatches.append(f"custom role {label!r}: {action}: Coffer {'ALLOWED' if got else 'REFUSED'}")
    assert not mismatches, "\n".join(mismatches)
    assert allowed_total > 0  # the roles do grant something


def test_not_data_actions_do_not_deny_what_another_assignment_grants(
    custom_world: tuple[Authorizer, dict[str, str], VaultRow],
) -> None:
    authorizer, holders, vault = custom_world
    who = caller(holders["with Secrets Officer too"])
    purge = PREFIX + "secrets/purge/action"
    assert decide(authorizer, who, purge, "/deletedsecrets/obj", vault)  # Secrets Officer on obj grants it
    assert not decide(authorizer, who, purge, "/deletedsecrets/other", vault)  # only the custom role covers other
    assert decide(authorizer, who, PREFIX + "secrets/getSecret/action", "/secrets/other", vault)


# --- legacy access policies ----------------------------------------------------------------------------------------


@dataclass
class PolicyWorld:
    authorizer: Authorizer
    vault: VaultRow
    holders: dict[str, str]  # permission → principal holding only that secrets permission


@pytest.fixture(scope="module")
def policy_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyWorld]:
    storage = SqliteStorage(Path(tmp_path_factory.mktemp("authz-policies")) / "coffer.db")
    storage.migrate()
    holders = {p: str(uuid.uuid4()) for p in (*SECRET_POLICY_PERMISSIONS, "all", "keys only", "admin role only")}
    entries = [
        {"tenantId": TENANT, "objectId": holders[p], "permissions": {"secrets": [p]}}
        for p in (*SECRET_POLICY_PERMISSIONS, "all")
    ]
    entries.append({"tenantId": TENANT, "objectId": holders["keys only"], "permissions": {"keys": ["all"]}})
    with storage.write() as tx:
        tx.vault_put(VaultRow(name="ap", tenant_id=TENANT, created=1, updated=1, rbac_authorization=False,
                              access_policies=entries))
        # RBAC is ignored on an access-policy vault, even Administrator of the whole server
        tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/", BUILT_IN_ROLES[0].id,
                                                 holders["admin role only"], 1))
    authorizer = Authorizer()
    with storage.read() as tx:
        authorizer.reload(tx)
        vault = tx.vault_get("ap")
    assert vault is not None and not vault.rbac_authorization and len(vault.access_policies) == len(entries)
    yield PolicyWorld(authorizer, vault, holders)
    storage.close()


def test_access_policy_mapping_for_secrets(policy_world: PolicyWorld) -> None:
    mismatches = []
    checked = 0
    for held, principal in policy_world.holders.items():
        who = caller(principal)
        permissions = {held} if held in (*SECRET_POLICY_PERMISSIONS, "all") else set()
        for operation in SECRET_OPERATIONS:
            want = policy_allows(permissions, operation)
            ambiguous = operation.data_action.endswith("readMetadata/action")
            route_policy = operation.policy_permission if ambiguous else None
            got = decide(policy_world.authorizer, who, operation.data_action, operation.relative_scope("obj"),
                         policy_world.vault, route_policy)
            checked += 1
            if got != want:
                mismatches.append(
                    f"access policy secrets=[{held}]: {operation.name} ({operation.data_action} at "
                    f"{operation.relative_scope('obj')}): Coffer {'ALLOWED' if got else 'REFUSED'}, Azure requires "
                    f"secrets/{operation.policy_permission}"
                )
    assert checked == len(policy_world.holders) * len(SECRET_OPERATIONS)
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches)


def test_access_policies_are_ignored_on_an_rbac_vault(policy_world: PolicyWorld) -> None:
    rbac_vault = VaultRow(**{**policy_world.vault.__dict__, "rbac_authorization": True})
    who = caller(policy_world.holders["all"])
    for operation in SECRET_OPERATIONS:
        assert not decide(policy_world.authorizer, who, operation.data_action, operation.relative_scope("obj"),
                          rbac_vault), operation.name


def test_access_policy_entry_bound_to_another_application_does_not_apply(policy_world: PolicyWorld) -> None:
    principal = str(uuid.uuid4())
    vault = VaultRow(**{**policy_world.vault.__dict__, "access_policies": [
        {"tenantId": TENANT, "objectId": principal, "applicationId": str(uuid.uuid4()),
         "permissions": {"secrets": ["all"]}},
    ]})
    get = next(op for op in SECRET_OPERATIONS if op.name == "get")
    assert not decide(policy_world.authorizer, caller(principal), get.data_action, "/secrets/obj", vault)
    other_tenant = Caller(object_id=principal, tenant_id=str(uuid.uuid4()), client_id="x", kind="application",
                          expires=2**40)
    vault.access_policies[0].pop("applicationId")
    assert decide(policy_world.authorizer, caller(principal), get.data_action, "/secrets/obj", vault)
    assert not decide(policy_world.authorizer, other_tenant, get.data_action, "/secrets/obj", vault)


# --- management actions that share the Microsoft.KeyVault/vaults/ prefix --------------------------------------------


def test_vault_management_actions_are_not_data_actions(tmp_path: Path) -> None:
    """`Microsoft.KeyVault/vaults/{read,write,delete,accessPolicies/write}` manage the vault: dataActions never grant
    them (Azure keeps the two planes apart), and Coffer's own management rules (decide.py: Data Access Administrator
    manages access policies; any role at a scope may read it) apply to them."""
    storage = SqliteStorage(tmp_path / "coffer.db")
    storage.migrate()
    by_name = {r.name: r for r in BUILT_IN_ROLES}
    data_only = str(uuid.uuid4())
    names = ("Key Vault Data Access Administrator", "Key Vault Reader", "Key Vault Secrets Officer",
             "Key Vault Administrator", "data only")
    holders = {name: str(uuid.uuid4()) for name in names}
    try:
        with storage.write() as tx:
            tx.role_definition_put(RoleDefinitionRow(
                id=data_only, scope="/", role_name="Custom all data", description="",
                permissions=[{"actions": [], "dataActions": [PREFIX + "*"]}], assignable_scopes=["/"], created=1,
                updated=1))
            for name, principal in holders.items():
                role_id = data_only if name == "data only" else by_name[name].id
                tx.role_assignment_put(RoleAssignmentRow(str(uuid.uuid4()), "/vaults/v1", role_id, principal, 1))
        authorizer = Authorizer()
        with storage.read() as tx:
            authorizer.reload(tx)
    finally:
        storage.close()

    def may(holder: str, action: str) -> bool:
        try:
            return authorizer.authorize(caller(holders[holder]), "Microsoft.KeyVault/vaults/" + action, "/vaults/v1",
                                        None).allowed
        except Forbidden:
            return False

    assert may("Key Vault Data Access Administrator", "accessPolicies/write")
    assert may("Key Vault Administrator", "accessPolicies/write") and may("Key Vault Administrator", "write")
    assert not may("Key Vault Secrets Officer", "accessPolicies/write")
    for holder in holders:
        assert may(holder, "read"), holder
    for action in ("write", "delete", "accessPolicies/write"):
        assert not may("data only", action), action
        assert not may("Key Vault Reader", action), action
