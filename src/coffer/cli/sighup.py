"""SIGHUP (reopen the audit log after log rotation) while a server process starts: remembered, acted on by
`cli.server.run` once its event loop handles the signal. Its default action would end the process, and ignoring it
could leave a process writing into the rotated file (the audit log may be open before the rotation). A module of
its own, with nothing to import, so that a worker process holds the signal before its heavy imports."""

from __future__ import annotations

import signal

_requested = False


def hold() -> None:
    """From now until the event loop's handler replaces this one: remember a SIGHUP. System calls it interrupts are
    restarted (SA_RESTART), as under the loop's handler: a blocking call in C code (the PKCS#11 module, libpq) must
    not fail with EINTR because of it."""

    def remember(_signum: int, _frame: object) -> None:
        global _requested
        _requested = True

    signal.signal(signal.SIGHUP, remember)
    signal.siginterrupt(signal.SIGHUP, False)


def requested() -> bool:
    """Whether a SIGHUP came while held."""
    return _requested
