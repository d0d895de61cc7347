"""`coffer`: run the server, operate its seal, and manage vaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from coffer import __version__
from coffer.cli.client import ClientError, CofferClient
from coffer.cli.identity import identity_app
from coffer.cli.role import role_app

app = typer.Typer(
    help="Coffer: secrets, keys and certificates behind the Azure Key Vault API.",
    no_args_is_help=True,
    add_completion=False,
)
operator = typer.Typer(help="Initialise, unseal and seal a server.", no_args_is_help=True)
vault_app = typer.Typer(help="Manage vaults (one per environment is the recommended pattern).", no_args_is_help=True)
app.add_typer(operator, name="operator")
app.add_typer(vault_app, name="vault")
app.add_typer(identity_app, name="identity")
app.add_typer(role_app, name="role")
policy_app = typer.Typer(
    help="Legacy access policies of a vault (they decide only when the vault uses --access-policies).",
    no_args_is_help=True,
)
vault_app.add_typer(policy_app, name="policy")
ca_app = typer.Typer(help="Internal certificate authorities of a vault (certificate issuers).", no_args_is_help=True)
app.add_typer(ca_app, name="ca")
console = Console()
err = Console(stderr=True)

Addr = Annotated[str | None, typer.Option(help="Server URL, e.g. https://localhost:8443 (env COFFER_ADDR)")]
CaCert = Annotated[str | None, typer.Option(help="CA certificate file (env COFFER_CACERT or REQUESTS_CA_BUNDLE)")]
DataDir = Annotated[Path, typer.Option(help="Data directory of a local dev server (its dev.env is read).")]


def _client(addr: str | None, ca_cert: str | None, data_dir: Path) -> CofferClient:
    return CofferClient(addr=addr, ca_cert=ca_cert, data_dir=data_dir)


def _fail(error: ClientError) -> None:
    err.print(f"[red]error:[/red] {error.code}: {error.message}" if error.code else f"[red]error:[/red] {error}")
    raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(__version__)


@app.command()
def server(
    dev: Annotated[
        bool, typer.Option("--dev", help="Development mode: auto-unseal, dev vault and identities.")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default ./.coffer)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTPS port; 0 picks a free one (default 8443)")] = None,
    bind: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1)")] = None,
    dns_suffix: Annotated[str | None, typer.Option(help="Vault host suffix: vault X is X.<suffix>")] = None,
    public_port: Annotated[int | None, typer.Option(help="Port clients use, if not --port (load balancer)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Certificate chain file (PEM) for a real deployment")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key file (PEM) of --tls-cert")] = None,
    imds: Annotated[
        bool | None, typer.Option("--imds/--no-imds", help="Serve managed-identity tokens over IMDS to local callers")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1; COFFER_WORKERS)")] = None,
) -> None:
    """Run the HTTPS server."""
    from coffer.cli.server import serve
    from coffer.config import from_environment

    if (tls_cert is None) != (tls_key is None):
        err.print("[red]error:[/red] --tls-cert and --tls-key go together")
        raise typer.Exit(2)
    try:
        config = from_environment(
            dev=dev or None,
            data_dir=data_dir,
            port=port,
            bind=bind,
            dns_suffix=dns_suffix,
            public_port=public_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            imds=imds,
            workers=workers,
        )
    except ValueError as error:  # a malformed or incomplete COFFER_* variable
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from None
    serve(config)


@operator.command("init")
def operator_init(
    shares: Annotated[int, typer.Option(help="Number of unseal key shares")] = 5,
    threshold: Annotated[int, typer.Option(help="Shares needed to unseal")] = 3,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Initialise a new server: print the unseal shares and the bootstrap administrator, once."""
    try:
        result = _client(addr, ca_cert, data_dir).call(
            "POST", "/v1/sys/init", {"shares": shares, "threshold": threshold}, auth=False
        )
    except ClientError as error:
        _fail(error)
        return
    for index, share in enumerate(result["shares"], start=1):
        console.print(f"Unseal share {index}: {share}")
    console.print(f"\nThreshold: {result['threshold']} of {len(result['shares'])} shares unseal the server.")
    if "hsmAutoUnseal" in result:
        hsm = "on: the server unseals itself with the HSM" if result["hsmAutoUnseal"] else "off (see the server log)"
        console.print(f"HSM auto-unseal: {hsm}; the shares remain the recovery path.")
    console.print("Bootstrap administrator (store it safely; it is not shown again):")
    console.print(
        f"  COFFER_TENANT_ID={result['tenantId']}\n  COFFER_CLIENT_ID={result['clientId']}\n"
        f"  COFFER_CLIENT_SECRET={result['clientSecret']}"
    )
    console.print("[yellow]Give each share to a different person; Coffer does not keep them.[/yellow]")


