"""Health, seal status, initialisation and unsealing (unauthenticated, as in Vault), and sealing."""

from __future__ import annotations

import asyncio
import concurrent.futures

import anyio.to_thread
import orjson

from coffer.api.request import ApiRequest
from coffer.api.routing import Route
from coffer.core import Context, Operation, Result
from coffer.errors import BadParameter, Forbidden
from coffer.storage import Storage, StorageError

# How long /healthz waits for the storage to answer before calling it unavailable (well under a balancer's check
# timeout; a PostgreSQL pool that cannot connect would otherwise hold the check for its own 10 s).
HEALTH_STORAGE_SECONDS = 2.0


async def health(req: ApiRequest) -> Result:
    """200 when this node can serve: initialized, unsealed and its storage answering; else 503 with the reason."""
    status = req.app.barrier.status()  # from memory once initialized
    state = "ok" if status.initialized and not status.sealed else "sealed"
    if state == "ok" and not await _storage_answers(req.app.storage):
        state = "storage unavailable"
    body = {"status": state, **status.as_dict(), "jobLeader": req.app.job_leader}
    return Result(status=200 if state == "ok" else 503, body=body)


# The probe's own thread: requests' storage reads queue for the shared worker threads under load, and a health check
# waiting behind them would call a busy node's storage unavailable. One probe at a time: while one waits for a
# database that does not answer, the next checks time out instead of piling up threads.
_PROBE = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="coffer-health")


async def _storage_answers(storage: Storage) -> bool:
    def probe() -> None:
        with storage.read() as tx:
            tx.meta_get("seal-config")

    loop = asyncio.get_running_loop()
    try:  # in a thread: the event loop serves others meanwhile
        await asyncio.wait_for(loop.run_in_executor(_PROBE, probe), HEALTH_STORAGE_SECONDS)
    except (TimeoutError, StorageError):
        return False
    return True


async def seal_status(req: ApiRequest) -> Result:
    return Result(body=req.app.seal_status())


async def init(req: ApiRequest) -> Result:
    body = await req.json(required=False)
    shares, threshold = body.get("shares", 5), body.get("threshold", 3)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (shares, threshold)):
        raise BadParameter("shares and threshold must be integers.")
    if not (1 <= threshold <= shares <= 16) or (threshold == 1 and shares != 1):
        raise BadParameter("Need 1 <= threshold <= shares <= 16; a threshold of 1 needs exactly 1 share.")
    result = await anyio.to_thread.run_sync(req.app.initialize, shares, threshold)
    return Result(body=result)


async def unseal(req: ApiRequest) -> Result:
    body = await req.json()
    share = body.get("key")
    if not isinstance(share, str) or not share.strip():
        raise BadParameter("Property key (one unseal share) is required.")
    status = await anyio.to_thread.run_sync(req.app.submit_share, share.strip())
    return Result(body=status.as_dict())


async def seal(req: ApiRequest) -> Result:
    def run(ctx: Context) -> Result:
        bootstrap = ctx.barrier.system_get(ctx.tx, "bootstrap")
        if bootstrap is None or orjson.loads(bootstrap)["objectId"] != ctx.caller.object_id:
            raise Forbidden("Only the bootstrap administrator may seal the server.")
        return Result(status=204)

    op = Operation(name="Seal", action="Coffer/system/seal/action", scope="/", vault=None, write=False, run=run)
    assert req.caller is not None
    result = await req.pipeline.execute(op, req.caller, req.info)
    req.app.seal()
    return result


PUBLIC_ROUTES = [
    Route("GET", "/healthz", health),
    Route("GET", "/v1/sys/seal-status", seal_status),
    Route("POST", "/v1/sys/init", init),
    Route("POST", "/v1/sys/unseal", unseal),
]
ROUTES = [Route("POST", "/v1/sys/seal", seal)]
