"""The socket bench's baseline: a bare asyncio Unix-socket topic router with the same framing as ours.

Frames are ``>II`` (header length, body length) + an orjson header + the body, as in
``transports/socket_protocol``. The server parses publish frames, routes them (routes cached per routing key,
``topics.topic_matches`` on a miss) to subscriber connections as delivery frames with a tag, writes coalesced
once per loop iteration, and stops reading publishers while a subscriber cannot keep up; the subscriber
decodes each body with orjson and acks every tag it got in one frame per read. No validation, no prefetch
credit, no requeue: the floor our broker's socket path is compared with.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any, cast

import orjson

from thatdam_bus.topics import topic_matches

PREFIX = struct.Struct(">II")
FLUSH_AT = 256 * 1024
"""As ours: writes coalesced per loop iteration, or sooner past this many bytes."""


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return b"".join((PREFIX.pack(len(head), len(body)), head, body))


class Framed(asyncio.Protocol):
    """Frame parsing and coalesced writes; ``on_frame(header, body)`` per frame."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._size = 0
        self._flush: asyncio.Handle | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        pos, size = 0, len(buffer)
        view = memoryview(buffer)
        while size - pos >= 8:
            head_len, body_len = PREFIX.unpack_from(buffer, pos)
            end = pos + 8 + head_len + body_len
            if end > size:
                break
            header = orjson.loads(view[pos + 8:pos + 8 + head_len])
            self.on_frame(header, bytes(view[pos + 8 + head_len:end]))
            pos = end
        view.release()
        del buffer[:pos]
        self.after_read()

    def on_frame(self, header: dict[str, Any], body: bytes) -> None:
        raise NotImplementedError

    def after_read(self) -> None:
        """Hook: once per ``data_received`` (the subscriber acks here)."""

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._size = 0
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class RouterConnection(Framed):
    def __init__(self, server: BareServer) -> None:
        super().__init__()
        self.server = server
        self.tags = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.bindings = [(p, c) for p, c in self.server.bindings if c is not self]
        self.server.routes.clear()

    def on_frame(self, header: dict[str, Any], body: bytes) -> None:
        op = header["op"]
        if op == "pub":
            for target in self.server.route(header["k"]):
                target.tags += 1
                target.send(frame({"op": "dlv", "t": target.tags, "k": header["k"]}, body))
        elif op == "sub":
            self.server.bind(header["p"], self)
            self.send(frame({"op": "ok"}))
        # "ack": nothing to do but parse it

    def pause_writing(self) -> None:
        super().pause_writing()
        self.server.hold_publishers(True)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.server.hold_publishers(False)


class BareServer:
    def __init__(self) -> None:
        self.connections: set[RouterConnection] = set()
        self.bindings: list[tuple[str, RouterConnection]] = []
        self.routes: dict[str, list[RouterConnection]] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: RouterConnection(self), path)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await self._server.wait_closed()

    def bind(self, pattern: str, connection: RouterConnection) -> None:
        self.bindings.append((pattern, connection))
        self.routes.clear()

    def route(self, key: str) -> list[RouterConnection]:
        targets = self.routes.get(key)
        if targets is None:
            targets = self.routes[key] = [c for p, c in self.bindings if topic_matches(p, key)]
        return targets

    def hold_publishers(self, hold: bool) -> None:
        for connection in self.connections:
            if connection.transport is not None and not connection.transport.is_closing():
                if hold:
                    connection.transport.pause_reading()
                else:
                    connection.transport.resume_reading()


class Subscriber(Framed):
    """Decodes every delivered body with orjson and acks the tags of each read in one frame."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.on_event = on_event
        self.tags: list[int] = []
        self.subscribed = asyncio.get_running_loop().create_future()

    def on_frame(self, header: dict[str, Any], body: bytes) -> None:
        if header["op"] == "dlv":
            self.on_event(orjson.loads(body))
            self.tags.append(header["t"])
        elif not self.subscribed.done():
            self.subscribed.set_result(None)

    def after_read(self) -> None:
        if self.tags:
            self.send(frame({"op": "ack", "t": self.tags}))
            self.tags = []


class Publisher(Framed):
    async def publish(self, key: str, body: bytes) -> None:
        self.send(frame({"op": "pub", "k": key}, body))
        if not self.writable.is_set():
            self.flush()
            await self.writable.wait()

    def on_frame(self, header: dict[str, Any], body: bytes) -> None:
        pass
