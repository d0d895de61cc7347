"""Three Coffer nodes on one PostgreSQL behind HAProxy (TCP mode, health-checked): the real azure-keyvault-secrets
SDK keeps working through the balancer while a node is killed with no acknowledged write lost, background jobs move
to another node when their leader dies, and a role removed through one node is refused by the others within a second.
Runs in the normal suite; skipped (with the reason) where PostgreSQL or HAProxy is not installed."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope
from azure.keyvault.secrets import SecretClient

from coffer.authz import roles
from tests.e2e.helpers import release_connections
from tests.support import cluster as cluster_support
from tests.support.cluster import Cluster, Node

_MISSING = cluster_support.missing_reason()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

VAULT = "shared"
LOAD_SECONDS_BEFORE_KILL = 5.0
LOAD_SECONDS_AFTER_KILL = 6.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(Path(tmp_path_factory.mktemp("cluster")), size=3).start() as running:
        # a vault created through the admin API, through the balancer
        created = running.admin_call("PUT", f"/admin/vaults/{VAULT}", {"softDeleteRetentionInDays": 7})
        assert created["vaultUri"] == running.vault_url(VAULT)  # vault URLs name the balancer
        yield running
        release_connections()


def test_a_vault_created_through_the_balancer_is_served_by_every_node(cluster: Cluster) -> None:
    cluster.ensure_running()
    credential = cluster.credential()
    with cluster.secret_client(VAULT, credential) as client:
        version = client.set_secret("everywhere", "one value").properties.version
    for node in cluster.nodes:
        assert cluster.admin_call("GET", f"/admin/vaults/{VAULT}", node=node)["name"] == VAULT
        with cluster.secret_client(VAULT, credential, node=node) as direct:
            got = direct.get_secret("everywhere")
            assert (got.value, got.properties.version) == ("one value", version), node.name


# --- load through the balancer while a node dies --------------------------------------------------


@dataclass
class Load:
    """What the worker threads did: acknowledged writes, and every failure (with when it started)."""

    acked: list[tuple[str, str, str]] = field(default_factory=list)  # (name, version, value)
    reads: list[float] = field(default_factory=list)  # start times of successful reads
    writes: list[float] = field(default_factory=list)  # start times of acknowledged writes
    errors: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Attempts(SansIOHTTPPolicy[Any, Any]):
    """Counts the HTTP attempts the SDK makes (its retries included)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def on_request(self, request: Any) -> None:
        with self._lock:
            self.count += 1


def _writer(client: SecretClient, load: Load, prefix: str) -> None:
    index = 0
    while not load.stopping.is_set():
        name, value = f"{prefix}-{index % 5}", f"{prefix}:{index}:{secrets.token_urlsafe(18)}"
        started = time.monotonic()
        try:
            result = client.set_secret(name, value)
        except Exception as error:  # recorded, asserted on below
            with load.lock:
                load.errors.append((started, f"set {name}: {type(error).__name__}: {error}"))
            continue
        with load.lock:
            if result.value != value or not result.properties.version:
                load.errors.append((started, f"set {name}: the answer does not echo the write"))
            load.acked.append((name, result.properties.version or "", value))
            load.writes.append(started)
        index += 1


def _reader(client: SecretClient, load: Load, rng: random.Random) -> None:
    while not load.stopping.is_set():
        with load.lock:
            item = rng.choice(load.acked) if load.acked else None
        if item is None:
            time.sleep(0.02)
            continue
        name, version, value = item
        started = time.monotonic()
        try:
            got = client.get_secret(name, version)
        except Exception as error:
            with load.lock:
                load.errors.append((started, f"get {name}/{version}: {type(error).__name__}: {error}"))
            continue
        with load.lock:
            if got.value != value:
                load.errors.append((started, f"get {name}/{version}: another value"))
            load.reads.append(started)


