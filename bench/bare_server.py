"""The framework ceiling for bench/proxy.py: aiohttp's low-level server (the one the gateway's
proxy listener runs on, on uvloop as the gateway does) answering every request with the bytes
of one file, read once at start. Nothing else happens per request, so no handler written on
aiohttp in one process can answer faster.

    python bench/bare_server.py HOST PORT FILE
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web


async def serve(host: str, port: int, body: bytes) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    server = web.Server(handler, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str]) -> int:
    host, port, path = argv
    uvloop.run(serve(host, int(port), Path(path).read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
