"""Attacks on a real dev server, over raw TLS sockets where a client library would refuse to send them: each is refused
with Azure's error envelope and the right status (never a 500, never a hang), writes nothing, and the server keeps
serving a well-behaved client while it happens.

Already covered elsewhere (not repeated here): forged and tampered tokens (compat/test_challenge.py,
compat/test_credentials.py), throttling of failed client secrets (test_credentials.py::
test_failed_client_secrets_are_throttled), 429 per vault and principal (test_throttling.py), bodies over 4 MiB with
and without Content-Length (test_challenge.py::test_body_over_4_mib_is_413), malformed JSON bodies of set / update /
restore (test_challenge.py), tampered backup blobs (compat/test_secrets_sync.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets as pysecrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.helpers import identity_env, release_connections, secret_client
from tests.support.server import DevServer

API = "api-version=7.5"
READ_TIMEOUT = 2  # COFFER_REQUEST_READ_TIMEOUT of the attacked server: seconds for a request head, and for a body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    dev = DevServer(tmp_path_factory.mktemp("attacked") / "data",
                    server_env={"COFFER_REQUEST_READ_TIMEOUT": str(READ_TIMEOUT)}).start()
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def token(server: DevServer) -> str:
    response = httpx.get(server.env["IDENTITY_ENDPOINT"], verify=server.ca,
                         params={"api-version": "2019-08-01", "resource": server.authority},
                         headers={"X-IDENTITY-HEADER": server.env["IDENTITY_HEADER"], "Metadata": "true"})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


@pytest.fixture(scope="module")
def known(server: DevServer, token: str) -> str:
    """A secret the bystander reads throughout."""
    response = httpx.put(f"{server.vault_url}/secrets/bystander?{API}", json={"value": "still-here"}, verify=server.ca,
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return "bystander"


# --- raw HTTP over TLS ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self, status: int, code: str | None = None) -> dict[str, Any]:
        """Azure's envelope `{"error": {"code", "message"}}` with this status."""
        assert self.status == status, (self.status, self.body[:300])
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        document = orjson.loads(self.body)
        assert set(document) == {"error"}, document
        error = document["error"]
        assert isinstance(error.get("code"), str) and error["code"], document
        assert isinstance(error.get("message"), str) and error["message"], document
        if code is not None:
            assert error["code"] == code, document
        return dict(error)


def connect(server: DevServer, sni: str = "dev.localhost", timeout: float = 20) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=server.ca)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname=sni)


def read_answer(conn: ssl.SSLSocket) -> Answer:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed in the middle of the answer"
        body += chunk
    return Answer(int(lines[0].split()[1]), headers, body[:length])


def send(server: DevServer, request: bytes, sni: str = "dev.localhost") -> Answer:
    with connect(server, sni) as conn:
        with contextlib.suppress(ssl.SSLError, OSError):  # the server may answer and close before reading it all
            conn.sendall(request)
        return read_answer(conn)


