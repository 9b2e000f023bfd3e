"""An in-process TCP proxy for fault tests (Toxiproxy-style): put it between a client and Redis or
RabbitMQ, then ``cut()`` (reset every connection and refuse new ones), ``stall()`` (keep connections open but
let no byte through, the hung-server case that only deadlines catch) and ``heal()``.

Each proxied connection is one task pair inside the connection handler's own ``TaskGroup``; aborting both
sockets ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import StrEnum
from types import TracebackType
from typing import Self


class Mode(StrEnum):
    OPEN = "open"
    CUT = "cut"
    STALL = "stall"


class TcpProxy:
    """Listens on 127.0.0.1:<ephemeral port> and forwards to ``upstream``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = Mode.OPEN
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    def cut(self) -> None:
        """Reset every open connection and refuse (accept, then reset) new ones until ``heal``."""
        self.mode = Mode.CUT
        self._abort_all()

    def stall(self) -> None:
        """Swallow all traffic on open and new connections: peers hang until their own deadlines fire."""
        self.mode = Mode.STALL

    def heal(self) -> None:
        """Forward again. Connections that lived through a stall lost bytes, so they are reset first."""
        if self.mode is Mode.STALL:
            self._abort_all()
        self.mode = Mode.OPEN

    def _refusing(self) -> bool:
        return self.mode is Mode.CUT

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing():
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        if self._refusing():  # cut while we were connecting upstream
            self._abort_all()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pump(reader, up_writer, writer))
                group.create_task(self._pump(up_reader, writer, up_writer))
        finally:
            self._writers.difference_update((writer, up_writer))
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    source_writer: asyncio.StreamWriter) -> None:
        """Copy bytes until EOF or reset; drop them while stalled. Ending one direction ends both."""
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if self.mode is Mode.OPEN:
                    sink.write(data)
                    await sink.drain()
        sink.transport.abort()
        source_writer.transport.abort()

    async def aclose(self) -> None:
        self.mode = Mode.CUT
        self._abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            async with asyncio.timeout(5):
                await asyncio.gather(*self._handlers, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
