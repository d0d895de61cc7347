"""Conformance fuzzing: schemathesis over Microsoft's Key Vault specs (secrets, keys, certificates; api-versions 7.4
and 2026-04-01) against a real dev server, with a real bearer token.

Every operation of each spec gets `COFFER_FUZZ_EXAMPLES` positive (schema-valid) and as many negative (schema-
violating) requests, then as many positive ones again on real objects (a secret, key, certificate and issuer made
first; DELETEs excepted) so that 200 bodies are checked too. The seed is fixed (`COFFER_FUZZ_SEED`): CI runs the
same cases every time. The checks (tests/fuzz/harness.py): no 5xx, responses match the spec's schemas, every error
is Azure's envelope. Afterwards the server must still answer, its storage must pass its integrity check and a secret
set before fuzzing must read back unchanged.

CI runs the short version (5 examples per operation and mode, ~1,560 requests). A long run:
    scripts/fuzz [EXAMPLES]          # COFFER_FUZZ_EXAMPLES=EXAMPLES (default 100), shrinking on, summary printed
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.fuzz.harness import FuzzRun
from tests.fuzz.specs import FAMILIES, VERSIONS
from tests.support.server import DevServer

EXAMPLES = int(os.environ.get("COFFER_FUZZ_EXAMPLES", "5"))
SEED = int(os.environ.get("COFFER_FUZZ_SEED", "20260401"))
SHRINK = os.environ.get("COFFER_FUZZ_SHRINK", "1" if EXAMPLES > 5 else "0") == "1"
# generous: a long run of 100 examples takes ~4 minutes per spec on a 2-core machine
TIMEOUT = max(300, EXAMPLES * 20)

CANARY = "fuzz-canary"
CANARY_VALUE = "Server=tcp:db;Password=set-before-fuzzing"

# The fuzzer creates hundreds of objects in seconds: Key Vault's per-vault limits (300 secret sets per 10 s) would
# answer most of them 429 and hide the operations behind it.
UNTHROTTLED = {"COFFER_THROTTLE_VAULT": "1000000", "COFFER_THROTTLE_VAULT_CREATES": "1000000",
               "COFFER_THROTTLE_PRINCIPAL": "1000000"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = DevServer(Path(tmp_path_factory.mktemp("coffer-fuzz")), server_env=UNTHROTTLED).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_run(fuzz_server: DevServer) -> Iterator[FuzzRun]:
    run = FuzzRun(fuzz_server, max_examples=EXAMPLES, seed=SEED, shrink=SHRINK)
    response = _canary(run, "PUT", json={"value": CANARY_VALUE, "tags": {"set": "before"}, "contentType": "text"})
    assert response.status_code == 200, response.text
    run.create_targets()
    yield run
    print(f"\nfuzz: {run.cases} cases ({EXAMPLES} examples per operation and mode, seed {SEED}); "
          f"statuses {dict(sorted(run.statuses.items()))}")


def _canary(run: FuzzRun, method: str, **kwargs: Any) -> requests.Response:
    url = f"{run.server.vault_url}/secrets/{quote(CANARY)}"
    return run.session.request(method, url, params={"api-version": "7.4"}, verify=run.server.ca, timeout=30,
                               **kwargs)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("version", VERSIONS)
def test_spec_conformance(fuzz_run: FuzzRun, version: str, family: str) -> None:
    failures: list[str] = []
    for operation in fuzz_run.operations(version, family):
        failures += fuzz_run.fuzz(operation)
    assert not failures, f"{len(failures)} failing operation(s):\n\n" + "\n\n".join(failures)


def test_no_state_corruption_after_fuzzing(fuzz_run: FuzzRun) -> None:
    """Runs after the fuzz tests of this module (file order): the server answers, the canary is intact, the storage
    passes its integrity check."""
    server = fuzz_run.server
    assert server.proc is not None and server.proc.poll() is None, "the server died while being fuzzed"
    response = _canary(fuzz_run, "GET")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["value"] == CANARY_VALUE
    assert body["tags"] == {"set": "before"}
    assert body["contentType"] == "text"
    listing = fuzz_run.session.get(f"{server.vault_url}/secrets", params={"api-version": "7.4", "maxresults": "25"},
                                   verify=server.ca, timeout=30)
    assert listing.status_code == 200, listing.text
    storage = server.open_storage()
    try:
        assert storage.integrity_check() == []
    finally:
        storage.close()