def test_load_through_the_balancer_survives_kill_9_of_a_node(cluster: Cluster) -> None:
    cluster.ensure_running()
    credential = cluster.credential()
    # one client (so one keep-alive connection, placed by roundrobin) per thread: the kill cuts some of them
    attempts = _Attempts()
    clients = [cluster.secret_client(VAULT, credential, per_retry_policies=[attempts]) for _ in range(8)]
    clients[0].set_secret("warm-up", "token fetched")
    load = Load()
    threads = [threading.Thread(target=_writer, args=(clients[i], load, f"w{i}"), daemon=True) for i in range(4)]
    threads += [
        threading.Thread(target=_reader, args=(clients[4 + i], load, random.Random(i)), daemon=True) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_SECONDS_BEFORE_KILL)
    victim = cluster.nodes[1]
    cluster.kill(victim)
    killed = time.monotonic()
    time.sleep(LOAD_SECONDS_AFTER_KILL)
    load.stopping.set()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()

    print(
        f"\nload: {len(load.acked)} writes, {len(load.reads)} reads acknowledged in {attempts.count} HTTP "
        f"attempts; the balancer: {cluster.balancer_status()}"
    )
    # every request succeeded: the in-flight ones cut by the kill were retried by the SDK, through other nodes
    assert not load.errors, f"{len(load.errors)} failed requests, first: {sorted(load.errors)[:3]}"
    settled = killed + 1.0
    reads_after = sum(1 for t in load.reads if t > settled)
    writes_after = sum(1 for t in load.writes if t > settled)
    assert writes_after >= 20 and reads_after >= 20, (writes_after, reads_after)
    assert sum(1 for t in load.writes if t < killed) >= 20, "too little load before the kill"

    # the balancer's health check took the dead node out; the survivors are healthy
    cluster.wait_for_balancer({victim.name: "DOWN"}, timeout=5)
    for node in cluster.nodes:
        if node is not victim:
            health = cluster.health(node)
            assert health is not None and health[0] == 200 and health[1]["status"] == "ok", (node.name, health)

    # zero acknowledged writes lost: each (name, version) reads back exactly, through the balancer
    def check(item: tuple[str, str, str], reader: SecretClient = clients[0]) -> None:
        name, version, value = item
        got = reader.get_secret(name, version)
        assert (got.value, got.properties.version) == (value, version), (name, version)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check, load.acked))
    by_name: dict[str, set[str]] = {}
    for name, version, _ in load.acked:
        by_name.setdefault(name, set()).add(version)
    for name, versions in by_name.items():
        assert versions <= {p.version for p in clients[0].list_properties_of_secret_versions(name)}, name
    for client in clients:
        client.close()


# --- background jobs ------------------------------------------------------------------------------


def _wait_single_leader(cluster: Cluster, nodes: list[Node], timeout: float) -> Node:
    deadline = time.monotonic() + timeout
    while len(leaders := cluster.job_leaders(nodes)) != 1:
        assert time.monotonic() < deadline, f"leaders among {[n.name for n in nodes]}: {[n.name for n in leaders]}"
        time.sleep(0.1)
    return leaders[0]


def _purge_records(node: Node, object_id: str) -> list[dict[str, object]]:
    if not node.audit_log.exists():
        return []
    records = [json.loads(line) for line in node.audit_log.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("operationName") == "SecretPurge" and r["properties"]["id"] == object_id]


