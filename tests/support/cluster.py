"""Several real `coffer server` nodes on one throwaway PostgreSQL database, behind HAProxy in TCP mode.

    with Cluster(tmp_path, size=3).start() as cluster:
        cluster.admin_call("PUT", "/admin/vaults/shared", {})
        with cluster.secret_client("shared") as client:          # through the balancer
            client.set_secret("name", "value")
        cluster.kill(cluster.nodes[1])                            # kill -9
        with cluster.secret_client("shared", node=cluster.nodes[2]) as client:   # one node directly
            ...

What it builds, in order:
- a database on the test process's PostgreSQL (tests/support/postgres.py; `database_url=` to bring your own);
- ONE TLS certificate for every node, from `coffer.crypto.tls.ensure_local_tls`, naming `cluster.localhost` and
  `*.cluster.localhost` (libnss-myhostname resolves every `*.localhost` name to the loopback addresses);
- N non-dev nodes (`python -m coffer server --data-dir D --port P`), each with its own data directory and port and
  the same `COFFER_DATABASE_URL`, `COFFER_TLS_CERT`/`COFFER_TLS_KEY`, `COFFER_DNS_SUFFIX=cluster.localhost` and
  `COFFER_PUBLIC_PORT=<balancer port>`, so vault URLs and the token authority name the balancer;
- `POST /v1/sys/init` through the first node (the shares and the bootstrap administrator are kept in memory only,
  never printed), then `POST /v1/sys/unseal` on every other node, threshold times;
- HAProxy in the foreground (a child process, generated configuration in a temporary directory, no system service):
  TCP mode, roundrobin, `option httpchk GET /healthz` every 500 ms over TLS, so a dead or sealed node (503) leaves
  the rotation within about a second; `option redispatch` sends a connection refused by a dead node elsewhere.
  A stats socket lets tests read what the balancer thinks of each node and take nodes out of the rotation.

A node talked to directly (`node.url`, `node.vault_url(v)`) serves the same names on its own port; the certificate
covers them. Its 401 challenge names the balancer's authority, which the Key Vault SDK's challenge check rejects for
another port, so SDK clients on a node pass `verify_challenge_resource=False` (done by `secret_client(node=...)`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from coffer.crypto import tls

DNS_SUFFIX = "cluster.localhost"
BACKEND = "nodes"
# The balancer's health check: every 500 ms; 2 failures take a node out (and cut its open connections, so clients
# reconnect to another node instead of being answered 503 by a sealed one), 1 success puts it back.
CHECK = "check check-ssl verify none inter 500 fall 2 rise 1 on-marked-down shutdown-sessions"
SHARES, THRESHOLD = 3, 2


def haproxy_binary() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


def missing_reason() -> str | None:
    """Why a cluster cannot run here (for a skip), or None."""
    if haproxy_binary() is None:
        return "HAProxy is not installed (apt-get install haproxy; scripts/test installs it)"
    try:
        from tests.support import postgres
    except ImportError:
        return "tests/support/postgres.py (the throwaway PostgreSQL) is not available"
    reason = postgres.missing_reason()
    if reason is not None:
        return reason
    try:
        import coffer.storage.postgres  # noqa: F401
    except ImportError as error:
        return f"the PostgreSQL storage backend cannot be imported ({error})"
    return None


def new_database() -> str:
    """A fresh, empty database on the test process's throwaway PostgreSQL (started on first use): its URL.
    The one place that knows where the database comes from."""
    from tests.support.postgres import shared_server

    return shared_server().new_database()


def free_port(ipv6: bool = True) -> int:
    """A port free on 127.0.0.1 and (when `ipv6` and the machine has it) on ::1: *.localhost resolves to both."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4:
            v4.bind(("127.0.0.1", 0))
            port = int(v4.getsockname()[1])
            if not ipv6 or not has_ipv6_loopback():
                return port
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
                    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    v6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """os.environ without anything that would point a node or client at some other server or identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COFFER_", "AZURE_", "MSI_", "IDENTITY_"))}
    env.update(extra)
    return env


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class AdminCredentials:
    """The bootstrap administrator that `POST /v1/sys/init` returned (Key Vault Administrator at "/")."""

    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)


@dataclass
class Node:
    name: str
    port: int
    data_dir: Path
    env: dict[str, str] = field(repr=False)
    proc: subprocess.Popen[str] | None = field(default=None, repr=False)
    output: list[str] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        """This node's server host (admin API, token endpoints, health), on its own port."""
        return f"https://{DNS_SUFFIX}:{self.port}"

    def vault_url(self, vault: str) -> str:
        return f"https://{vault}.{DNS_SUFFIX}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def audit_log(self) -> Path:
        return self.data_dir / "audit.log"

    def launch(self) -> None:
        """Start the process (it starts sealed); `wait_ready` waits for it to listen."""
        self.output = []
        cmd = [sys.executable, "-m", "coffer", "server", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            env=self.env,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited early:\n" + "".join(self.output[-60:]))
            self.output.append(line)
            if "ready at" in line:
                threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
                return
        raise RuntimeError(f"{self.name} did not start listening:\n" + "".join(self.output[-60:]))

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Cluster:
    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        database_url: str | None = None,
        purge_interval: float = 1.0,
        node_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.size = size
        self.database_url = database_url
        self.purge_interval = purge_interval
        self.node_env = node_env or {}
        self.nodes: list[Node] = []
        self.port = 0  # the balancer's
        self.ca: Path = root / "tls" / "ca.pem"
        self.admin: AdminCredentials | None = None
        self._shares: list[str] = []
        self._lb_dir: Path | None = None
        self._haproxy: subprocess.Popen[str] | None = None
        self._haproxy_output: list[str] = []
        self._http: httpx.Client | None = None
        self._credentials: list[ClientSecretCredential] = []
        self._admin_credential: ClientSecretCredential | None = None

    # --- addresses ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The balancer's server host: the token authority (AZURE_AUTHORITY_HOST) and the admin API."""
        return f"https://{DNS_SUFFIX}:{self.port}"

    def vault_url(self, vault: str) -> str:
        return f"https://{vault}.{DNS_SUFFIX}:{self.port}"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.database_url is None:
            self.database_url = new_database()
        files = tls.ensure_local_tls(self.root / "tls", [DNS_SUFFIX, f"*.{DNS_SUFFIX}"], ["127.0.0.1", "::1"])
        self.ca = files.ca_cert
        self._http = httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca)), timeout=10)
        self.port = free_port()
        shared = {
            "COFFER_DATABASE_URL": self.database_url,
            "COFFER_DNS_SUFFIX": DNS_SUFFIX,
            "COFFER_PUBLIC_PORT": str(self.port),
            "COFFER_TLS_CERT": str(files.cert),
            "COFFER_TLS_KEY": str(files.key),
            "COFFER_PURGE_INTERVAL": str(self.purge_interval),
            "COFFER_THROTTLE_VAULT_CREATES": "0",  # the load test writes as fast as it can (limits: test_throttling)
            **self.node_env,
        }
        for index in range(1, self.size + 1):
            port = free_port()
            self.nodes.append(Node(f"node{index}", port, self.root / f"node{index}", _child_env(shared)))
        for node in self.nodes:  # start together (they migrate the empty database once, under a lock)
            node.launch()
        for node in self.nodes:
            node.wait_ready()
        first = self.nodes[0]
        response = self._post(first, "/v1/sys/init", {"shares": SHARES, "threshold": THRESHOLD})
        if response.status_code != 200:
            raise RuntimeError(f"init failed: HTTP {response.status_code}")
        result = response.json()
        self._shares = list(result["shares"])
        self.admin = AdminCredentials(result["tenantId"], result["clientId"], result["clientSecret"])
        for node in self.nodes[1:]:
            self.unseal(node)
        for node in self.nodes:
            self.wait_healthy(node)
        self._start_haproxy()

    def close(self) -> None:
        # Clients first: an idle keep-alive connection would hold a node's SIGTERM for its graceful-stop timeout.
        if self._http is not None:
            self._http.close()
        for credential in self._credentials:
            with contextlib.suppress(Exception):
                credential.close()
        self._credentials.clear()
        self._admin_credential = None
        if self._haproxy is not None and self._haproxy.poll() is None:
            self._haproxy.terminate()
            try:
                self._haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self._haproxy.kill()
                self._haproxy.wait()
        for node in self.nodes:
            node.signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                node.wait()
        if self._lb_dir is not None:
            shutil.rmtree(self._lb_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- nodes --------------------------------------------------------------------------------
    def kill(self, node: Node) -> None:
        """kill -9: no chance to finish requests, release locks or close connections."""
        node.signal(signal.SIGKILL)
        node.wait()

    def stop(self, node: Node) -> int:
        """SIGTERM: a clean stop."""
        node.signal(signal.SIGTERM)
        return node.wait()

    def restart(self, node: Node, *, unseal: bool = True) -> None:
        """Start a stopped or killed node again, on its port and data directory; unseal it (it starts sealed) and
        wait until it is healthy and back in the balancer's rotation."""
        if node.alive:
            self.stop(node)
        node.launch()
        node.wait_ready()
        if unseal:
            self.unseal(node)
            self.wait_healthy(node)
            self.wait_for_balancer({node.name: "UP"})

    def ensure_running(self) -> None:
        """Restart (and unseal) every node that is not running, e.g. one an earlier test killed."""
        for node in self.nodes:
            if not node.alive:
                self.restart(node)

    def unseal(self, node: Node) -> None:
        for share in self._shares[:THRESHOLD]:
            response = self._post(node, "/v1/sys/unseal", {"key": share})
            if response.status_code != 200:
                raise RuntimeError(f"unsealing {node.name} failed: HTTP {response.status_code}")

    def health(self, node: Node) -> tuple[int, dict[str, Any]] | None:
        """(status code, body) of the node's /healthz, or None when it does not answer."""
        assert self._http is not None
        try:
            response = self._http.get(f"{node.url}/healthz", timeout=5)
        except httpx.HTTPError:
            return None
        return response.status_code, response.json()

    def wait_healthy(self, node: Node, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (health := self.health(node)) is None or health[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} is not healthy: {health}")
            time.sleep(0.1)

    def job_leaders(self, nodes: list[Node] | None = None) -> list[Node]:
        """The nodes whose /healthz says `jobLeader: true`."""
        leaders = []
        for node in nodes if nodes is not None else self.nodes:
            health = self.health(node) if node.alive else None
            if health is not None and health[1].get("jobLeader"):
                leaders.append(node)
        return leaders

    def _post(self, node: Node, path: str, body: dict[str, Any]) -> httpx.Response:
        assert self._http is not None
        return self._http.post(f"{node.url}{path}", json=body, timeout=30)

    # --- the balancer -------------------------------------------------------------------------
    def _haproxy_config(self) -> str:
        assert self._lb_dir is not None
        binds = [f"    bind 127.0.0.1:{self.port}"]
        if has_ipv6_loopback():
            binds.append(f"    bind [::1]:{self.port}")
        servers = [f"    server {n.name} 127.0.0.1:{n.port}" for n in self.nodes]
        return "\n".join(
            [
                "global",
                "    maxconn 4096",
                f"    stats socket {self._lb_dir}/admin.sock mode 600 level admin",
                "defaults",
                "    mode tcp",
                "    timeout connect 2s",
                "    timeout client 120s",
                "    timeout server 120s",
                "    timeout check 2s",
                "    retries 3",
                "    option redispatch 1",  # a connection refused by a dead node is retried on another one
                "frontend coffer",
                *binds,
                f"    default_backend {BACKEND}",
                f"backend {BACKEND}",
                "    balance roundrobin",
                "    option httpchk",
                f"    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {DNS_SUFFIX}",
                "    http-check expect status 200",
                f"    default-server {CHECK}",
                *servers,
                "",
            ]
        )

    def _start_haproxy(self) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError(missing_reason() or "HAProxy is not installed")
        # A short directory of its own: the stats socket's path must fit in a sockaddr_un.
        self._lb_dir = Path(tempfile.mkdtemp(prefix="coffer-lb-"))
        config = self._lb_dir / "haproxy.cfg"
        config.write_text(self._haproxy_config())
        self._haproxy = subprocess.Popen(
            [binary, "-db", "-f", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain_haproxy, args=(self._haproxy,), daemon=True).start()
        deadline = time.monotonic() + 20
        while True:
            if self._haproxy.poll() is not None:
                raise RuntimeError("haproxy exited:\n" + "".join(self._haproxy_output[-40:]))
            try:
                self.wait_for_balancer({n.name: "UP" for n in self.nodes}, timeout=0.5)
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("haproxy did not come up:\n" + "".join(self._haproxy_output[-40:])) from None
                time.sleep(0.1)

    @property
    def haproxy_pid(self) -> int | None:
        return self._haproxy.pid if self._haproxy is not None else None

    def _drain_haproxy(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._haproxy_output.append(line)

    def haproxy_command(self, command: str) -> str:
        """One command on HAProxy's admin socket (`show stat`, `set server nodes/node2 state maint`, ...)."""
        assert self._lb_dir is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self._lb_dir / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def balancer_status(self) -> dict[str, str]:
        """What HAProxy thinks of each node: "UP", "DOWN", "MAINT", or a transition such as "UP 1/2"."""
        text = self.haproxy_command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"].startswith("node")
        }

    def wait_for_balancer(self, wanted: dict[str, str], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.balancer_status()
            if all(status.get(name) == state for name, state in wanted.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"balancer state {status}, wanted {wanted}")
            time.sleep(0.05)

    def set_rotation(self, nodes: list[Node]) -> None:
        """Only these nodes take new connections from the balancer (the others go to maintenance)."""
        for node in self.nodes:
            state = "ready" if node in nodes else "maint"
            self.haproxy_command(f"set server {BACKEND}/{node.name} state {state}")
        self.wait_for_balancer({n.name: "UP" if n in nodes else "MAINT" for n in self.nodes})

    # --- clients ------------------------------------------------------------------------------
    def credential(
        self, client_id: str | None = None, client_secret: str | None = None, tenant_id: str | None = None
    ) -> ClientSecretCredential:
        """azure-identity's ClientSecretCredential against the balancer's token service (default: the bootstrap
        administrator). Closed by `close()`."""
        assert self.admin is not None
        credential = ClientSecretCredential(
            tenant_id or self.admin.tenant_id,
            client_id or self.admin.client_id,
            client_secret if client_secret is not None else self.admin.client_secret,
            authority=self.url,
            disable_instance_discovery=True,
            connection_verify=str(self.ca),
        )
        self._credentials.append(credential)
        return credential

    def secret_client(
        self, vault: str, credential: Any = None, *, node: Node | None = None, **kwargs: Any
    ) -> SecretClient:
        """The real SecretClient on `vault`: through the balancer, or straight to `node`."""
        if node is not None:
            kwargs.setdefault("verify_challenge_resource", False)  # the challenge names the balancer's port
        url = node.vault_url(vault) if node is not None else self.vault_url(vault)
        return SecretClient(url, credential or self.credential(), connection_verify=str(self.ca), **kwargs)

    def admin_call(self, method: str, path: str, body: Any = None, *, node: Node | None = None) -> Any:
        """One admin API call as the bootstrap administrator (its token from the balancer's token service), through
        the balancer or straight to `node`: the parsed JSON answer; AdminError for an error answer."""
        if self._admin_credential is None:
            self._admin_credential = self.credential()
        token = self._admin_credential.get_token(f"{self.url}/.default").token
        response = self.call_node(node, method, path, token=token, json=body)
        if response.status_code >= 400:
            try:
                error = response.json().get("error") or {}
            except ValueError:
                error = {}
            raise AdminError(response.status_code, error.get("code", ""), error.get("message", ""))
        return response.json() if response.content else None

    def call_node(
        self,
        node: Node | None,
        method: str,
        path: str,
        *,
        vault: str | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A raw HTTPS request straight to one node (None: through the balancer): to its server host, or to
        `vault`'s host on its port."""
        assert self._http is not None
        if node is None:
            base = self.vault_url(vault) if vault else self.url
        else:
            base = node.vault_url(vault) if vault else node.url
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self._http.request(method, f"{base}{path}", headers=headers, **kwargs)
