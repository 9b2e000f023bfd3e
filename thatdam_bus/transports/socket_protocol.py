"""Framing for the embedded broker's local Unix socket, shared by the server and the client.

A frame is ``>II`` (header length, body length), an orjson header object, then the raw body bytes. The size
is checked from the 8-byte prefix before a body is buffered, so a client cannot make the node allocate more
than ``max_frame`` bytes; a bad frame costs that one connection, never the server.

Header keys are short because every message carries one. Operations (``op``):

=========  ==============  ==================================================================================
op         direction       fields
=========  ==============  ==================================================================================
hello      client->server  id, v (protocol version) -> ok: prefix, max_frame, ma (max attempts)
pub        client->server  k (routing key), h (headers), d (durable), m (mandatory), id (only if d or m)
sub        client->server  id, s (client-chosen subscription id), p, kind, name, pf (prefetch), src -> ok: q
dlv        server->client  s, t (delivery tag), k, h, a (attempt), q (queue); the body is the message
set        client->server  t, f (fate, "release" or "abandon"), r (reason); batched acks: t is a list
can        client->server  id, s -> ok once no more ``dlv`` for s will be sent
ok / err   server->client  id; err adds e (error class name) and msg
=========  ==============  ==================================================================================
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, cast

import orjson

from thatdam_bus.transports.base import Delivery, QueueSpec

log = logging.getLogger(__name__)

VERSION = 1
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
PREFIX = struct.Struct(">II")
FLUSH_AT = 256 * 1024
"""Outgoing frames are coalesced into one write per loop iteration, or sooner past this many bytes."""

OP_HELLO, OP_PUBLISH, OP_SUBSCRIBE, OP_DELIVER = "hello", "pub", "sub", "dlv"
OP_SETTLE, OP_CANCEL, OP_OK, OP_ERROR = "set", "can", "ok", "err"
ACKS_AT = 1024
RELEASE = "release"
"""Settle value for a delivery no callback saw (backlog of a cancelled subscription): requeued as it was."""
ABANDON = "abandon"
"""Settle value for a delivery whose callback was interrupted: requeued as a redelivery, no ``settle``."""


class FrameError(ValueError):
    """A peer sent bytes that are not a valid frame; the connection is closed."""


def encode_frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return b"".join((PREFIX.pack(len(head), len(body)), head, body))


def publish_frame(routing_key: str, body: bytes, headers: Any, durable: bool, mandatory: bool,
                  request_id: int | None) -> bytes:
    header: dict[str, Any] = {"op": OP_PUBLISH, "k": routing_key}
    if headers:
        header["h"] = headers
    if request_id is not None:
        header.update(id=request_id, d=durable, m=mandatory)
    return encode_frame(header, body)


def subscribe_header(sid: int, spec: QueueSpec) -> dict[str, Any]:
    return {"op": OP_SUBSCRIBE, "s": sid, "p": list(spec.patterns), "kind": spec.kind.value,
            "name": spec.name, "pf": spec.prefetch, "src": spec.source.value}


def deliver_frame(sid: int, tag: int, delivery: Delivery) -> bytes:
    header: dict[str, Any] = {"op": OP_DELIVER, "s": sid, "t": tag, "k": delivery.routing_key,
                              "a": delivery.attempt, "q": delivery.queue}
    if delivery.headers:
        header["h"] = dict(delivery.headers)
    return encode_frame(header, delivery.body)


def settle_frame(tag: int, fate: str, reason: str | None) -> bytes:
    header: dict[str, Any] = {"op": OP_SETTLE, "t": tag, "f": fate}
    if reason is not None:
        header["r"] = reason
    return encode_frame(header)


def acks_frame(tags: list[int]) -> bytes:
    return encode_frame({"op": OP_SETTLE, "t": tags, "f": "ack"})


def reply_frame(request_id: Any, **fields: Any) -> bytes:
    return encode_frame({"op": OP_OK, "id": request_id, **fields})


def error_frame(request_id: Any, error: BaseException) -> bytes:
    return encode_frame({"op": OP_ERROR, "id": request_id, "e": type(error).__name__, "msg": str(error)})


class FramedProtocol(asyncio.Protocol):
    """Frame parsing, coalesced writes and flow control for one socket connection.

    Subclasses implement ``frame_received`` (synchronous: no per-frame coroutine on the hot path) and
    ``on_close``. Any exception while handling a frame is treated as a protocol violation of the peer.
    """

    couple_flow = False
    """Server side: stop reading a peer while we cannot write to it, so an unread reply stream cannot grow."""

    def __init__(self, *, max_frame: int, label: str) -> None:
        self.max_frame = max_frame
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._inbuf = bytearray()
        self._need = 8
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._gone = asyncio.get_running_loop().create_future()
        self._read_holds: set[str] = set()

    # -- subclass hooks ---------------------------------------------------------------------------------

    def frame_received(self, header: dict[str, Any], body: bytes) -> None:
        raise NotImplementedError

    def on_close(self, exc: BaseException | None) -> None:
        """The connection is gone (EOF, error, or our own close); release what it held."""

    # -- asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Parse whole frames straight out of ``data``; only an incomplete tail is kept, and it is joined
        again once the frame it starts is known to be complete (no quadratic re-copying of big bodies)."""
        if self._inbuf:
            self._inbuf += data
            if len(self._inbuf) < self._need:
                return
            data = bytes(self._inbuf)
            self._inbuf.clear()
        try:
            pos = self._parse(data)
        except (FrameError, orjson.JSONDecodeError) as exc:
            self.violation(f"bad frame: {exc}")
        except Exception as exc:
            self.violation(f"frame could not be handled: {type(exc).__name__}: {exc}")
        else:
            if pos < len(data) and not self.closed:
                self._inbuf += memoryview(data)[pos:]

    def _parse(self, data: bytes) -> int:
        """Hand each complete frame to ``frame_received``; return where the incomplete rest begins."""
        view, pos, size = memoryview(data), 0, len(data)
        unpack, loads, limit = PREFIX.unpack_from, orjson.loads, self.max_frame
        while size - pos >= 8 and not self.closed:
            head_len, body_len = unpack(data, pos)
            if head_len + body_len > limit:
                raise FrameError(f"{head_len + body_len}-byte frame exceeds the {limit} limit")
            start = pos + 8
            middle = start + head_len
            end = middle + body_len
            if end > size:
                self._need = end - pos
                return pos
            header = loads(view[start:middle])
            if type(header) is not dict or type(header.get("op")) is not str:
                raise FrameError("frame header is not an object with an 'op'")
            pos = end
            self.frame_received(header, data[middle:end])
        self._need = 8
        return pos

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown(exc)

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.couple_flow:
            self.hold_reading("writes")

    def resume_writing(self) -> None:
        self._writable.set()
        if self.couple_flow:
            self.release_reading("writes")

    # -- writing --------------------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue a frame; it goes out with the others of this loop iteration in one write."""
        if self.closed:
            return
        self._out.append(frame)
        self._out_size += len(frame)
        if self._out_size >= FLUSH_AT:
            self.flush()
        else:
            self.schedule_flush()

    def schedule_flush(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._out and not self.closed and self.transport is not None and not self.transport.is_closing():
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self._out_size = 0
            self.transport.write(data)

    @property
    def write_paused(self) -> bool:
        return not self._writable.is_set()

    async def drain(self) -> None:
        """Wait until the peer reads again (no-op unless the kernel buffer and ours are full)."""
        if not self._writable.is_set():
            await self._writable.wait()

    # -- reading flow control -------------------------------------------------------------------------------

    def hold_reading(self, reason: str) -> None:
        if not self._read_holds and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._read_holds.add(reason)

    def release_reading(self, reason: str) -> None:
        self._read_holds.discard(reason)
        if not self._read_holds and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- closing --------------------------------------------------------------------------------------------

    def violation(self, why: str) -> None:
        """The peer broke the protocol: log one line and drop this connection only."""
        log.warning("%s: %s; closing the connection", self.label, why)
        self.abort()

    def abort(self) -> None:
        """Drop the connection now, unsent frames included, and run ``on_close`` before returning."""
        if self.transport is not None:
            self.transport.abort()
        self._shutdown(None)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush what is queued (acks, releases), close, and wait for the transport to let go."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._gone)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()

    def _shutdown(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()
        self._writable.set()
        if not self._gone.done():
            self._gone.set_result(None)
        self.on_close(exc)