def test_background_jobs_run_on_one_node_and_move_when_it_dies(cluster: Cluster) -> None:
    cluster.ensure_running()
    leader = _wait_single_leader(cluster, cluster.nodes, timeout=15)
    with cluster.secret_client(VAULT) as client:
        client.set_secret("purge-me", "soon gone")
        client.begin_delete_secret("purge-me").result()

        cluster.kill(leader)
        killed = time.monotonic()
        # a retention ends in days; move this one's scheduled purge date into the past in the database itself, as
        # tests/e2e/test_purge_job.py does with SQLite. Only a job leader purges it.
        assert cluster.database_url is not None
        with psycopg.connect(cluster.database_url, autocommit=True) as db:
            moved = db.execute(
                "UPDATE objects SET purge_at = deleted - 1 WHERE vault = %s AND kind = 'secret' AND name = %s",
                (VAULT, "purge-me"),
            ).rowcount
        assert moved == 1

        survivors = [n for n in cluster.nodes if n is not leader]
        successor = _wait_single_leader(cluster, survivors, timeout=10 - (time.monotonic() - killed))
        took_over = time.monotonic() - killed
        print(f"\n{successor.name} took over the jobs {took_over:.1f} s after {leader.name} was killed")
        assert took_over < 10

        # and a job really runs there: the purge, audited by the new leader (and by no other node)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.get_deleted_secret("purge-me")
            except ResourceNotFoundError:
                break
            assert time.monotonic() < deadline, "the new leader did not purge the due secret"
            time.sleep(0.1)
    object_id = f"{cluster.vault_url(VAULT)}/deletedsecrets/purge-me"
    deadline = time.monotonic() + 2
    while not (records := _purge_records(successor, object_id)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the audit line is written before the purge commits; the read may overtake it
    assert len(records) == 1, f"no purge audit record on the new leader {successor.name}"
    assert records[0]["identity"] == {"claim": {"oid": "coffer-scheduler"}}
    for node in cluster.nodes:
        if node is not successor:
            assert not _purge_records(node, object_id), node.name


# --- authorization changes reach every node -------------------------------------------------------


def test_a_role_removed_through_one_node_is_refused_by_the_others_within_a_second(cluster: Cluster) -> None:
    cluster.ensure_running()
    node_a, node_b, node_c = cluster.nodes
    created = cluster.admin_call("POST", "/admin/identity/principals", {"displayName": "reader", "kind": "application"})
    added = cluster.admin_call(
        "POST", f"/admin/identity/principals/{created['clientId']}/credentials", {"kind": "clientSecret"}
    )
    admin = cluster.credential()
    reader = cluster.credential(created["clientId"], added["secret"])
    with cluster.secret_client(VAULT, admin) as writer:
        writer.set_secret("guarded", "for readers")
    acl = KeyVaultAccessControlClient(
        node_a.vault_url(VAULT), admin, connection_verify=str(cluster.ca), verify_challenge_resource=False
    )
    direct = [cluster.secret_client(VAULT, reader, node=n, retry_total=0) for n in (node_b, node_c)]
    try:
        for client in direct:  # tokens fetched and connections open before the clock starts
            with pytest.raises(HttpResponseError) as refused:
                client.get_secret("guarded")
            assert refused.value.status_code == 403
        assignment = acl.create_role_assignment(
            KeyVaultRoleScope.GLOBAL,
            f"/providers/Microsoft.Authorization/roleDefinitions/{roles.SECRETS_USER}",
            created["objectId"],
            name=str(uuid.uuid4()),
        )
        granted = time.monotonic()
        for client in direct:  # the grant through node A reaches B and C
            while True:
                try:
                    assert client.get_secret("guarded").value == "for readers"
                    break
                except HttpResponseError as error:
                    assert error.status_code == 403, error
                    assert time.monotonic() - granted < 1.0, "the grant did not reach every node within a second"
                    time.sleep(0.02)

        assert assignment.name is not None
        acl.delete_role_assignment(KeyVaultRoleScope.GLOBAL, assignment.name)
        revoked = time.monotonic()
        refused_after = {}
        for node, client in zip((node_b, node_c), direct, strict=True):
            while True:
                try:
                    client.get_secret("guarded")
                except HttpResponseError as error:
                    assert error.status_code == 403, error
                    refused_after[node.name] = time.monotonic() - revoked
                    break
                assert time.monotonic() - revoked < 1.0, f"{node.name} still allowed the removed role after 1 s"
                time.sleep(0.02)
        print(f"\nrefused after the removal (s): {refused_after}")
        assert max(refused_after.values()) < 1.0, refused_after
    finally:
        acl.close()
        for client in direct:
            client.close()