@operator.command("unseal")
def operator_unseal(
    share: Annotated[str | None, typer.Argument(help="One share; prompted (hidden) when omitted")] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Submit one unseal share; repeat until the threshold is reached."""
    if share is None:
        share = typer.prompt("Unseal share", hide_input=True)
    try:
        status = _client(addr, ca_cert, data_dir).call("POST", "/v1/sys/unseal", {"key": share}, auth=False)
    except ClientError as error:
        _fail(error)
        return
    _print_status(status)


@operator.command("status")
def operator_status(addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """Show whether the server is initialised and sealed."""
    try:
        _print_status(_client(addr, ca_cert, data_dir).call("GET", "/v1/sys/seal-status", auth=False))
    except ClientError as error:
        _fail(error)


@operator.command("seal")
def operator_seal(addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """Seal the server: it forgets its root key and serves nothing until unsealed."""
    try:
        _client(addr, ca_cert, data_dir).call("POST", "/v1/sys/seal")
    except ClientError as error:
        _fail(error)
    console.print("Sealed.")


@operator.command("migrate")
def operator_migrate(
    source: Annotated[str, typer.Option("--from", help="A data directory, a SQLite file, or a postgresql:// URL")],
    destination: Annotated[str, typer.Option("--to", help="An empty destination: postgresql:// URL or SQLite path")],
) -> None:
    """Copy a whole installation to another storage backend, sealed data as it is, and verify it (row counts and
    SHA-256 per table). Stop every server using the source first; the destination must be empty."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from coffer.storage import open_storage
    from coffer.storage.copy import CopyError, copy_installation, row_counts

    if "://" not in source and not Path(source).exists():
        err.print(f"[red]error:[/red] {source} does not exist")
        raise typer.Exit(2)
    src, dst = open_storage(source), open_storage(destination)
    try:
        src.migrate()
        dst.migrate()
        counts = row_counts(src)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
            task = bar.add_task("copying rows", total=sum(counts.values()))
            summaries = copy_installation(src, dst, lambda _table, n: bar.advance(task, n))
    except CopyError as error:
        err.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    finally:
        src.close()
        dst.close()
    table = Table("table", "rows", "sha256", title="Copied and verified")
    for summary in summaries:
        table.add_row(summary.table, str(summary.rows), summary.sha256)
    console.print(table)


def _print_status(status: dict[str, Any]) -> None:
    state = "sealed" if status["sealed"] else "unsealed"
    console.print(
        f"initialized: {status['initialized']}  state: {state}  "
        f"progress: {status['progress']}/{status['threshold']}  shares: {status['shares']}"
    )
    hsm = status.get("hsm")
    if hsm:
        available = "available" if hsm.get("available") else "unavailable"
        console.print(
            f"hsm: token {hsm.get('token')} {available}  auto-unseal: {hsm.get('autoUnseal')}"
            + (f"  error: {hsm['error']}" if hsm.get("error") else "")
        )


def _vault_table(vaults: list[dict[str, Any]]) -> None:
    table = Table("name", "url", "sku", "retention days", "purge protection", "recovery level", "permission model")
    for v in vaults:
        table.add_row(
            v["name"],
            v["vaultUri"],
            v["sku"],
            str(v["softDeleteRetentionInDays"]),
            str(v["enablePurgeProtection"]),
            v["recoveryLevel"],
            _model(v),
        )
    console.print(table)


def _model(v: dict[str, Any]) -> str:
    if v.get("enableRbacAuthorization", True):
        return "rbac"
    return f"access policies ({len(v.get('accessPolicies') or [])})"


@vault_app.command("create")
def vault_create(
    name: str,
    retention_days: Annotated[int, typer.Option(help="Soft-delete retention, 7-90 days")] = 90,
    purge_protection: Annotated[bool, typer.Option(help="Irreversible: no purge before retention ends")] = False,
    sku: Annotated[str, typer.Option(help="standard or premium (HSM keys)")] = "standard",
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Create a vault."""
    try:
        body = {"softDeleteRetentionInDays": retention_days, "enablePurgeProtection": purge_protection, "sku": sku}
        _vault_table([_client(addr, ca_cert, data_dir).call("PUT", f"/admin/vaults/{name}", body)])
    except ClientError as error:
        _fail(error)


@vault_app.command("list")
def vault_list(addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """List vaults of your tenant."""
    try:
        _vault_table(_client(addr, ca_cert, data_dir).call("GET", "/admin/vaults")["value"])
    except ClientError as error:
        _fail(error)


@vault_app.command("show")
def vault_show(name: str, addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """Show one vault."""
    try:
        _vault_table([_client(addr, ca_cert, data_dir).call("GET", f"/admin/vaults/{name}")])
    except ClientError as error:
        _fail(error)


@vault_app.command("update")
def vault_update(
    name: str,
    retention_days: Annotated[int | None, typer.Option(help="Soft-delete retention, 7-90 days")] = None,
    purge_protection: Annotated[bool | None, typer.Option("--purge-protection", help="Enable (irreversible)")] = None,
    sku: Annotated[str | None, typer.Option(help="standard or premium")] = None,
    rbac: Annotated[
        bool | None,
        typer.Option(
            "--rbac/--access-policies",
            help="Permission model: Azure RBAC role assignments (the default of new vaults), or the vault's legacy "
            "access policies (coffer vault policy ...)",
        ),
    ] = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Change a vault's settings."""
    body: dict[str, Any] = {}
    if retention_days is not None:
        body["softDeleteRetentionInDays"] = retention_days
    if purge_protection:
        body["enablePurgeProtection"] = True
    if sku is not None:
        body["sku"] = sku
    if rbac is not None:
        body["enableRbacAuthorization"] = rbac
    try:
        _vault_table([_client(addr, ca_cert, data_dir).call("PATCH", f"/admin/vaults/{name}", body)])
    except ClientError as error:
        _fail(error)


@vault_app.command("delete")
def vault_delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Delete a vault and everything in it (refused under purge protection while it holds objects)."""
    if not yes:
        typer.confirm(f"Delete vault {name} and every object in it?", abort=True)
    try:
        _client(addr, ca_cert, data_dir).call("DELETE", f"/admin/vaults/{name}")
    except ClientError as error:
        _fail(error)
    console.print(f"Deleted vault {name}.")


# --- access policies ----------------------------------------------------------------------------

_PERMISSION_KINDS = (("secrets", "secret"), ("keys", "key"), ("certificates", "certificate"), ("storage", "storage"))


def _permissions(values: list[str] | None) -> list[str]:
    """`get,list` or repeated options → ["get", "list"]."""
    return [p.strip() for value in values or [] for p in value.split(",") if p.strip()]


def _policy_entry(
    object_id: str,
    application_id: str | None,
    secrets: list[str] | None,
    keys: list[str] | None,
    certificates: list[str] | None,
    storage: list[str] | None,
) -> dict[str, Any]:
    permissions = {
        kind: _permissions(values)
        for kind, values in (("secrets", secrets), ("keys", keys), ("certificates", certificates), ("storage", storage))
        if _permissions(values)
    }
    entry: dict[str, Any] = {"objectId": object_id, "permissions": permissions}
    if application_id:
        entry["applicationId"] = application_id
    return entry


def _policy_table(result: dict[str, Any]) -> None:
    table = Table("object id", "application id", "secrets", "keys", "certificates", "storage")
    for entry in result["accessPolicies"]:
        perms = entry.get("permissions", {})
        table.add_row(
            entry["objectId"],
            entry.get("applicationId") or "",
            *(", ".join(perms.get(kind) or []) for kind, _ in _PERMISSION_KINDS),
        )
    console.print(table)
    count = len(result["accessPolicies"])
    console.print(f"{count} access policy entr{'y' if count == 1 else 'ies'} (at most 1024).", highlight=False)
    if result.get("enableRbacAuthorization"):
        console.print(
            f"[yellow]Vault {result['name']} uses Azure RBAC: these policies do not apply until "
            f"`coffer vault update {result['name']} --access-policies`.[/yellow]"
        )


def _update_policies(
    addr: str | None, ca_cert: str | None, data_dir: Path, vault: str, kind: str, entries: list[dict[str, Any]]
) -> None:
    try:
        result = _client(addr, ca_cert, data_dir).call(
            "PUT", f"/admin/vaults/{vault}/accessPolicies/{kind}", {"accessPolicies": entries}
        )
    except ClientError as error:
        _fail(error)
        return
    _policy_table(result)


ObjectId = Annotated[str, typer.Option(help="Object id of the principal (a client id is resolved to it)")]
ApplicationId = Annotated[
    str | None, typer.Option(help="Compound identity: the entry applies only to this application on the principal")
]
SecretPerms = Annotated[
    list[str] | None,
    typer.Option(help="Secret permissions, comma-separated: get,list,set,delete,backup,restore,recover,purge or all"),
]
KeyPerms = Annotated[
    list[str] | None,
    typer.Option(
        help="Key permissions, comma-separated: get,list,create,import,update,delete,"
        "encrypt,decrypt,wrapKey,unwrapKey,sign,verify,backup,restore,recover,purge,"
        "release,rotate,getrotationpolicy,setrotationpolicy or all"
    ),
]
CertificatePerms = Annotated[
    list[str] | None,
    typer.Option(
        help="Certificate permissions, comma-separated: get,list,create,import,update,"
        "delete,managecontacts,getissuers,listissuers,setissuers,deleteissuers,"
        "manageissuers,recover,purge,backup,restore or all"
    ),
]
StoragePerms = Annotated[list[str] | None, typer.Option(help="Storage account permissions, comma-separated")]


@policy_app.command("list")
def policy_list(vault: str, addr: Addr = None, ca_cert: CaCert = None, data_dir: DataDir = Path(".coffer")) -> None:
    """Show a vault's access policies."""
    try:
        result = _client(addr, ca_cert, data_dir).call("GET", f"/admin/vaults/{vault}/accessPolicies")
    except ClientError as error:
        _fail(error)
        return
    _policy_table(result)


@policy_app.command("add")
def policy_add(
    vault: str,
    object_id: ObjectId,
    application_id: ApplicationId = None,
    secret_permissions: SecretPerms = None,
    key_permissions: KeyPerms = None,
    certificate_permissions: CertificatePerms = None,
    storage_permissions: StoragePerms = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Grant permissions to a principal (merged into its entry, or a new entry)."""
    entry = _policy_entry(
        object_id, application_id, secret_permissions, key_permissions, certificate_permissions, storage_permissions
    )
    if not entry["permissions"]:
        err.print("[red]error:[/red] give at least one of --secret-, --key-, --certificate-, --storage-permissions")
        raise typer.Exit(2)
    _update_policies(addr, ca_cert, data_dir, vault, "add", [entry])


@policy_app.command("remove")
def policy_remove(
    vault: str,
    object_id: ObjectId,
    application_id: ApplicationId = None,
    secret_permissions: SecretPerms = None,
    key_permissions: KeyPerms = None,
    certificate_permissions: CertificatePerms = None,
    storage_permissions: StoragePerms = None,
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Take the given permissions from a principal's entry; without any, remove the whole entry."""
    entry = _policy_entry(
        object_id, application_id, secret_permissions, key_permissions, certificate_permissions, storage_permissions
    )
    _update_policies(addr, ca_cert, data_dir, vault, "remove", [entry])


@policy_app.command("set")
def policy_set(
    vault: str,
    file: Annotated[
        Path, typer.Option(help='JSON file: a list of entries, or {"accessPolicies": [...]} (Azure\'s shape)')
    ],
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Replace all of a vault's access policies with the file's."""
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        err.print(f"[red]error:[/red] cannot read {file}: {error}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if isinstance(document, dict):
        document = document.get("accessPolicies", document.get("properties", {}).get("accessPolicies"))
    if not isinstance(document, list):
        err.print('[red]error:[/red] the file must hold a list of entries or {"accessPolicies": [...]}')
        raise typer.Exit(1)
    _update_policies(addr, ca_cert, data_dir, vault, "replace", document)


def _ca_table(info: dict[str, Any]) -> None:
    table = Table(title=f"CA {info['name']} ({info['vault']})")
    table.add_column("field")
    table.add_column("value")
    current = info["current"]
    for field, value in (
        ("issuer", f"{info['name']} (provider {info['provider']})"),
        ("subject", info["subject"]),
        ("key", f"{info['keyType']} {info['keySize']} ({'HSM' if info['hsm'] else 'software'})"),
        ("current", f"{current['id']} x5t={current['x5t']}"),
        *(
            [("intermediate", f"{info['intermediateSubject']} x5t={current['intermediate']['x5t']}")]
            if "intermediate" in current
            else []
        ),
        ("previous", str(len(info["previous"]))),
        ("publish url", info["url"]),
    ):
        table.add_row(field, str(value))
    console.print(table)


def _ca_call(
    addr: str | None, ca_cert: str | None, data_dir: Path, method: str, path: str, output: str, body: Any = None
) -> None:
    """One CA admin call; the CA shown as a table or as JSON."""
    try:
        info = _client(addr, ca_cert, data_dir).call(method, path, body)
    except ClientError as error:
        _fail(error)
        return
    console.print_json(json.dumps(info)) if output == "json" else _ca_table(info)


@ca_app.command("create")
def ca_create(
    vault: str,
    name: Annotated[str, typer.Option(help="CA (and certificate issuer) name")] = "coffer-ca",
    subject: Annotated[str | None, typer.Option(help='Subject, e.g. "CN=Corp Root CA"')] = None,
    validity_years: Annotated[int, typer.Option(help="Validity of the CA certificate, years")] = 10,
    hsm: Annotated[
        bool | None,
        typer.Option(
            "--hsm/--software",
            help="Where the CA key lives: in the HSM (non-extractable) or in software, sealed by the vault "
            "(default: the HSM when the vault is premium and the server has an HSM)",
            show_default=False,
        ),
    ] = None,
    intermediate: Annotated[
        bool, typer.Option("--intermediate", help="Also an intermediate CA, signed by the root, that signs leaves")
    ] = False,
    intermediate_subject: Annotated[str | None, typer.Option(help="Subject of the intermediate CA")] = None,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Create an internal CA and register it as the vault's certificate issuer NAME."""
    body: dict[str, Any] = {"validityYears": validity_years}
    if subject:
        body["subject"] = subject
    if intermediate or intermediate_subject:
        body["intermediate"] = True
    if intermediate_subject:
        body["intermediateSubject"] = intermediate_subject
    if hsm is not None:
        body["hsm"] = hsm
    _ca_call(addr, ca_cert, data_dir, "PUT", f"/admin/vaults/{vault}/ca/{name}", output, body)


@ca_app.command("show")
def ca_show(
    vault: str,
    name: str,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Show an internal CA."""
    _ca_call(addr, ca_cert, data_dir, "GET", f"/admin/vaults/{vault}/ca/{name}", output)


@ca_app.command("rotate")
def ca_rotate(
    vault: str,
    name: str,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """New CA key and certificate (same protection); earlier certificates are kept so existing chains still verify,
    earlier keys are destroyed (HSM keys leave the token)."""
    _ca_call(addr, ca_cert, data_dir, "POST", f"/admin/vaults/{vault}/ca/{name}/rotate", output)


@ca_app.command("delete")
def ca_delete(
    vault: str,
    name: str,
    output: Annotated[str, typer.Option(help="table or json")] = "table",
    addr: Addr = None,
    ca_cert: CaCert = None,
    data_dir: DataDir = Path(".coffer"),
) -> None:
    """Delete an internal CA for good: its keys (HSM keys leave the token), certificates and issuer entry.
    Certificates it issued stay."""
    _ca_call(addr, ca_cert, data_dir, "DELETE", f"/admin/vaults/{vault}/ca/{name}", output)


def main() -> None:
    app()
