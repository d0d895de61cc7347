"""One pipeline every request passes through.

    edge (api)        parse host and route; answer 401 before reading any body
    authenticate      bearer token → Caller                         (TokenService.verify)
    authorize         Caller, data action, scope → allow / 403     (authz.authorize)
    execute           the operation's handler inside one storage transaction, through the barrier: writes in the
                      process's writer thread (committed in groups), reads on the event loop when the storage
                      answers from a local file (SQLite), else in a worker thread; a read's slow part (an HSM
                      call, a large RSA key's private operation: Result.finish) in a thread once its transaction is over
    audit             the record is made durable before a write's transaction commits (if audit fails, the
                      transaction rolls back), and before a read's response is sent; a request whose record is
                      not durable fails (fail closed)
    respond           the edge renders the Result in Azure's wire format

Failures (401, 403, 4xx, 5xx) are audited too, through `audit_failure`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread

from coffer.audit import AuditLog
from coffer.authz import Authorizer, Decision
from coffer.barrier import Barrier, VaultView
from coffer.core.throttle import RequestThrottle
from coffer.errors import CofferError, NotFound, Sealed, Unauthorized
from coffer.identity.index import IdentityIndex
from coffer.identity.tokens import Caller, TokenService
from coffer.storage import Storage, StorageError, Transaction, VaultRow

log = logging.getLogger("coffer.pipeline")

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "NoContent",
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


@dataclass
class RequestInfo:
    request_uri: str
    caller_ip: str
    correlation_id: str | None = None
    api_version: str | None = None
    client_info: str | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Result:
    status: int = 200
    body: Any = None
    object_id: str | None = None  # the object URI, for the audit record
    headers: dict[str, str] = field(default_factory=dict)
    # A read's slow part (an HSM call, an RSA-3072/4096 private-key operation), run in a worker thread after its
    # transaction, never on the event loop; it returns the body. If it fails, the request fails (and is audited as
    # failed). Reads only: a write that sets it fails, undone (its slow part would run after the commit).
    finish: Callable[[], Any] | None = None


@dataclass
class Context:
    tx: Transaction
    barrier: Barrier
    caller: Caller
    vault: VaultRow | None
    view: VaultView | None
    authorizer: Authorizer

    def require_view(self) -> VaultView:
        if self.view is None:
            raise RuntimeError("operation needs a vault")
        return self.view


@dataclass
class Operation:
    name: str  # Azure audit operationName, e.g. "SecretGet"
    action: str  # Azure data action, e.g. "Microsoft.KeyVault/vaults/secrets/getSecret/action"
    scope: str  # e.g. "/secrets/db-password"
    vault: str | None
    write: bool
    run: Callable[[Context], Result]
    policy: str | None = None  # the access-policy permission, where one data action covers several


_MAX_BATCH = 64  # writes per group commit


class _Write:
    __slots__ = ("caller", "error", "future", "info", "op", "result")

    def __init__(self, op: Operation, caller: Caller, info: RequestInfo, future: asyncio.Future[Result]) -> None:
        self.op, self.caller, self.info, self.future = op, caller, info, future
        self.result: Result | None = None
        self.error: BaseException | None = None


class Pipeline:
    def __init__(
        self,
        storage: Storage,
        barrier: Barrier,
        tokens: TokenService,
        index: IdentityIndex,
        authorizer: Authorizer,
        audit: AuditLog,
        throttle: RequestThrottle | None = None,
    ) -> None:
        self.storage = storage
        self.throttle = throttle
        self.barrier = barrier
        self.tokens = tokens
        self.index = index
        self.authorizer = authorizer
        self.audit = audit
        self._writes = threading.Condition()  # the group commit's queue (see _write_forever)
        self._queued: list[_Write] = []
        self._writer: threading.Thread | None = None
        # Results' slow parts (Result.finish): a pool of its own (Python's default size, cores + 4 up to 32) rather
        # than anyio's, which costs more per call (RSA-2048 sign, in-process: +10-20 % with this one)
        self._slow = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="coffer-slow")

    def close(self) -> None:
        """Wait for the slow parts still running (before the HSM session they may use closes)."""
        self._slow.shutdown(wait=True)

    async def authenticate(self, authorization: str | None, tenant: str | None = None) -> Caller:
        """The caller a bearer token proves; `tenant` (the vault's) must be the token's tenant."""
        if self.barrier.sealed:
            raise Sealed()
        if not authorization:
            raise Unauthorized()
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized()
        caller = self.tokens.verify(token.strip(), tenant)
        problem = self.index.problem(caller)
        if problem is not None and caller.kind != "external":  # a storage read: in a thread unless it is fast
            if self.storage.fast_reads:
                problem = self._recheck(caller)
            else:
                problem = await anyio.to_thread.run_sync(self._recheck, caller)
        if problem is not None:
            raise Unauthorized("AKV10032: Invalid token.", reason=problem)
        if tenant and caller.tenant_id != tenant:
            raise Unauthorized("AKV10032: Invalid token.", reason="token of another tenant")
        return caller

    def _recheck(self, caller: Caller) -> str | None:
        """The index follows changes made by other processes a moment later (the change feed): the token of a
        principal or credential created there just now is valid, so ask the storage before refusing it."""
        with self.storage.read() as tx:
            if tx.principal_get(caller.object_id) is None:
                return "principal deleted"
            if caller.credential_id is not None and tx.credential_get(caller.credential_id) is None:
                return "credential revoked"
        return None

    async def execute(self, op: Operation, caller: Caller, info: RequestInfo) -> Result:
        if self.throttle is not None and op.vault is not None:  # the data plane's service limits
            self.throttle.admit(op.vault.lower(), op.name, caller.object_id)
        if op.write:  # to the writer thread; its audit record is durable before it commits
            write = _Write(op, caller, info, asyncio.get_running_loop().create_future())
            with self._writes:
                self._queued.append(write)
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_forever, name="coffer-writer", daemon=True)
                    self._writer.start()
                self._writes.notify()
            return await write.future
        if self.storage.fast_reads:  # microseconds: cheaper than handing over to a thread
            result, record = self._read(op, caller, info)
        else:
            result, record = await anyio.to_thread.run_sync(self._read, op, caller, info)
        if result.finish is not None:
            loop = asyncio.get_running_loop()
            result.body, result.finish = await loop.run_in_executor(self._slow, result.finish), None
        await self.audit.write_async(record)  # other requests are served meanwhile
        return result

    def _write_forever(self) -> None:
        """Group commit, in one thread per process: the writes that queue up while one group commits are committed
        together next, each in a savepoint of one transaction (a write that fails undoes only its own part), with
        one audit fsync and one commit for all. Each request is answered once all of it is durable."""
        while True:
            with self._writes:
                while not self._queued:
                    self._writes.wait()
                batch = self._queued[:_MAX_BATCH]
                del self._queued[:_MAX_BATCH]
            self._commit(batch)
            loops: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
            for write in batch:
                loops.setdefault(write.future.get_loop(), []).append(write)
            for loop, writes in loops.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
                    loop.call_soon_threadsafe(_settle, writes)

    def _commit(self, batch: list[_Write]) -> None:
        try:
            with self.storage.write() as tx:
                records = []
                for write in batch:
                    try:
                        with tx.savepoint():
                            write.result, record = self._run(tx, write.op, write.caller, write.info)
                            if write.result.finish is not None:  # it would run after the commit, and could fail then
                                raise RuntimeError(f"{write.op.name}: a write cannot have a slow part (Result.finish)")
                        records.append(record)
                    except StorageError:  # the transaction itself may be broken: fail them all
                        raise
                    except Exception as error:  # this request's own failure (a 4xx, ...): only its part is undone
                        write.error, write.result = error, None
                if records:
                    self.audit.write(*records)  # durable before the commit, or nothing commits
        except BaseException as error:  # nothing was committed: every write of the batch fails (and the writer
            for write in batch:  # thread goes on: if it died, every later write would wait for ever)
                if write.error is None:
                    write.error, write.result = error, None

    def _read(self, op: Operation, caller: Caller, info: RequestInfo) -> tuple[Result, dict[str, Any]]:
        with self.storage.read() as tx:
            return self._run(tx, op, caller, info)

    def _run(self, tx: Transaction, op: Operation, caller: Caller, info: RequestInfo) -> tuple[Result, dict[str, Any]]:
        vault = None
        if op.vault is not None:
            vault = tx.vault_get(op.vault)
            if vault is None:
                raise NotFound(f"Vault {op.vault} was not found on this server.", code="VaultNotFound")
        decision = self.authorizer.authorize(caller, op.action, op.scope, vault, op.policy)
        view = VaultView(tx, self.barrier, vault) if vault is not None else None
        result = op.run(Context(tx, self.barrier, caller, vault, view, self.authorizer))
        record = self._record(op.name, op.vault, caller, info, result.status, result.object_id)
        record["properties"].update(_decision_fields(decision))
        return result, record

    async def audit_failure(
        self, name: str, vault: str | None, caller: Caller | None, info: RequestInfo, error: CofferError
    ) -> None:
        description = error.message
        if isinstance(error, Unauthorized) and error.reason:
            description = f"{error.message} ({error.reason})"
        await self.audit.write_async(self._record(name, vault, caller, info, error.status, None, description))

    def _record(
        self,
        name: str,
        vault: str | None,
        caller: Caller | None,
        info: RequestInfo,
        status: int,
        object_id: str | None,
        description: str | None = None,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "operationName": name,
            "operationVersion": info.api_version,
            "resultType": "Success" if status < 400 else "Failure",
            "resultSignature": _REASONS.get(status, str(status)),
            "durationMs": str(int((time.perf_counter() - info.started) * 1000)),
            "callerIpAddress": info.caller_ip,
            "correlationId": info.correlation_id,
            "identity": caller.audit_identity() if caller else None,
            "properties": {
                "clientInfo": info.client_info,
                "requestUri": info.request_uri,
                "httpStatusCode": status,
                "vault": vault,
                "id": object_id,
            },
        }
        if description:
            record["resultDescription"] = description
        return record


def _settle(writes: list[_Write]) -> None:
    """On the waiting loop: answer each write (unless its request was cancelled meanwhile)."""
    for write in writes:
        if write.future.done():
            continue
        if write.error is not None:
            write.future.set_exception(write.error)
        else:
            assert write.result is not None
            write.future.set_result(write.result)


def _decision_fields(decision: Decision) -> dict[str, Any]:
    if decision.model == "accessPolicy":
        return {"isAccessPolicyMatch": True, "isRbacAuthorized": False, "decisionReason": decision.reason}
    return {"isRbacAuthorized": True, "appliedAssignmentId": decision.assignment_id, "decisionReason": decision.reason}
