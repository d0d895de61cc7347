"""`coffer`: run the server, operate its seal, and manage vaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from coffer import __version__
from coffer.cli.client import ClientError, CofferClient
from coffer.cli.identity import identity_app

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
) -> None:
    """Run the HTTPS server."""
    from coffer.cli.server import serve
    from coffer.config import from_environment

    if (tls_cert is None) != (tls_key is None):
        err.print("[red]error:[/red] --tls-cert and --tls-key go together")
        raise typer.Exit(2)
    serve(
        from_environment(
            dev=dev or None,
            data_dir=data_dir,
            port=port,
            bind=bind,
            dns_suffix=dns_suffix,
            public_port=public_port,
            tls_cert=tls_cert,
            tls_key=tls_key,
            imds=imds,
        )
    )


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


def _print_status(status: dict[str, Any]) -> None:
    state = "sealed" if status["sealed"] else "unsealed"
    console.print(
        f"initialized: {status['initialized']}  state: {state}  "
        f"progress: {status['progress']}/{status['threshold']}  shares: {status['shares']}"
    )


def _vault_table(vaults: list[dict[str, Any]]) -> None:
    table = Table("name", "url", "sku", "retention days", "purge protection", "recovery level")
    for v in vaults:
        table.add_row(
            v["name"],
            v["vaultUri"],
            v["sku"],
            str(v["softDeleteRetentionInDays"]),
            str(v["enablePurgeProtection"]),
            v["recoveryLevel"],
        )
    console.print(table)


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


def main() -> None:
    app()
