"""The audit log: every record durable before write() returns (the writer thread's path) or write_async() completes
(reads, on the event loop: batched by the flusher thread); a failed write or batch fails every request in it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import orjson
import pytest
from tests.support.inprocess import failing_fsync

from coffer.audit import AuditError, AuditLog


def _fsync_counter() -> tuple[list[int], Callable[[int], None]]:
    counted = [0]
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        counted[0] += 1
        real_fsync(fd)

    return counted, counting_fsync


def test_concurrent_writes_are_all_written_once_and_whole(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    fsyncs, counting_fsync = _fsync_counter()
    with mock.patch("coffer.audit.log.os.fsync", counting_fsync):
        threads = [threading.Thread(target=lambda i=i: [log.write({"n": i * 100 + j}) for j in range(100)])
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    log.close()
    numbers = sorted(orjson.loads(line)["n"] for line in (tmp_path / "audit.log").read_bytes().splitlines())
    assert numbers == list(range(800))
    assert fsyncs[0] == 800  # write() fsyncs its own records (the writer thread already groups them)


def test_a_failed_write_fails_the_request_and_the_next_ones_succeed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    with mock.patch("coffer.audit.log.os.fsync", side_effect=OSError(28, "No space left on device")), \
            pytest.raises(AuditError, match="No space left"):
        log.write({"operationName": "SecretGet"})
    log.write({"operationName": "SecretSet"})
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.write({"operationName": "SecretGet"})


def test_async_records_share_fsyncs_and_a_failed_batch_fails_each(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    fsyncs, counting_fsync = _fsync_counter()
    async def scenario() -> None:
        with mock.patch("coffer.audit.log.os.fsync", counting_fsync):
            await asyncio.gather(*(log.write_async({"n": n}) for n in range(200)))
        with mock.patch("coffer.audit.log.os.fsync", failing_fsync):
            results = await asyncio.gather(*(log.write_async({"n": n}) for n in range(5)), return_exceptions=True)
        assert all(isinstance(r, AuditError) for r in results)
        waiter = asyncio.ensure_future(log.write_async({"n": "cancelled"}))
        waiter.cancel()  # a client that went away: the flusher must not trip over its future
        await log.write_async({"n": "after"})

    asyncio.run(scenario())
    log.close()
    lines = (tmp_path / "audit.log").read_bytes().splitlines()
    assert len([line for line in lines if b'"n":' in line]) >= 201
    assert fsyncs[0] < 200  # concurrent records were batched

    async def closed() -> None:
        with pytest.raises(AuditError, match="closed"):
            await log.write_async({"n": "late"})

    asyncio.run(closed())


def test_records_of_requests_in_flight_share_one_fsync_and_a_lone_one_is_not_delayed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    fsyncs, counting_fsync = _fsync_counter()

    async def arrive(n: int, after: float) -> float:
        await asyncio.sleep(after)
        started = time.perf_counter()
        await log.write_async({"n": n})
        return time.perf_counter() - started

    async def scenario() -> None:
        with mock.patch("coffer.audit.log.os.fsync", counting_fsync):
            # three requests in flight whose records come 10 ms apart: the flusher waits for the last one, and
            # flushes as soon as it came (not after the group delay)
            log.requests_in_flight = 3
            with mock.patch("coffer.audit.log.GROUP_DELAY_SECONDS", 10.0):
                waited = await asyncio.gather(*(arrive(n, n * 0.01) for n in range(3)))
            assert fsyncs[0] == 1
            assert max(waited) < 5.0
            # the edge counted 5, but only one record comes: it waits at most the group delay
            log.requests_in_flight = 5
            waited = await arrive(3, 0)
            assert waited < 0.5
            # a request alone is not delayed at all: the flusher does not wait
            log.requests_in_flight = 1
            with mock.patch("coffer.audit.log.GROUP_DELAY_SECONDS", 10.0):
                waited = await arrive(4, 0)
            assert waited < 1.0

    asyncio.run(scenario())
    log.close()
    assert (tmp_path / "audit.log").read_bytes().count(b'"n":') == 5


def test_reopen_after_rotation_loses_and_splits_no_record(tmp_path: Path) -> None:
    """logrotate moves the file away and sends SIGHUP: records written while that happens, from the writer thread
    and from the event loop's flusher at once, all end up whole in one of the two files, each once."""
    path = tmp_path / "audit.log"
    log = AuditLog(path)

    def direct(base: int) -> None:
        for j in range(300):
            log.write({"n": base + j})

    async def reads() -> None:
        await asyncio.gather(*(log.write_async({"n": 10_000 + i}) for i in range(300)))

    threads = [threading.Thread(target=direct, args=(i * 1000,)) for i in range(3)]
    threads.append(threading.Thread(target=lambda: asyncio.run(reads())))
    for thread in threads:
        thread.start()
    rotated = []
    for k in range(3):  # rotate three times while they write
        time.sleep(0.01)
        moved = tmp_path / f"audit.log.{k}"
        os.rename(path, moved)
        log.reopen()
        rotated.append(moved)
    for thread in threads:
        thread.join()
    log.write({"n": -1})  # after the last rotation: in the current file
    log.close()
    numbers = []
    for file in [*rotated, path]:
        numbers += [orjson.loads(line)["n"] for line in file.read_bytes().splitlines()]
    expected = [-1] + [i * 1000 + j for i in range(3) for j in range(300)] + [10_000 + i for i in range(300)]
    assert sorted(numbers) == sorted(expected)
    assert orjson.loads(path.read_bytes().splitlines()[-1])["n"] == -1
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_reopen_that_cannot_open_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.log"
    log = AuditLog(path)
    log.write({"n": 1})
    os.rename(path.parent, tmp_path / "moved")  # the directory is gone: the new file cannot be created
    with pytest.raises(OSError):
        log.reopen()
    log.write({"n": 2})  # still durable, in the old file
    log.close()
    assert [orjson.loads(line)["n"] for line in (tmp_path / "moved" / "audit.log").read_bytes().splitlines()] == [1, 2]
