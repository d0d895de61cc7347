"""No secret value, and no access token, ever reaches a file in the data directory; the audit log
has one AuditEvent line per request."""

from __future__ import annotations

import base64
import re
import secrets
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import ManagedIdentityCredential

from tests.e2e.helpers import identity_env, secret_client
from tests.support.server import DevServer


class RecordingTransport(RequestsTransport):
    """Records every HTTP request a client sends (method, URL, Authorization header)."""

    def __init__(self, log: list[tuple[str, str, str | None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log = log

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.log.append((request.method, request.url, request.headers.get("Authorization")))
        return super().send(request, **kwargs)


def encodings(value: bytes) -> dict[str, bytes]:
    """The ways a value could sit in a file if it leaked."""
    forms = {
        "raw": value,
        "base64": base64.b64encode(value),
        "base64url": base64.urlsafe_b64encode(value),
        "utf-16-le": value.decode("utf-8").encode("utf-16-le"),
        "utf-16-be": value.decode("utf-8").encode("utf-16-be"),
        "hex": value.hex().encode(),
    }
    for name in ("base64", "base64url"):
        forms[name + "-unpadded"] = forms[name].rstrip(b"=")
    return forms


def find_leaks(files: dict[str, bytes], needles: dict[str, bytes]) -> list[str]:
    leaks = []
    for label, needle in needles.items():
        for form, encoded in encodings(needle).items():
            for path, data in files.items():
                if encoded in data:
                    leaks.append(f"{label} as {form} in {path}")
    return leaks


def distinctive(label: str) -> str:
    return f"CONFIDENTIAL-{label}-{secrets.token_urlsafe(24)}"


AUDIT_FIELDS = ("time", "operationName", "identity", "callerIpAddress", "resultSignature", "durationMs")


def test_no_secret_value_or_token_reaches_the_data_directory(fresh_server: DevServer) -> None:
    server = fresh_server
    sent: list[tuple[str, str, str | None]] = []
    values: dict[str, str] = {}
    with identity_env(server):
        credential = ManagedIdentityCredential(transport=RecordingTransport(sent, connection_verify=server.ca))
        client = secret_client(server, cred=credential, transport=RecordingTransport(sent, connection_verify=server.ca))

        values["plain"] = distinctive("plain")
        client.set_secret("conf-plain", values["plain"], content_type="text/plain", tags={"team": "payments"})
        for i in range(3):
            values[f"multi-v{i}"] = distinctive(f"multi{i}")
            client.set_secret("conf-multi", values[f"multi-v{i}"])
        values["unicode"] = "Grüße-秘密-" + secrets.token_hex(16)
        client.set_secret("conf-unicode", values["unicode"])
        values["large"] = distinctive("large") + secrets.token_urlsafe(15000)
        client.set_secret("conf-large", values["large"])

        # backup, delete, purge, restore
        values["backed-up"] = distinctive("backup")
        client.set_secret("conf-backup", values["backed-up"], tags={"kept": "yes"})
        blob = client.backup_secret("conf-backup")
        client.begin_delete_secret("conf-backup").wait()
        client.purge_deleted_secret("conf-backup")
        restored = client.restore_secret_backup(blob)
        assert restored.name == "conf-backup"
        assert client.get_secret("conf-backup").value == values["backed-up"]
        # update, soft delete and recover touch the stored rows again
        client.update_secret_properties("conf-plain", tags={"team": "payments", "rotated": "no"})
        client.begin_delete_secret("conf-multi").wait()
        client.begin_recover_deleted_secret("conf-multi").wait()
        assert client.get_secret("conf-multi").value == values["multi-v2"]
        assert client.get_secret("conf-large").value == values["large"]

        token = credential.get_token(f"{server.authority}/.default").token
        bearer_tokens = {auth.split(" ", 1)[1] for _, _, auth in sent if auth}
        client.close()
        credential.close()
    assert token in bearer_tokens  # get_token gave the token the client used
    identity_header = server.env["IDENTITY_HEADER"]

    needles = {name: value.encode("utf-8") for name, value in values.items()}
    needles["large-prefix"] = values["large"].encode()[:48]
    needles["large-tail"] = values["large"].encode()[-48:]
    token_needles = {}
    for i, bearer in enumerate(sorted(bearer_tokens)):
        token_needles[f"token{i}"] = bearer.encode()
        token_needles[f"token{i}-signature"] = bearer.rsplit(".", 1)[1].encode()

    # 1. the files exactly as a crash leaves them (WAL and shared memory included); on PostgreSQL also the
    # cluster's files of the server's database: the WAL written meanwhile, the database's files, the server log
    server.kill()
    crashed = {str(p): p.read_bytes() for p in server.stored_files()}
    wal = "/pg_wal/" if server.on_postgres else "coffer.db-wal"
    assert any(wal in p for p in crashed), sorted(crashed)
    assert find_leaks(crashed, {**needles, **token_needles}) == []

    # 2. after a clean stop (checkpointed database), plus the server's own output
    server.restart()
    assert server.stop() == 0
    stopped = {str(p): p.read_bytes() for p in server.stored_files()}
    stopped["<server output>"] = "".join(server.output).encode()
    database = set() if server.on_postgres else {"coffer.db"}
    assert {*database, "audit.log", "ca.pem", "server.key"} <= {p.rsplit("/", 1)[-1] for p in stopped}
    assert find_leaks(stopped, {**needles, **token_needles}) == []
    # positive control: the scan does read the database, where tags are kept in the clear on purpose
    tag_hits = find_leaks(stopped, {"tag": b'"payments"'})
    assert any(wal in hit or "coffer.db" in hit or "/base/" in hit for hit in tag_hits), "not reading the database?"
    # positive control: the scan does see a credential where it is kept on purpose (dev.env), and only there
    assert find_leaks(stopped, {"identity-header": identity_header.encode()}) == [
        f"identity-header as raw in {server.data_dir / 'dev.env'}"]

    # 3. the audit log: one AuditEvent line per request, without tokens or credentials
    audit_bytes = stopped[str(server.data_dir / "audit.log")]
    assert find_leaks({"audit.log": audit_bytes}, {"identity-header": identity_header.encode(),
                                                   "identity-header-secret": identity_header.split(".", 1)[1].encode(),
                                                   "client-secret": server.env["COFFER_CLIENT_SECRET"].encode()}) == []
    lines = audit_bytes.decode("utf-8").splitlines()
    records = [orjson.loads(line) for line in lines]
    assert len(records) == len(sent), (len(records), len(sent))
    assert Counter(r["properties"]["requestUri"].split("?")[0] for r in records) == Counter(
        urlsplit(url).path for _, url, _ in sent)
    operations = Counter(r["operationName"] for r in records)
    for name, count in (("SecretSet", 7), ("SecretBackup", 1), ("SecretDelete", 2), ("SecretPurge", 1),
                        ("SecretRestore", 1), ("SecretRecover", 1), ("SecretUpdate", 1)):
        assert operations[name] == count, operations
    assert operations["Authentication"] >= 2  # the token request and the first unauthenticated challenge
    for record in records:
        for field in AUDIT_FIELDS:
            assert field in record, (field, record)
        assert record["category"] == "AuditEvent"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record["time"]
        assert record["operationName"]
        assert record["callerIpAddress"] in ("127.0.0.1", "::1"), record
        assert record["properties"]["requestUri"].startswith("/")
        assert record["resultSignature"] in ("OK", "Created", "NoContent", "Unauthorized"), record
        assert str(record["durationMs"]).isdigit()
        if record["resultSignature"] != "Unauthorized":
            assert record["identity"]["claim"]["oid"], record
    secret_records = [r for r in records if r["operationName"].startswith("Secret")]
    assert all(r["properties"]["vault"] == "dev" for r in secret_records)
    assert all(r["resultSignature"] in ("OK", "NoContent") for r in secret_records)
