"""Findings of the conformance fuzzer (tests/fuzz), each as the minimal request that showed it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fuzz.harness import bearer_token
from tests.support.server import DevServer


@pytest.fixture(scope="module")
def session(dev_server: DevServer) -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.verify = dev_server.ca
        http.headers["Authorization"] = f"Bearer {bearer_token(dev_server)}"
        yield http


def _call(server: DevServer, http: requests.Session, method: str, path: str, version: str = "7.4",
          **kwargs: Any) -> requests.Response:
    return http.request(method, f"{server.vault_url}{path}", params={"api-version": version}, timeout=60,
                        verify=server.ca, **kwargs)


SELF_POLICY = {"issuer": {"name": "Self"}, "x509_props": {"subject": "CN=fuzz-regression", "validity_months": 12},
               "key_props": {"kty": "RSA", "key_size": 2048, "exportable": True},
               "secret_props": {"contentType": "application/x-pkcs12"}}


@pytest.mark.parametrize("version", ["7.4", "2026-04-01"])
def test_certificate_operation_has_no_null_fields(dev_server: DevServer, session: requests.Session,
                                                  version: str) -> None:
    """Finding: a Self certificate's operation answered `"csr": null, "status_details": null` (create's 202, GET and
    PATCH .../pending); the specs type both as strings. Key Vault leaves out what the operation does not have, and
    its 202 carries the in-progress status_details."""
    name = f"fuzz-regression-op-{version.replace('.', '-')}"
    created = _call(dev_server, session, "POST", f"/certificates/{name}/create", version, json={"policy": SELF_POLICY})
    assert created.status_code == 202, created.text
    body = created.json()
    assert None not in body.values(), body
    assert body["status"] == "inProgress"
    assert body["status_details"].startswith("Pending certificate created.")
    again = _call(dev_server, session, "POST", f"/certificates/{name}/create", version, json={})  # existing policy
    assert again.status_code == 202, again.text
    assert None not in again.json().values(), again.json()
    for method, kwargs in (("GET", {}), ("PATCH", {"json": {"cancellation_requested": False}})):
        pending = _call(dev_server, session, method, f"/certificates/{name}/pending", version, **kwargs)
        assert pending.status_code == 200, pending.text
        assert None not in pending.json().values(), pending.json()
        assert pending.json()["status"] == "completed"


@pytest.mark.parametrize("duration", ["P10000Y", "P99999999999Y", "P7990Y", "P99999999999D"])
@pytest.mark.parametrize("member", ["timeAfterCreate", "timeBeforeExpiry", "expiryTime"])
def test_rotation_policy_duration_out_of_range_is_bad_parameter(dev_server: DevServer, session: requests.Session,
                                                                member: str, duration: str) -> None:
    """Finding: a rotation-policy duration past year 9999 (`P10000Y`) answered 500 InternalError (datetime overflow);
    `P7990Y` passed validation (done from 1970) and would have overflowed once applied from today. Key Vault answers
    400 BadParameter to a malformed request."""
    name = "fuzz-regression-rotation"
    created = _call(dev_server, session, "POST", f"/keys/{name}/create", json={"kty": "EC", "crv": "P-256"})
    assert created.status_code == 200, created.text
    if member == "expiryTime":
        policy: dict[str, Any] = {"lifetimeActions": [], "attributes": {"expiryTime": duration}}
    else:
        action = "Rotate" if member == "timeAfterCreate" else "Notify"
        policy = {"lifetimeActions": [{"trigger": {member: duration}, "action": {"type": action}}],
                  "attributes": {"expiryTime": "P2Y"}}
    response = _call(dev_server, session, "PUT", f"/keys/{name}/rotationpolicy", json=policy)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "BadParameter"
    fine = _call(dev_server, session, "PUT", f"/keys/{name}/rotationpolicy",
                 json={"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "Rotate"}}],
                       "attributes": {"expiryTime": "P2Y"}})
    assert fine.status_code == 200, fine.text


@pytest.mark.parametrize("policy", [
    {"lifetimeActions": [[]]},
    {"lifetimeActions": ["Rotate"]},
    {"lifetimeActions": [{"trigger": [], "action": {"type": "Rotate"}}]},
    {"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": "Rotate"}]},
    {"lifetimeActions": [], "attributes": ["P2Y"]},
])
def test_rotation_policy_of_wrong_shape_is_bad_parameter(dev_server: DevServer, session: requests.Session,
                                                         policy: dict[str, Any]) -> None:
    """Finding (long fuzz run): a lifetime action that is a list, not an object (`"lifetimeActions": [[...]]`),
    answered 500 InternalError; so did a trigger, action or attributes member of the wrong JSON type."""
    name = "fuzz-regression-rotation-shape"
    created = _call(dev_server, session, "POST", f"/keys/{name}/create", json={"kty": "EC", "crv": "P-256"})
    assert created.status_code == 200, created.text
    response = _call(dev_server, session, "PUT", f"/keys/{name}/rotationpolicy", json=policy)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "BadParameter"
