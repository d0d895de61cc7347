"""The audit log's group commit: every record durable before write() returns, concurrent records batched, and a
failed batch fails every request in it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from unittest import mock

import orjson
import pytest

from coffer.audit import AuditError, AuditLog


def test_concurrent_records_are_all_written_once_and_fsynced_in_fewer_batches(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    fsyncs = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        real_fsync(fd)

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
    assert fsyncs <= 800


def test_a_failed_write_fails_the_request_and_the_next_ones_succeed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    with mock.patch("coffer.audit.log.os.fsync", side_effect=OSError(28, "No space left on device")), \
            pytest.raises(AuditError, match="No space left"):
        log.write({"operationName": "SecretGet"})
    log.write({"operationName": "SecretSet"})
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.write({"operationName": "SecretGet"})
