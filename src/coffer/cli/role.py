"""`coffer role ...`: role definitions (Azure's built-in Key Vault roles and your custom roles) and role
assignments, over the access admin API (/admin/roles/...).

Scopes are paths: "/" (the whole server), "/vaults/NAME", "/vaults/NAME/secrets|keys|certificates" and
"/vaults/NAME/KIND/OBJECT" (one secret, key or certificate)."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote, urlencode

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coffer.cli.client import ClientError, CofferClient

role_app = typer.Typer(help="Manage role definitions and role assignments (Azure RBAC).", no_args_is_help=True)
definition_app = typer.Typer(help="Built-in and custom role definitions.", no_args_is_help=True)
assignment_app = typer.Typer(help="Who holds which role at which scope.", no_args_is_help=True)
role_app.add_typer(definition_app, name="definition")
role_app.add_typer(assignment_app, name="assignment")

console = Console()
err = Console(stderr=True)

Addr = Annotated[str | None, typer.Option(help="Server URL, e.g. https://localhost:8443 (env COFFER_ADDR)")]
CaCert = Annotated[str | None, typer.Option(help="CA certificate file (env COFFER_CACERT / REQUESTS_CA_BUNDLE)")]
DataDir = Annotated[Path, typer.Option(help="Data directory of a local dev server (its dev.env is read).")]
SCOPE_HELP = "/, /vaults/NAME, /vaults/NAME/secrets|keys|certificates or /vaults/NAME/KIND/OBJECT"

_DEFINITIONS = "/admin/roles/definitions"
_ASSIGNMENTS = "/admin/roles/assignments"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _call(addr: str | None, ca_cert: str | None, data_dir: Path, method: str, path: str, body: Any = None) -> Any:
    try:
        return CofferClient(addr=addr, ca_cert=ca_cert, data_dir=data_dir).call(method, path, body)
    except ClientError as error:
        _fail(error)
    except httpx.HTTPError as error:
        _error(f"cannot reach the server: {error}")
        raise typer.Exit(1) from None


def _error(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), f" {message}"), highlight=False, soft_wrap=True)


def _fail(error: ClientError) -> NoReturn:
    _error(f"{error.code}: {error.message}" if error.code else str(error))
    raise typer.Exit(1)


def _query(path: str, **params: str | None) -> str:
    given = {k: v for k, v in params.items() if v}
    return f"{path}?{urlencode(given)}" if given else path


def _seg(value: str) -> str:
    return quote(value, safe="")


def _table(*columns: str) -> Table:
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"
    return table


def _print(line: str) -> None:
    console.print(line, highlight=False, markup=False, soft_wrap=True)


def _time(value: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(int(value))) if value else ""


def _defined_at(definition: dict[str, Any]) -> str:
    return definition["id"].split("/providers/", 1)[0] or "/"


# --- role definitions ----------------------------------------------------------------------------


def _definition_table(rows: list[dict[str, Any]]) -> None:
    table = _table("role name", "type", "id", "defined at", "assignable scopes")
    for d in rows:
        p = d["properties"]
        table.add_row(
            Text(p["roleName"]),
            "built-in" if p["type"] == "BuiltInRole" else "custom",
            d["name"],
            Text(_defined_at(d)),
            Text(", ".join(p["assignableScopes"])),
        )
    console.print(table)


def _definition_details(d: dict[str, Any]) -> None:
    _definition_table([d])
    p = d["properties"]
    _print(f"description:      {p['description']}")
    perms = p["permissions"][0] if p["permissions"] else {}
    for key, label in (
        ("actions", "actions"),
        ("notActions", "not actions"),
        ("dataActions", "data actions"),
        ("notDataActions", "not data actions"),
    ):
        values = perms.get(key) or []
        _print(f"{label + ':':<18}{values[0] if values else '-'}")
        for value in values[1:]:
            _print(f"{'':<18}{value}")


def _find_role(
    addr: str | None, ca_cert: str | None, data_dir: Path, reference: str, scope: str | None
) -> dict[str, Any]:
    """A role definition by id or by name (case-insensitive), as seen from `scope`."""
    if _GUID.match(reference):
        return dict(_call(addr, ca_cert, data_dir, "GET", _query(f"{_DEFINITIONS}/{reference}", scope=scope)))
    definitions = _call(addr, ca_cert, data_dir, "GET", _query(_DEFINITIONS, scope=scope))["value"]
    found = [d for d in definitions if d["properties"]["roleName"].lower() == reference.lower()]
    if not found:
        names = ", ".join(sorted(d["properties"]["roleName"] for d in definitions))
        _error(f"no role named {reference!r} at scope {scope or '/'}. Roles: {names}")
        raise typer.Exit(1)
    return dict(found[0])


@definition_app.command("list")
def definition_list(
    scope: Annotated[str | None, typer.Option(help=f"List roles usable at this scope: {SCOPE_HELP}")] = None,
    custom: Annotated[bool, typer.Option("--custom", help="Only custom roles")] = False,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """List Azure's built-in Key Vault roles and the custom roles defined at the scope or above."""
    rows = _call(addr, ca_cert, data_dir, "GET", _query(_DEFINITIONS, scope=scope))["value"]
    if custom:
        rows = [d for d in rows if d["properties"]["type"] != "BuiltInRole"]
    _definition_table(rows)


