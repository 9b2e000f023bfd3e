"""The ``Transport`` contract over the embedded broker's local Unix socket, for CLIs and scripts on the node.

Publishes and settles are coalesced into one write per loop iteration; confirmed (durable or mandatory)
publishes wait for the server's reply, so ``PublishRefused`` crosses the socket. Callbacks run in worker tasks
owned by this transport; a crash becomes a requeue and the server applies its own ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import orjson

from thatdam_bus.errors import (
    ConfigError,
    ContractError,
    PublishRefused,
    TransportClosed,
    TransportError,
    TransportUnavailable,
)
from thatdam_bus.transports.base import (
    ACK,
    Capabilities,
    Delivery,
    DeliveryCallback,
    Fate,
    Outcome,
    QueueSpec,
    outcome_of_crash,
)
from thatdam_bus.transports.embedded_broker import Mailbox, make_delivery
from thatdam_bus.transports.socket_protocol import (
    ACKS_AT,
    DEFAULT_MAX_FRAME,
    OP_CANCEL,
    OP_DELIVER,
    OP_ERROR,
    OP_HELLO,
    OP_OK,
    RELEASE,
    VERSION,
    FramedProtocol,
    FrameError,
    acks_frame,
    encode_frame,
    publish_frame,
    settle_frame,
    subscribe_header,
)
from thatdam_bus.transports.workers import Workers, worker_count

log = logging.getLogger(__name__)


class _ClientConnection(FramedProtocol):
    """The client end: routes deliveries to subscription inboxes and replies to waiting requests."""

    def __init__(self, owner: SocketTransport) -> None:
        super().__init__(max_frame=DEFAULT_MAX_FRAME, label=f"bus socket client {owner.socket_path}")
        self._owner = owner
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.subscriptions: dict[int, _SocketSubscription] = {}
        self._acks: list[int] = []

    def ack(self, tag: int) -> None:
        """Acks are the bulk of settles: they leave as one frame per loop iteration (or per ACKS_AT)."""
        if self.closed:
            return
        self._acks.append(tag)
        if len(self._acks) >= ACKS_AT:
            self.flush()
        else:
            self.schedule_flush()

    def flush(self) -> None:
        if self._acks:
            self._out.append(acks_frame(self._acks))
            self._acks = []
        super().flush()

    def frame_received(self, header: dict[str, Any], body: bytes) -> None:
        op = header["op"]
        if op == OP_DELIVER:
            subscription = self.subscriptions.get(header["s"])
            if subscription is None:
                self.send(settle_frame(header["t"], RELEASE, None))
                return
            delivery = make_delivery(header["k"], body, header.get("h") or {}, header["a"], header["q"])
            subscription.inbox.put((delivery, header["t"]))
        elif op in (OP_OK, OP_ERROR):
            waiter = self.pending.pop(header["id"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(header)
        else:
            raise FrameError(f"unexpected op {op!r} from the server")

    def on_close(self, exc: BaseException | None) -> None:
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(TransportUnavailable(f"lost the bus socket {self._owner.socket_path}"))
        self.pending.clear()
        for subscription in self.subscriptions.values():
            subscription.connection_lost()
        self._owner._connection_lost(exc)


class _SocketSubscription:
    """A remote consumer: the server pushes up to ``prefetch`` deliveries into ``inbox``; workers settle."""

    def __init__(self, owner: SocketTransport, connection: _ClientConnection, sid: int, spec: QueueSpec,
                 callback: DeliveryCallback) -> None:
        self._owner = owner
        self._connection = connection
        self.sid = sid
        self._spec = spec
        self._callback = callback
        self._queue = ""
        self._closed = False
        self.inbox: Mailbox[tuple[Delivery, int]] = Mailbox()
        self._workers = Workers(f"socket-subscription:{sid}")

    def __repr__(self) -> str:
        return f"<_SocketSubscription {self.sid} queue={self._queue!r} inbox={len(self.inbox)}>"

    @property
    def queue(self) -> str:
        return self._queue

    async def open(self) -> None:
        self._connection.subscriptions[self.sid] = self
        self._workers.spawn(worker_count(self._spec.prefetch), self._work)
        try:
            reply = await self._owner._request(subscribe_header(self.sid, self._spec))
        except BaseException:
            await self._close_locally()
            raise
        self._queue = reply["q"]

    async def cancel(self) -> None:
        """Ask the server to stop (it answers once nothing more will come), then hand back the backlog."""
        if self._closed:
            return
        self._closed = True
        self._owner._forget(self)
        if not self._connection.closed:
            # If the connection went away meanwhile, the server has requeued everything itself.
            with contextlib.suppress(TransportError):
                await self._owner._request({"op": OP_CANCEL, "s": self.sid})
        await self._close_locally()

    def connection_lost(self) -> None:
        """The server already requeued our unacked messages; just stop the workers."""
        self.inbox.drain()
        self._workers.cancel()

    async def stop(self) -> None:
        self._closed = True
        await self._close_locally()

    async def _close_locally(self) -> None:
        self._closed = True
        self._connection.subscriptions.pop(self.sid, None)
        await self._workers.stop()
        for _, tag in self.inbox.drain():
            self._connection.send(settle_frame(tag, RELEASE, None))

    async def _work(self) -> None:
        inbox, connection, callback = self.inbox, self._connection, self._callback
        while not self._closed:
            delivery, tag = await inbox.get()
            try:
                outcome = await callback(delivery)
            except Exception as exc:
                outcome = outcome_of_crash(exc)
            except BaseException:
                connection.send(settle_frame(tag, RELEASE, None))
                raise
            if outcome is ACK:
                connection.ack(tag)
                continue
            if not isinstance(outcome, Outcome):
                outcome = Outcome(Fate.REQUEUE, f"subscriber returned {outcome!r}, not an Outcome")
            if outcome.fate is Fate.ACK:
                connection.ack(tag)
            else:
                connection.send(settle_frame(tag, outcome.fate.value, outcome.reason))


class SocketTransport:
    """A client of a node's embedded broker through its Unix socket (same machine only)."""

    capabilities = Capabilities(scheme="embedded+unix", cross_host=False, survives_restart=False,
                                publisher_confirms=True)

    def __init__(self, socket_path: Path, *, prefix: str = "thatdam", connect_timeout: float = 5.0,
                 request_timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.prefix = prefix
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._connection: _ClientConnection | None = None
        self._max_frame = DEFAULT_MAX_FRAME
        self._ids = itertools.count(1)
        self._subscriptions: set[_SocketSubscription] = set()
        self._closed = False

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._connection is None:
            state = "not started"
        else:
            state = "lost" if self._connection.closed else "connected"
        return (f"<SocketTransport {self.socket_path} prefix={self.prefix!r} "
                f"subscriptions={len(self._subscriptions)} {state}>")

    async def start(self) -> None:
        """Connect and shake hands; fails fast with ``TransportUnavailable`` when nothing listens."""
        if self._closed:
            raise TransportClosed("start on a closed socket transport")
        if self._connection is not None:
            return
        loop = asyncio.get_running_loop()
        connection: _ClientConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_unix_connection(
                    lambda: _ClientConnection(self), str(self.socket_path))
                self._connection = connection
                hello = await self._request({"op": OP_HELLO, "v": VERSION})
        except (OSError, TransportError) as exc:
            self._connection = None
            if connection is not None:
                connection.abort()
            raise TransportUnavailable(f"no bus is listening on {self.socket_path}: {exc}") from exc
        self._check_hello(hello)

    async def publish(self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None,
                      durable: bool = False, mandatory: bool = False) -> None:
        """Fire-and-forget unless durable or mandatory, which wait for the broker's confirm or refusal."""
        connection = self._live()
        confirm = durable or mandatory
        request_id = next(self._ids) if confirm else None
        try:
            frame = publish_frame(routing_key, body, dict(headers) if headers else None, durable, mandatory,
                                  request_id)
        except orjson.JSONEncodeError as exc:
            raise ContractError(f"headers cannot cross the bus socket: {exc}") from exc
        if len(frame) - 8 > self._max_frame:
            raise PublishRefused(f"message of {len(body)} bytes exceeds the socket's {self._max_frame} limit")
        if request_id is not None:
            await self._await_reply(connection, request_id, frame)
        else:
            connection.send(frame)
            if connection.write_paused:
                await self._bounded(connection.drain(), "publish")

    async def subscribe(self, spec: QueueSpec, callback: DeliveryCallback) -> _SocketSubscription:
        """Returns once the server has bound the queue; deliveries may already be flowing."""
        subscription = _SocketSubscription(self, self._live(), next(self._ids), spec, callback)
        await subscription.open()
        self._subscriptions.add(subscription)
        return subscription

    async def aclose(self) -> None:
        """Stop the workers, flush their settles, disconnect; the server requeues anything unsettled."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.stop()
        self._subscriptions.clear()
        if self._connection is not None:
            await self._connection.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- internals ----------------------------------------------------------------------------------------

    async def _request(self, header: dict[str, Any]) -> dict[str, Any]:
        connection = self._live()
        request_id = next(self._ids)
        header["id"] = request_id
        return await self._await_reply(connection, request_id, encode_frame(header))

    async def _await_reply(self, connection: _ClientConnection, request_id: int,
                           frame: bytes) -> dict[str, Any]:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        connection.pending[request_id] = waiter
        connection.send(frame)
        try:
            reply = await self._bounded(waiter, "request")
        finally:
            connection.pending.pop(request_id, None)
        if reply["op"] == OP_ERROR:
            raise _error_of(reply)
        return cast(dict[str, Any], reply)

    async def _bounded(self, awaitable: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self._request_timeout):
                return await awaitable
        except TimeoutError as exc:
            raise TransportUnavailable(
                f"the bus socket {self.socket_path} did not answer a {what} within {self._request_timeout}s"
            ) from exc

    def _check_hello(self, hello: dict[str, Any]) -> None:
        if hello.get("prefix") != self.prefix:
            assert self._connection is not None
            self._connection.abort()
            self._connection = None
            raise ConfigError(f"the bus on {self.socket_path} uses prefix {hello.get('prefix')!r}, "
                              f"not {self.prefix!r}")
        self._max_frame = int(hello.get("max_frame", DEFAULT_MAX_FRAME))

    def _live(self) -> _ClientConnection:
        if self._closed:
            raise TransportClosed("the socket transport is closed")
        if self._connection is None:
            raise TransportUnavailable("the socket transport is not started")
        if self._connection.closed:
            raise TransportUnavailable(f"lost the bus socket {self.socket_path}")
        return self._connection

    def _forget(self, subscription: _SocketSubscription) -> None:
        self._subscriptions.discard(subscription)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self._closed:
            log.warning("lost the bus socket %s: %s", self.socket_path, exc or "server closed the connection")


def _error_of(reply: dict[str, Any]) -> TransportError:
    message = str(reply.get("msg", "refused"))
    if reply.get("e") == "PublishRefused":
        return PublishRefused(message)
    return TransportError(f"the bus socket refused the request: {message}")
