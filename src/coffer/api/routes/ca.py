"""Coffer's internal certificate authorities (the CLI's `coffer ca ...`): admin API under
/admin/vaults/{vault}/ca/{name} (authorized like other vault admin operations: vault write/read), and the CA
certificate published unauthenticated at GET /ca/{vault}/{name}.pem on the server host so clients can trust it.
The CA key is an HSM key (premium vault, server with an HSM: the default) or a software key (`hsm: false`).
Each CA is also the vault's certificate issuer NAME (provider "Coffer"); objects/certificate.py holds the CA."""

from __future__ import annotations

from typing import Any

from coffer.api.request import ApiRequest
from coffer.api.routes.admin import _own, _run
from coffer.api.routing import Route
from coffer.barrier import VaultView
from coffer.core import Context, Result
from coffer.errors import BadParameter, NotFound
from coffer.objects import certificate
from coffer.objects import key as keys


def _view(ctx: Context, vault_name: str) -> VaultView:
    return VaultView(ctx.tx, ctx.barrier, _own(ctx, vault_name))


def _backends(req: ApiRequest) -> keys.Backends:
    backends: keys.Backends = req.app.key_backends
    return backends


def _with_url(req: ApiRequest, info: dict[str, Any]) -> dict[str, Any]:
    return {**info, "url": f"{req.app.authority}/ca/{info['vault']}/{info['name']}.pem"}


async def create_ca(req: ApiRequest) -> Result:
    vault_name, name = req.params["vault"], req.params["name"]
    body = await req.json(required=False) or {}
    subject = body.get("subject")
    years = body.get("validityYears", 10)
    hsm = body.get("hsm")
    intermediate = body.get("intermediate", False)
    intermediate_subject = body.get("intermediateSubject")
    if subject is not None and not isinstance(subject, str):
        raise BadParameter("Property subject must be a string.")
    if intermediate_subject is not None and not isinstance(intermediate_subject, str):
        raise BadParameter("Property intermediateSubject must be a string.")
    if not isinstance(intermediate, bool):
        raise BadParameter("Property intermediate must be a boolean.")
    if isinstance(years, bool) or not isinstance(years, int):
        raise BadParameter("Property validityYears must be an integer.")
    if hsm is not None and not isinstance(hsm, bool):
        raise BadParameter("Property hsm must be a boolean.")

    def run(ctx: Context) -> Result:
        view = _view(ctx, vault_name)
        info = certificate.ca_create(
            view,
            _backends(req),
            name,
            subject=subject,
            validity_years=years,
            hsm=hsm,
            intermediate=intermediate,
            intermediate_subject=intermediate_subject,
        )
        return Result(status=201, body=_with_url(req, info))

    return await _run(req, "CertificateAuthorityPut", "write", f"/vaults/{vault_name}", True, run)


async def get_ca(req: ApiRequest) -> Result:
    vault_name, name = req.params["vault"], req.params["name"]

    def run(ctx: Context) -> Result:
        return Result(body=_with_url(req, certificate.ca_get(_view(ctx, vault_name), name)))

    return await _run(req, "CertificateAuthorityGet", "read", f"/vaults/{vault_name}", False, run)


async def rotate_ca(req: ApiRequest) -> Result:
    vault_name, name = req.params["vault"], req.params["name"]

    def run(ctx: Context) -> Result:
        info = certificate.ca_rotate(_view(ctx, vault_name), _backends(req), name)
        return Result(body=_with_url(req, info))

    return await _run(req, "CertificateAuthorityRotate", "write", f"/vaults/{vault_name}", True, run)


async def delete_ca(req: ApiRequest) -> Result:
    vault_name, name = req.params["vault"], req.params["name"]

    def run(ctx: Context) -> Result:
        info = certificate.ca_delete(_view(ctx, vault_name), _backends(req), name)
        return Result(body=_with_url(req, info))

    return await _run(req, "CertificateAuthorityDelete", "write", f"/vaults/{vault_name}", True, run)


async def publish_ca(req: ApiRequest) -> Result:
    """Unauthenticated: the current CA certificate (PEM) of an internal CA."""
    vault_name, file = req.params["vault"], req.params["file"]
    if not file.endswith(".pem"):
        raise NotFound("Not found.", code="NotFound")
    name = file[: -len(".pem")]
    with req.app.storage.read() as tx:
        row = tx.vault_get(vault_name)
        if row is None:
            raise NotFound(f"Vault {vault_name[:64]} was not found.", code="VaultNotFound")
        pem = certificate.ca_pem(VaultView(tx, req.app.barrier, row), name)
    return Result(body=pem.encode("ascii"), headers={"content-type": "application/x-pem-file"})


ROUTES = [
    Route("PUT", "/admin/vaults/{vault}/ca/{name}", create_ca),
    Route("GET", "/admin/vaults/{vault}/ca/{name}", get_ca),
    Route("POST", "/admin/vaults/{vault}/ca/{name}/rotate", rotate_ca),
    Route("DELETE", "/admin/vaults/{vault}/ca/{name}", delete_ca),
]
PUBLIC_ROUTES = [Route("GET", "/ca/{vault}/{file}", publish_ca)]