def request(server: DevServer, method: str, target: str, *, host: str | None = "dev.localhost",
            headers: list[bytes] | None = None, body: bytes | None = None, token: str | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    if host is not None:
        lines.append(f"Host: {host}:{server.port}".encode("latin-1"))
    if token is not None:
        lines.append(f"Authorization: Bearer {token}".encode())
    lines += headers or []
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


# --- a well-behaved client throughout ------------------------------------------------------------------------


@contextmanager
def bystander(server: DevServer, token: str, name: str) -> Iterator[list[float]]:
    """Reads `name` in a loop on its own connections while the attack runs; every read must succeed."""
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(verify=server.ca, timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = client.get(f"{server.vault_url}/secrets/{name}?{API}")
                    if response.status_code != 200 or response.json()["value"] != "still-here":
                        failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                latencies.append(time.monotonic() - started)
                stop.wait(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(15)
    assert not failures, failures[:5]
    assert latencies, "the bystander never completed a read"
    assert max(latencies) < 5, f"the bystander waited {max(latencies):.1f} s"


def absent(server: DevServer, token: str, name: str) -> None:
    response = httpx.get(f"{server.vault_url}/secrets/{name}?{API}", verify=server.ca,
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404, (name, response.status_code, response.text)


# --- path injection ------------------------------------------------------------------------------------------

PATHS = {
    "dotdot": "/secrets/../keys/x",
    "dotdot-encoded": "/secrets/%2e%2e",
    "dotdot-slash-encoded": "/secrets/..%2f..%2fkeys",
    "encoded-slash": "/secrets/a%2fb%2fc%2fd",
    "nul": "/secrets/a%00b",
    "nul-version": "/secrets/x/%00",
    "dotdot-version": "/secrets/x/%2e%2e",
    "overlong-name": "/secrets/" + "a" * 5000,
    "overlong-version": "/secrets/x/" + "f" * 5000,
    "fullwidth-dots": "/secrets/%EF%BC%8E%EF%BC%8E",
    "overlong-utf8-dot": "/secrets/%C0%AE%C0%AE",
    "invalid-utf8": "/secrets/%ff%fe",
    "cyrillic-a": "/secrets/%D0%B0dmin",
    "rtl-override": "/secrets/a%E2%80%AEb",
    "zero-width": "/secrets/a%E2%80%8Bb",
    "crlf-encoded": "/secrets/a%0d%0aX-Injected:%20yes",
    "backslash": "/secrets/..%5c..%5ckeys",
    "deleted-dotdot": "/deletedsecrets/%2e%2e",
    "keys-dotdot": "/keys/%2e%2e/versions",
}


@pytest.mark.parametrize("method", ["GET", "PUT"])
@pytest.mark.parametrize("case", sorted(PATHS))
def test_path_injection_is_refused(server: DevServer, token: str, known: str, case: str, method: str) -> None:
    body = b'{"value": "injected"}' if method == "PUT" else None
    answer = send(server, request(server, method, f"{PATHS[case]}?{API}", token=token, body=body,
                                  headers=[b"Content-Type: application/json"]))
    error = answer.error(answer.status)
    assert answer.status in (400, 404, 405), (answer.status, error)
    assert "injected" not in answer.body.decode("utf-8", "replace").lower() or answer.status != 200
    assert b"x-injected" not in {k.encode() for k in answer.headers}
    # nothing was written under any name
    listing = httpx.get(f"{server.vault_url}/secrets?{API}&maxresults=25", verify=server.ca,
                        headers={"Authorization": f"Bearer {token}"})
    names = {item["id"].rsplit("/", 1)[1] for item in listing.json()["value"]}
    assert names <= {"bystander"}, names


def test_raw_non_ascii_and_control_bytes_in_the_request_line(server: DevServer, token: str) -> None:
    for target in (b"/secrets/\xd0\xb0dmin", b"/secrets/a\x00b", b"/secrets/a\x7fb", b"/secrets/a b"):
        answer = send(server, b"GET " + target + b"?" + API.encode() + b" HTTP/1.1\r\nHost: dev.localhost\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nConnection: close\r\n\r\n")
        assert answer.status in (400, 404), (target, answer.status)
        answer.error(answer.status)


# --- header injection and Host games -------------------------------------------------------------------------

MALFORMED_HEADS = {
    "cr-in-header": b"GET /secrets?%s HTTP/1.1\r\nHost: dev.localhost\r\nX-A: a\rInjected: b\r\n\r\n",
    "lf-in-header": b"GET /secrets?%s HTTP/1.1\r\nHost: dev.localhost\r\nX-A: a\nInjected: b\r\n\r\n",
    "nul-in-header": b"GET /secrets?%s HTTP/1.1\r\nHost: dev.localhost\r\nX-A: a\x00b\r\n\r\n",
    "space-before-colon": b"GET /secrets?%s HTTP/1.1\r\nHost : dev.localhost\r\n\r\n",
    "obs-fold": b"GET /secrets?%s HTTP/1.1\r\nHost: dev.localhost\r\nX-A: a\r\n b\r\n\r\n",
    "content-length-and-chunked": b"PUT /secrets/smuggle?%s HTTP/1.1\r\nHost: dev.localhost\r\nContent-Length: 4\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"PUT /secrets/smuggle?%s HTTP/1.1\r\nHost: dev.localhost\r\nContent-Length: 4\r\n"
                           b"Content-Length: 5\r\n\r\nabcd",
    "negative-content-length": b"PUT /secrets/smuggle?%s HTTP/1.1\r\nHost: dev.localhost\r\n"
                               b"Content-Length: -1\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADS))
def test_malformed_headers_get_the_envelope(server: DevServer, token: str, known: str, case: str) -> None:
    answer = send(server, MALFORMED_HEADS[case] % API.encode())
    answer.error(400, "BadParameter")
    assert answer.headers.get("connection") == "close"
    absent(server, token, "smuggle")


@pytest.mark.parametrize("size", [70_000, 1_000_000, 20_000_000])
def test_giant_headers_are_431_and_the_server_keeps_serving(server: DevServer, token: str, known: str,
                                                            size: int) -> None:
    with bystander(server, token, known):
        answer = send(server, request(server, "GET", f"/secrets?{API}", token=token,
                                      headers=[b"X-Big: " + b"a" * size]))
        answer.error(431, "RequestHeaderFieldsTooLarge")
        many = send(server, request(server, "GET", f"/secrets?{API}", token=token,
                                    headers=[b"X-H%d: %s" % (i, b"v" * 20) for i in range(5000)]))
        many.error(431, "RequestHeaderFieldsTooLarge")
        long_url = send(server, request(server, "GET", "/secrets/" + "a" * 100_000 + f"?{API}", token=token))
        long_url.error(431, "RequestHeaderFieldsTooLarge")
    # a long but legitimate head (a big token, many headers) still passes
    ok = send(server, request(server, "GET", f"/secrets?{API}", token=token,
                              headers=[b"X-H%d: %s" % (i, b"v" * 100) for i in range(100)]))
    assert ok.status == 200, ok.body


def test_duplicate_authorization_is_refused_whichever_comes_first(server: DevServer, token: str) -> None:
    good, bad = f"Authorization: Bearer {token}".encode(), b"Authorization: Bearer garbage"
    for first, second in ((good, bad), (bad, good), (good, good)):
        answer = send(server, request(server, "GET", f"/secrets?{API}", headers=[first, second]))
        answer.error(400, "BadParameter")
    # combined into one header by a proxy: not a valid bearer token
    answer = send(server, request(server, "GET", f"/secrets?{API}",
                                  headers=[b"Authorization: Bearer " + token.encode() + b", Bearer garbage"]))
    answer.error(401)


def test_duplicate_host_is_refused(server: DevServer, token: str) -> None:
    answer = send(server, request(server, "GET", f"/secrets?{API}", token=token, host="dev.localhost",
                                  headers=[b"Host: other.localhost"]))
    answer.error(400, "BadParameter")


HOSTS = {
    "another-vault": ("other.localhost", 404, "VaultNotFound"),
    "unknown-domain": ("evil.example", 404, "NotFound"),
    "suffix-trick": ("dev.localhost.evil.example", 404, "NotFound"),
    "userinfo-trick": ("dev.localhost@evil.example", 404, "NotFound"),
    "trailing-dot": ("dev.localhost.", 404, "NotFound"),
    "encoded-dot": ("dev%2elocalhost", 404, "NotFound"),
    "ipv4": ("127.0.0.1", 404, "NotFound"),
    "ipv6": ("[::1]", 404, "NotFound"),
    "bare-label": ("dev", 404, "NotFound"),
    "none": (None, 404, "NotFound"),
}


@pytest.mark.parametrize("case", sorted(HOSTS))
def test_host_header_games(server: DevServer, token: str, case: str) -> None:
    host, status, code = HOSTS[case]
    answer = send(server, request(server, "GET", f"/secrets/bystander?{API}", token=token,
                                  host=None, headers=[f"Host: {host}".encode()] if host else []))
    answer.error(status, code)
    assert b"still-here" not in answer.body


def test_host_of_another_installation_gets_nothing(server: DevServer, fresh_server: DevServer) -> None:
    """A token of server B sent to server A (its host names): refused, whatever the Host header says."""
    with identity_env(fresh_server):
        from azure.identity import ManagedIdentityCredential

        other = ManagedIdentityCredential(connection_verify=fresh_server.ca)
        foreign = other.get_token(f"{fresh_server.authority}/.default").token
        other.close()
    answer = send(server, request(server, "GET", f"/secrets/bystander?{API}", token=foreign))
    answer.error(401)
    assert b"still-here" not in answer.body


# --- bodies --------------------------------------------------------------------------------------------------

JSON = b"Content-Type: application/json"
BODIES = {
    "nested-arrays": (b"[" * 100_000, JSON),
    "nested-objects": (b'{"value":' + b'{"a":' * 100_000, JSON),
    "nested-complete": (b'{"value":"x","tags":' + b"[" * 5000 + b"]" * 5000 + b"}", JSON),
    "huge-integer": (b'{"value":"x","attributes":{"exp":' + b"9" * 100_000 + b"}}", JSON),
    "huge-float": (b'{"value":"x","attributes":{"exp":1e400}}', JSON),
    "past-9999": (b'{"value":"x","attributes":{"exp":253402300800}}', JSON),
    "negative-date": (b'{"value":"x","attributes":{"nbf":-99999999999}}', JSON),
    "nan": (b'{"value":"x","attributes":{"exp":NaN}}', JSON),
    "invalid-utf8": (b'{"value":"\xff\xfe\xc0\xae"}', JSON),
    "lone-surrogate": (b'{"value":"\\ud800"}', JSON),
    "utf16-bom": ('{"value":"x"}'.encode("utf-16"), JSON),
    "not-json": (b"value=x", JSON),
    "xml": (b"<value>x</value>", b"Content-Type: application/xml"),
    "form": (b"value=x", b"Content-Type: application/x-www-form-urlencoded"),
    "multipart": (b"--x\r\n\r\nx\r\n--x--", b"Content-Type: multipart/form-data; boundary=x"),
    "array-top-level": (b'[{"value":"x"}]', JSON),
    "value-not-string": (b'{"value":{"$ne":null}}', JSON),
    "truncated": (b'{"value":"x', JSON),
}


@pytest.mark.parametrize("case", sorted(BODIES))
def test_hostile_bodies_are_400(server: DevServer, token: str, known: str, case: str) -> None:
    body, content_type = BODIES[case]
    name = f"body-{case}"
    with bystander(server, token, known):
        answer = send(server, request(server, "PUT", f"/secrets/{name}?{API}", token=token, body=body,
                                      headers=[content_type]))
        answer.error(400, "BadParameter")
    absent(server, token, name)


def test_hostile_bodies_for_keys_and_certificates(server: DevServer, token: str) -> None:
    for path in ("/keys/k-deep", "/keys/k-deep/create", "/certificates/c-deep/import", "/secrets/restore"):
        method = "PUT" if path == "/keys/k-deep" else "POST"
        for body in (b"[" * 100_000, b'{"key":' + b"[" * 100_000, b"\xff" * 100):
            answer = send(server, request(server, method, f"{path}?{API}", token=token, body=body, headers=[JSON]))
            answer.error(400, "BadParameter")


def test_oversized_body_is_413_and_the_connection_is_closed(server: DevServer, token: str, known: str) -> None:
    """The declared length is over the limit: answered at once (the 5 MiB are never read) and closed."""
    limit = 4 * 1024 * 1024
    with bystander(server, token, known), connect(server) as conn:
        head = request(server, "PUT", f"/secrets/too-big?{API}", token=token, headers=[JSON])
        head = head.replace(b"Connection: close\r\n", b"Content-Length: %d\r\n" % (limit + 1024 * 1024))
        conn.sendall(head + b"{" + b" " * 1000)  # only the first bytes
        started = time.monotonic()
        answer = read_answer(conn)
        assert time.monotonic() - started < 3
        answer.error(413, "RequestEntityTooLarge")
        assert answer.headers.get("connection") == "close"
        conn.settimeout(5)
        assert conn.recv(1) == b""  # closed, not waiting for the rest
    absent(server, token, "too-big")


# --- slow clients --------------------------------------------------------------------------------------------


def test_slowloris_connections_are_timed_out_while_others_are_served(server: DevServer, token: str,
                                                                     known: str) -> None:
    outcomes: dict[str, tuple[float, bytes]] = {}

    def attack(label: str, conn: ssl.SSLSocket, drip: bytes, delay: float) -> None:
        started = time.monotonic()
        received = b""
        try:
            for index in range(len(drip)):
                conn.sendall(drip[index:index + 1])
                time.sleep(delay)
            conn.settimeout(READ_TIMEOUT + 10)
            while chunk := conn.recv(4096):
                received += chunk
        except (OSError, ssl.SSLError):  # the server answered and closed while we were still dripping
            with contextlib.suppress(OSError, ssl.SSLError):
                received += conn.recv(4096)
            received = received or b"closed while dripping"
        outcomes[label] = (time.monotonic() - started, received)

    header_drip = b"GET /secrets?" + API.encode() + b" HTTP/1.1\r\nHost: dev.localhost\r\nX-Slow: " + b"a" * 400
    auth = f"Authorization: Bearer {token}\r\n".encode()
    body_head = (b"PUT /secrets/slow-body?" + API.encode() + b" HTTP/1.1\r\nHost: dev.localhost\r\n" + auth
                 + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    conns = {
        "idle": (connect(server), b"", 0.0),
        "partial-head": (connect(server), b"GET /secrets HTTP/1.1\r\nHost: dev.localhost\r\n", 0.0),
        "header-drip": (connect(server), header_drip, 0.02),
        "body-drip": (connect(server), body_head, 0.0),
    }
    drippers = [connect(server) for _ in range(50)]  # many connections that each sent a little of their head
    for conn in drippers:
        conn.sendall(b"GET /secrets HTTP/1.1\r\n")
    conns["body-drip"][0].sendall(body_head)
    threads = [threading.Thread(target=attack, args=(label, conn, b"" if label == "body-drip" else drip, delay))
               for label, (conn, drip, delay) in conns.items()]
    threads.append(threading.Thread(target=attack, args=("body-drip-bytes", connect(server),
                                                        body_head.replace(b"slow-body", b"slow-body2")
                                                        + b'{"value":"' + b"x" * 80, 0.0)))
    with bystander(server, token, known):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(READ_TIMEOUT + 30)
    for label, (elapsed, received) in outcomes.items():
        assert elapsed < READ_TIMEOUT + 8, (label, elapsed)
        if label == "idle":
            assert received == b"", received  # closed quietly, as an idle keep-alive connection
            continue
        if received == b"closed while dripping":
            continue
        assert received.startswith(b"HTTP/1.1 408 "), (label, received[:100])
        body = received.partition(b"\r\n\r\n")[2]
        assert orjson.loads(body)["error"]["code"] == "RequestTimeout", (label, body)
    assert set(outcomes) == {"idle", "partial-head", "header-drip", "body-drip", "body-drip-bytes"}
    for conn in drippers:
        conn.settimeout(READ_TIMEOUT + 8)
        try:
            assert conn.recv(4096).startswith(b"HTTP/1.1 408 ")
        finally:
            conn.close()
    absent(server, token, "slow-body")
    absent(server, token, "slow-body2")


def test_keep_alive_connection_dripping_a_body_nobody_reads_is_closed(server: DevServer) -> None:
    """An unauthenticated request is answered 401 before its body is read; dripping the rest of that body does not
    keep the connection open past the head deadline of the next request."""
    with connect(server) as conn:
        conn.sendall(b"PUT /secrets/x?" + API.encode() + b" HTTP/1.1\r\nHost: dev.localhost\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        read_answer(conn).error(401)
        started = time.monotonic()
        try:
            for _ in range(200):
                conn.sendall(b"x")
                time.sleep(0.05)
        except (OSError, ssl.SSLError):
            pass
        assert time.monotonic() - started < READ_TIMEOUT + 3


# --- floods --------------------------------------------------------------------------------------------------


def test_flood_of_unauthenticated_requests(server: DevServer, token: str, known: str) -> None:
    """401s cost no token check, no storage and no throttle bucket; 2,000 of them from 16 threads leave the
    server serving."""
    statuses: list[int] = []
    lock = threading.Lock()

    def flood() -> None:
        with httpx.Client(verify=server.ca, timeout=30) as client:
            for _ in range(125):
                status = client.get(f"{server.vault_url}/secrets/{known}?{API}").status_code
                with lock:
                    statuses.append(status)

    with bystander(server, token, known):
        threads = [threading.Thread(target=flood) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert len(statuses) == 2000 and set(statuses) == {401}, set(statuses)


# --- replayed backups ----------------------------------------------------------------------------------------


def test_backup_of_another_installation_is_refused(server: DevServer, fresh_server: DevServer) -> None:
    value = "replayed-" + pysecrets.token_urlsafe(16)
    with identity_env(fresh_server):
        source = secret_client(fresh_server)
        source.set_secret("replayed", value)
        blob = source.backup_secret("replayed")
        source.close()
    with identity_env(server):
        target = secret_client(server)
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        with pytest.raises(HttpResponseError) as refused:
            target.restore_secret_backup(blob)
        assert refused.value.status_code == 400
        assert refused.value.error is not None and refused.value.error.code == "BadParameter"
        with pytest.raises(ResourceNotFoundError):
            target.get_secret("replayed")
        assert not [p for p in target.list_deleted_secrets() if p.name == "replayed"]
        target.close()
    release_connections()


# --- tampered ciphertext at rest -----------------------------------------------------------------------------


def test_tampered_ciphertext_is_a_clean_error_and_audited(fresh_server: DevServer) -> None:
    dev = fresh_server
    with identity_env(dev):
        client = secret_client(dev)
        victim = client.set_secret("tampered", "victim-value-" + pysecrets.token_hex(8))
        client.set_secret("untouched", "untouched-value")
        client.close()
    release_connections()
    dev.stop()
    storage = dev.open_storage()
    try:
        with storage.write() as tx:
            row = tx.version_get("dev", "secret", "tampered", victim.properties.version or "")
            assert row is not None
            flipped = bytearray(row.payload)
            flipped[len(flipped) // 2] ^= 0x01
            tx.version_put(dataclasses.replace(row, payload=bytes(flipped)))
    finally:
        storage.close()
    dev.restart()
    token = httpx.get(dev.env["IDENTITY_ENDPOINT"], verify=dev.ca,
                      params={"api-version": "2019-08-01", "resource": dev.authority},
                      headers={"X-IDENTITY-HEADER": dev.env["IDENTITY_HEADER"]}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(verify=dev.ca, timeout=10, headers=auth) as http:
        for url in (f"{dev.vault_url}/secrets/tampered?{API}",
                    f"{dev.vault_url}/secrets/tampered/{victim.properties.version}?{API}"):
            response = http.get(url)
            assert response.status_code == 500, response.text  # the store is damaged: the server's fault
            error = response.json()["error"]
            assert error["code"] == "InternalError" and "integrity" in error["message"], error
            assert "victim-value" not in response.text
        # metadata-only operations still work; other secrets are intact
        assert http.get(f"{dev.vault_url}/secrets/tampered/versions?{API}").status_code == 200
        untouched = http.get(f"{dev.vault_url}/secrets/untouched?{API}")
        assert untouched.status_code == 200 and untouched.json()["value"] == "untouched-value"
    audit = [orjson.loads(line) for line in (dev.data_dir / "audit.log").read_bytes().splitlines() if line.strip()]
    failed = [event for event in audit if event.get("operationName") == "SecretGet"
              and str(event.get("resultSignature")) not in ("OK", "200")]
    assert failed, "the failed reads are not in the audit log"
    assert "victim-value" not in (dev.data_dir / "audit.log").read_text()
    assert "integrity" in "".join(dev.output)  # the operator sees what happened
    assert not Path(dev.data_dir / "coffer.db-journal").exists()
