"""The ``Transport`` contract over the embedded broker's local Unix socket, for CLIs and scripts on the node.

Publishes and settles are coalesced into one write per loop iteration; confirmed (durable or mandatory)
publishes wait for the server's reply, so ``PublishRefused`` crosses the socket. Callbacks run in worker tasks
owned by this transport; a crash becomes a requeue and the server applies its own ``max_attempts``.
"""

from __future__ import annotations

import asyncio
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
from thatdam_bus.transports.base import Capabilities, DeliveryCallback, QueueSpec
from thatdam_bus.transports.socket_protocol import (
    DEFAULT_MAX_FRAME,
    OP_ERROR,
    OP_HELLO,
    VERSION,
    encode_frame,
    publish_frame,
)
from thatdam_bus.transports.socket_session import ClientConnection, SocketSubscription

log = logging.getLogger(__name__)


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
        self._connection: ClientConnection | None = None
        self._max_frame = DEFAULT_MAX_FRAME
        self.max_attempts: int | None = None
        """The server's bound on attempts (from its hello): a requeue on the last one is a dead letter."""
        self._ids = itertools.count(1)
        self._subscriptions: set[SocketSubscription] = set()
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
        connection: ClientConnection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_unix_connection(
                    lambda: ClientConnection(self), str(self.socket_path))
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

    async def subscribe(self, spec: QueueSpec, callback: DeliveryCallback) -> SocketSubscription:
        """Returns once the server has bound the queue; deliveries may already be flowing."""
        subscription = SocketSubscription(self, self._live(), next(self._ids), spec, callback)
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

    async def _await_reply(self, connection: ClientConnection, request_id: int,
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
        attempts = hello.get("ma")
        self.max_attempts = attempts if type(attempts) is int and attempts >= 1 else None

    def _live(self) -> ClientConnection:
        if self._closed:
            raise TransportClosed("the socket transport is closed")
        if self._connection is None:
            raise TransportUnavailable("the socket transport is not started")
        if self._connection.closed:
            raise TransportUnavailable(f"lost the bus socket {self.socket_path}")
        return self._connection

    def _forget(self, subscription: SocketSubscription) -> None:
        self._subscriptions.discard(subscription)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self._closed:
            log.warning("lost the bus socket %s: %s", self.socket_path, exc or "server closed the connection")


def _error_of(reply: dict[str, Any]) -> TransportError:
    message = str(reply.get("msg", "refused"))
    if reply.get("e") == "PublishRefused":
        return PublishRefused(message)
    return TransportError(f"the bus socket refused the request: {message}")
