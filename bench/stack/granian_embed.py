"""Serve one of apps.py with granian's embedded server (granian.server.embed.Server), the way Coffer would embed it:
one process, the app object passed in, serve() awaited on the caller's own event loop (uvloop), stop() on SIGTERM.

Usage: python granian_embed.py APP PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import apps
import uvloop
from granian.constants import Interfaces
from granian.server.embed import Server


async def main(app_name: str, port: int, cert: Path, key: Path) -> None:
    server = Server(
        getattr(apps, app_name),
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGINL,  # no lifespan, like Coffer's uvicorn config (lifespan="off")
        ssl_cert=cert,
        ssl_key=key,
        log_level="warning",
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.stop)
    loop.add_signal_handler(signal.SIGINT, server.stop)
    await server.serve()


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
