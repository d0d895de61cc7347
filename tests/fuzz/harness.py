"""Drive schemathesis over Microsoft's Key Vault specs against a real dev server.

One Hypothesis run per (operation, generation mode), deterministic (fixed seed, no example database), every request
sent with a real bearer token of the dev service principal. Checks on every response:
- `not_a_server_error`: no 5xx, ever;
- `response_schema_conformance`: the body matches the spec's schema for the status (`default`, Key Vault's
  `KeyVaultError`, for errors);
- `azure_error_envelope`: every 4xx is Azure's `{"error": {"code": str, "message": str}}`.

Nothing is excluded. The operations Coffer does not support (docs/compatibility.md: release and getKeyAttestation
answer 400 NotSupported; 2026-04-01's securewrapkey/secureunwrapkey 400 BadParameter, unknown key operation) are
errors like any other: checked for 5xx, the envelope and the spec's `default` (KeyVaultError) schema. Where the specs
and Key Vault disagree, tests/fuzz/specs.py adjusts the spec (nextLink null, Rotate/Notify), as documented there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.fuzz.specs import load_spec
from tests.support.server import DevServer


def bearer_token(server: DevServer) -> str:
    from azure.identity import ClientSecretCredential

    credential = ClientSecretCredential(
        server.env["COFFER_TENANT_ID"], server.env["COFFER_CLIENT_ID"], server.env["COFFER_CLIENT_SECRET"],
        authority=server.authority, disable_instance_discovery=True, connection_verify=server.ca,
    )
    try:
        return credential.get_token(f"{server.authority}/.default").token
    finally:
        credential.close()


def azure_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx/5xx body is `{"error": {"code": "<non-empty>", "message": "<str>", ...}}`."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} error body is not JSON: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and isinstance(error.get("code"), str) and error["code"]
            and isinstance(error.get("message"), str)):
        raise AssertionError(f"{response.status_code} error body is not Azure's envelope: {body!r:.300}")
    return None


CHECKS = [not_a_server_error, response_schema_conformance, azure_error_envelope]


@dataclass
class FuzzRun:
    server: DevServer
    max_examples: int
    seed: int = 20260401
    shrink: bool = False
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)
    # path parameters of real objects (see `create_targets`): a third run per operation, positive cases with these
    # pinned, so that the 200 bodies of reads, updates and cryptographic operations are checked against the schemas
    # too (random names mostly meet 404s)
    targets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.session.verify = self.server.ca
        self.session.headers["Authorization"] = f"Bearer {bearer_token(self.server)}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.server.vault_url}{path}", params={"api-version": "7.4"},
                                    verify=self.server.ca, timeout=60, **kwargs)

    def create_targets(self) -> None:
        """A secret, an RSA key, a self-signed certificate and an issuer for the pinned run."""
        secret = self.request("PUT", "/secrets/fuzz-target", json={"value": "fuzz"})
        key = self.request("POST", "/keys/fuzz-target/create", json={"kty": "RSA", "key_size": 2048})
        policy = {"issuer": {"name": "Self"}, "x509_props": {"subject": "CN=fuzz", "validity_months": 12},
                  "key_props": {"kty": "RSA", "key_size": 2048, "exportable": True},
                  "secret_props": {"contentType": "application/x-pkcs12"}}
        certificate = self.request("POST", "/certificates/fuzz-target/create", json={"policy": policy})
        issuer = self.request("PUT", "/certificates/issuers/fuzz-target", json={"provider": "Test"})
        for response in (secret, key, certificate, issuer):
            assert response.status_code in (200, 202), response.text
        self.targets = {
            "secret-name": "fuzz-target", "secret-version": secret.json()["id"].rsplit("/", 1)[1],
            "key-name": "fuzz-target", "key-version": key.json()["key"]["kid"].rsplit("/", 1)[1],
            "certificate-name": "fuzz-target", "issuer-name": "fuzz-target",
            "certificate-version": self.request("GET", "/certificates/fuzz-target").json()["id"].rsplit("/", 1)[1],
        }

    def operations(self, version: str, family: str) -> list[Any]:
        schema = schemathesis.openapi.from_dict(load_spec(version, family))
        return [result.ok() for result in schema.get_all_operations()]

    def fuzz(self, operation: Any) -> list[str]:
        """Run every generation mode over `operation`; the failures found (empty: none)."""
        failures: list[str] = []
        phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if self.shrink else [])
        runs = [(mode.value, operation.as_strategy(generation_mode=mode)) for mode in self.modes]
        pinned = {p.name: self.targets[p.name] for p in operation.path_parameters if p.name in self.targets}
        if pinned and operation.method.upper() != "DELETE":  # deleting or purging the targets would end the run
            runs.append(("existing objects", operation.as_strategy(GenerationMode.POSITIVE, path_parameters=pinned)))
        for label, strategy in runs:

            @hypothesis.settings(max_examples=self.max_examples, deadline=None, database=None, phases=phases,
                                 suppress_health_check=list(HealthCheck), print_blob=False, derandomize=False)
            @hypothesis.seed(self.seed)
            @hypothesis.given(case=strategy)
            def run(case: Any) -> None:
                response = case.call(base_url=self.server.vault_url, session=self.session, verify=self.server.ca,
                                     timeout=60)
                self.cases += 1
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # a failed check (a FailureGroup), after shrinking when enabled
                failures.append(f"{operation.label} [{label}]: {error}")
        return failures
