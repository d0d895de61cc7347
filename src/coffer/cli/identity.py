"""`coffer identity ...`: applications, managed identities, their credentials and the tenant's trusted
issuers, over the identity admin API (/admin/identity/...)."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coffer.cli.client import ClientError, CofferClient

identity_app = typer.Typer(
    help="Manage applications, managed identities, their credentials and trusted issuers.", no_args_is_help=True
)
principal_app = typer.Typer(help="Applications and managed identities of your tenant.", no_args_is_help=True)
secret_app = typer.Typer(help="Client secrets of applications.", no_args_is_help=True)
certificate_app = typer.Typer(help="Certificate credentials of applications.", no_args_is_help=True)
federated_app = typer.Typer(help="Federated credentials (workload identity federation).", no_args_is_help=True)
credential_app = typer.Typer(help="Every credential of a principal: list and revoke.", no_args_is_help=True)
endpoint_app = typer.Typer(help="Managed-identity endpoint secrets (IDENTITY_HEADER).", no_args_is_help=True)
issuer_app = typer.Typer(help="External OIDC issuers your tenant trusts.", no_args_is_help=True)
tenant_app = typer.Typer(help="Your tenant.", no_args_is_help=True)
for _sub, _name in (
    (principal_app, "principal"),
    (secret_app, "secret"),
    (certificate_app, "certificate"),
    (federated_app, "federated"),
    (credential_app, "credential"),
    (endpoint_app, "endpoint"),
    (issuer_app, "issuer"),
    (tenant_app, "tenant"),
):
    identity_app.add_typer(_sub, name=_name)

console = Console()
err = Console(stderr=True)

Addr = Annotated[str | None, typer.Option(help="Server URL, e.g. https://localhost:8443 (env COFFER_ADDR)")]
CaCert = Annotated[str | None, typer.Option(help="CA certificate file (env COFFER_CACERT / REQUESTS_CA_BUNDLE)")]
DataDir = Annotated[Path, typer.Option(help="Data directory of a local dev server (its dev.env is read).")]
PrincipalId = Annotated[str, typer.Argument(help="Object id or client id of the principal")]

_PRINCIPALS = "/admin/identity/principals"
_CERTIFICATE_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


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


def _time(value: Any) -> str:
    if value is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(int(value)))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _plain(value: Any) -> Text:
    """Cell text shown as is (no rich markup in names, subjects or URLs)."""
    return Text(_text(value))


def _table(*columns: str) -> Table:
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"
    return table


def _principal_table(rows: list[dict[str, Any]]) -> None:
    table = _table("display name", "kind", "object id", "client id", "created")
    for p in rows:
        table.add_row(_plain(p["displayName"]), p["kind"], p["objectId"], p["clientId"], _time(p["created"]))
    console.print(table)


def _principal_details(p: dict[str, Any]) -> None:
    _principal_table([p])
    console.print(f"tenant id:   {p['tenantId']}", highlight=False, markup=False, soft_wrap=True)
    if p.get("resourceId"):
        console.print(f"resource id: {p['resourceId']}", highlight=False, markup=False, soft_wrap=True)


def _credential_table(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "kind", "created", "expires", "details")
    for c in rows:
        details = []
        for key in ("description", "name", "issuer", "subject", "audiences", "x5t", "identities"):
            if c.get(key):
                details.append(f"{key}={_text(c[key])}")
        if c.get("imds"):
            details.append("imds")
        table.add_row(c["id"], c["kind"], _time(c["created"]), _time(c.get("expires")), Text("; ".join(details)))
    console.print(table)


def _show_once(label: str, value: str) -> None:
    console.print(f"{label}: {value}", highlight=False, markup=False, soft_wrap=True)
    console.print("[yellow]Store it now: Coffer keeps only a hash and will not show it again.[/yellow]")


# --- principals ---------------------------------------------------------------------------------


@principal_app.command("create")
def principal_create(
    name: Annotated[str, typer.Argument(help="Display name (for a managed identity: its resource name)")],
    managed_identity: Annotated[
        bool, typer.Option("--managed-identity", help="A managed identity (else an application)")
    ] = False,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Create an application (add a credential next) or a managed identity (its endpoint secret is shown once)."""
    kind = "managedIdentity" if managed_identity else "application"
    created = _call(addr, ca_cert, data_dir, "POST", _PRINCIPALS, {"displayName": name, "kind": kind})
    _principal_details(created)
    if created.get("identityHeader"):
        console.print(f"IDENTITY_ENDPOINT={created['identityEndpoint']}", highlight=False, markup=False, soft_wrap=True)
        _show_once("IDENTITY_HEADER", created["identityHeader"])
    else:
        console.print(
            f"Add a credential: coffer identity secret add {created['clientId']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


@principal_app.command("list")
def principal_list(addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """List the applications and managed identities of your tenant."""
    _principal_table(_call(addr, ca_cert, data_dir, "GET", _PRINCIPALS)["value"])


@principal_app.command("show")
def principal_show(
    principal: PrincipalId, addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")
) -> None:
    """Show one principal."""
    _principal_details(_call(addr, ca_cert, data_dir, "GET", f"{_PRINCIPALS}/{principal}"))


@principal_app.command("delete")
def principal_delete(
    principal: PrincipalId,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Delete a principal and all its credentials; its tokens stop working at once."""
    if not yes:
        typer.confirm(f"Delete principal {principal} and all its credentials?", abort=True)
    _call(addr, ca_cert, data_dir, "DELETE", f"{_PRINCIPALS}/{principal}")
    console.print(f"Deleted principal {principal}.", highlight=False, markup=False)


# --- credentials --------------------------------------------------------------------------------


def _add(addr: str | None, ca_cert: str | None, data_dir: Path, principal: str, body: dict[str, Any]) -> Any:
    return _call(addr, ca_cert, data_dir, "POST", f"{_PRINCIPALS}/{principal}/credentials", body)


@secret_app.command("add")
def secret_add(
    principal: PrincipalId,
    lifetime_days: Annotated[int | None, typer.Option(help="Expire after this many days (default: never)")] = None,
    description: Annotated[str | None, typer.Option(help="What the secret is for")] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Add a client secret to an application; it is shown once."""
    body: dict[str, Any] = {"kind": "clientSecret"}
    if lifetime_days is not None:
        body["lifetimeDays"] = lifetime_days
    if description:
        body["description"] = description
    created = _add(addr, ca_cert, data_dir, principal, body)
    _credential_table([created])
    _show_once("Client secret", created["secret"])


def _certificate_pem(path: Path) -> str:
    """The certificate(s) of a PEM or DER file: never send a private key that shares the file."""
    try:
        data = path.read_bytes()
    except OSError as error:
        _error(f"cannot read {path}: {error.strerror}")
        raise typer.Exit(1) from None
    blocks = _CERTIFICATE_PEM.findall(data)
    if blocks:
        return b"\n".join(blocks).decode("ascii", "replace") + "\n"
    if b"-----BEGIN" in data:
        _error(f"{path} holds no PEM certificate.")
        raise typer.Exit(1)
    encoded = base64.encodebytes(data).decode("ascii")  # DER
    return f"-----BEGIN CERTIFICATE-----\n{encoded}-----END CERTIFICATE-----\n"


@certificate_app.command("add")
def certificate_add(
    principal: PrincipalId,
    file: Annotated[Path, typer.Argument(help="The public certificate (PEM or DER); a private key is not sent")],
    description: Annotated[str | None, typer.Option(help="What the certificate is for")] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Register a certificate credential: the application signs client assertions with its private key."""
    body: dict[str, Any] = {"kind": "certificate", "certificate": _certificate_pem(file)}
    if description:
        body["description"] = description
    _credential_table([_add(addr, ca_cert, data_dir, principal, body)])


@federated_app.command("add")
def federated_add(
    principal: PrincipalId,
    name: Annotated[str, typer.Option(help="Name of the federated credential")],
    issuer: Annotated[str, typer.Option(help="Issuer (https URL) of the external tokens")],
    subject: Annotated[str, typer.Option(help="Subject (sub claim) of the external tokens")],
    audience: Annotated[
        list[str] | None, typer.Option(help="Accepted audience; repeatable (default api://AzureADTokenExchange)")
    ] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Trust an external issuer's tokens for this subject (workload identity federation)."""
    body: dict[str, Any] = {"kind": "federated", "name": name, "issuer": issuer, "subject": subject}
    if audience:
        body["audiences"] = audience
    _credential_table([_add(addr, ca_cert, data_dir, principal, body)])


@credential_app.command("list")
def credential_list(
    principal: PrincipalId, addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")
) -> None:
    """List a principal's credentials (never their secrets)."""
    _credential_table(_call(addr, ca_cert, data_dir, "GET", f"{_PRINCIPALS}/{principal}/credentials")["value"])


@credential_app.command("remove")
def credential_remove(
    principal: PrincipalId,
    credential_id: Annotated[str, typer.Argument(help="Id of the credential (see `credential list`)")],
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Revoke a credential: it, and tokens issued with it, stop working at once."""
    _call(addr, ca_cert, data_dir, "DELETE", f"{_PRINCIPALS}/{principal}/credentials/{credential_id}")
    console.print(f"Removed credential {credential_id}.", highlight=False, markup=False)


@endpoint_app.command("add")
def endpoint_add(
    principal: PrincipalId,
    imds: Annotated[bool, typer.Option("--imds", help="Serve this identity on the node's IMDS endpoint")] = False,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Add an endpoint secret (IDENTITY_HEADER) to a managed identity; it is shown once."""
    body: dict[str, Any] = {"kind": "identityEndpoint"}
    if imds:
        body["imds"] = True
    created = _add(addr, ca_cert, data_dir, principal, body)
    _credential_table([created])
    console.print(f"IDENTITY_ENDPOINT={created['identityEndpoint']}", highlight=False, markup=False, soft_wrap=True)
    _show_once("IDENTITY_HEADER", created["identityHeader"])


@endpoint_app.command("assign")
def endpoint_assign(
    principal: PrincipalId,
    credential_id: Annotated[str, typer.Argument(help="Id of the endpoint credential")],
    identity: Annotated[str, typer.Argument(help="Object id or client id of the managed identity to serve")],
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Let an endpoint also serve another managed identity (selected by client_id, object_id or mi_res_id)."""
    path = f"{_PRINCIPALS}/{principal}/credentials/{credential_id}/identities"
    _credential_table([_call(addr, ca_cert, data_dir, "POST", path, {"identity": identity})])


# --- issuers and tenant -------------------------------------------------------------------------


def _issuer_table(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "issuer", "jwks", "audience", "created")
    for i in rows:
        jwks = i["jwks"]
        source = _plain(f"inline ({len(jwks.get('keys', []))} keys)" if isinstance(jwks, dict) else jwks)
        table.add_row(i["id"], _plain(i["issuer"]), source, _plain(i.get("audience")), _time(i["created"]))
    console.print(table)


def _jwks_argument(source: str) -> Any:
    """A local file is read and sent inline; anything else (https URL, path on the server) as given."""
    path = Path(source)
    if "://" in source or not path.is_file():
        return source
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        _error(f"{path} is not a JSON JWKS document: {error}")
        raise typer.Exit(1) from None


@issuer_app.command("add")
def issuer_add(
    issuer: Annotated[str, typer.Option(help="Issuer (iss claim, https URL)")],
    jwks: Annotated[str, typer.Option(help="Signing keys: https URL, local JWKS file (sent inline), or server path")],
    audience: Annotated[
        str | None, typer.Option(help="Audience of the issuer's tokens accepted by the data plane")
    ] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Trust an external OIDC issuer."""
    body: dict[str, Any] = {"issuer": issuer, "jwks": _jwks_argument(jwks)}
    if audience:
        body["audience"] = audience
    _issuer_table([_call(addr, ca_cert, data_dir, "POST", "/admin/identity/issuers", body)])


@issuer_app.command("list")
def issuer_list(addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """List the issuers your tenant trusts."""
    _issuer_table(_call(addr, ca_cert, data_dir, "GET", "/admin/identity/issuers")["value"])


@issuer_app.command("remove")
def issuer_remove(
    issuer_id: Annotated[str, typer.Argument(help="Id of the trusted issuer (see `issuer list`)")],
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Stop trusting an issuer."""
    _call(addr, ca_cert, data_dir, "DELETE", f"/admin/identity/issuers/{issuer_id}")
    console.print(f"Removed issuer {issuer_id}.", highlight=False, markup=False)


@tenant_app.command("show")
def tenant_show(addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """Show your tenant."""
    tenant = _call(addr, ca_cert, data_dir, "GET", "/admin/identity/tenant")
    table = _table("tenant id", "display name")
    table.add_row(tenant["id"], _plain(tenant["displayName"]))
    console.print(table)