@definition_app.command("show")
def definition_show(
    role: Annotated[str, typer.Argument(help="Role definition id, or its name")],
    scope: Annotated[str | None, typer.Option(help=f"Look it up from this scope: {SCOPE_HELP}")] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Show one role definition with its actions and data actions."""
    _definition_details(_find_role(addr, ca_cert, data_dir, role, scope))


@definition_app.command("create")
def definition_create(
    name: Annotated[str, typer.Option(help="Role name (unique)")],
    data_action: Annotated[
        list[str],
        typer.Option(
            help="A data action it grants, e.g. Microsoft.KeyVault/vaults/secrets/readMetadata/action; "
            "'*' wildcards allowed; repeatable"
        ),
    ],
    description: Annotated[str, typer.Option(help="What the role is for")] = "",
    not_data_action: Annotated[
        list[str] | None, typer.Option(help="A data action excluded from what data actions grant; repeatable")
    ] = None,
    scope: Annotated[str, typer.Option(help="Where it is defined: / (the server) or /vaults/NAME")] = "/",
    assignable_scope: Annotated[
        list[str] | None, typer.Option(help=f"Where it may be assigned (default: --scope); repeatable; {SCOPE_HELP}")
    ] = None,
    role_id: Annotated[str | None, typer.Option("--id", help="Its id (a GUID; default: a new one)")] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Create a custom role from Key Vault data actions (and exclusions)."""
    body = {
        "scope": scope,
        "properties": {
            "roleName": name,
            "description": description,
            "permissions": [{"dataActions": list(data_action), "notDataActions": list(not_data_action or [])}],
            "assignableScopes": list(assignable_scope or [scope]),
        },
    }
    definition_id = role_id or str(uuid.uuid4())
    _definition_details(_call(addr, ca_cert, data_dir, "PUT", f"{_DEFINITIONS}/{_seg(definition_id)}", body))


@definition_app.command("delete")
def definition_delete(
    role: Annotated[str, typer.Argument(help="Custom role definition id, or its name")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Delete a custom role (refused while it is still assigned)."""
    definition_id = _find_role(addr, ca_cert, data_dir, role, None)["name"] if not _GUID.match(role) else role
    if not yes:
        typer.confirm(f"Delete role definition {role}?", abort=True)
    deleted = _call(addr, ca_cert, data_dir, "DELETE", f"{_DEFINITIONS}/{_seg(definition_id)}")
    _print(f"Deleted role definition {deleted['properties']['roleName']} ({deleted['name']}).")


# --- role assignments ----------------------------------------------------------------------------


def _assignment_table(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "role", "principal id", "scope", "created")
    for a in rows:
        p = a["properties"]
        role = p.get("roleName") or p["roleDefinitionId"].rsplit("/", 1)[-1]
        table.add_row(a["name"], Text(role), p["principalId"], Text(p["scope"]), _time(p.get("createdOn")))
    console.print(table)


@assignment_app.command("list")
def assignment_list(
    scope: Annotated[
        str | None, typer.Option(help=f"Assignments at, above and below this scope (default /): {SCOPE_HELP}")
    ] = None,
    principal: Annotated[str | None, typer.Option(help="Only this principal's (object id or client id)")] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """List role assignments of your tenant."""
    path = _query(_ASSIGNMENTS, scope=scope, principalId=principal)
    _assignment_table(_call(addr, ca_cert, data_dir, "GET", path)["value"])


@assignment_app.command("create")
def assignment_create(
    role: Annotated[str, typer.Option(help="Role name (e.g. 'Key Vault Secrets User') or definition id")],
    assignee: Annotated[str, typer.Option(help="Object id or client id of the principal")],
    scope: Annotated[str, typer.Option(help=SCOPE_HELP)],
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Grant a role to a principal at a scope; it applies to the principal's next request."""
    definition = _find_role(addr, ca_cert, data_dir, role, scope)
    body = {"scope": scope, "roleDefinitionId": definition["id"], "principalId": assignee}
    _assignment_table([_call(addr, ca_cert, data_dir, "PUT", f"{_ASSIGNMENTS}/new", body)])


@assignment_app.command("delete")
def assignment_delete(
    assignment_id: Annotated[str, typer.Argument(help="Role assignment id")],
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Remove a role assignment; it stops applying at once."""
    deleted = _call(addr, ca_cert, data_dir, "DELETE", f"{_ASSIGNMENTS}/{_seg(assignment_id)}")
    p = deleted["properties"]
    _print(f"Deleted role assignment {deleted['name']} ({p.get('roleName')} for {p['principalId']} at {p['scope']}).")
