"""Serves an embedded broker on a local Unix socket, so CLIs and scripts on the same machine can use the bus.

The socket file is created owner-only (chmod 0600 between bind and listen, so there is no window in which
another user can connect). Each connection owns its subscriptions: when it goes away they are cancelled and
every delivery it had not settled goes back to the head of its durable queue, so nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from thatdam_bus.errors import PublishRefused
from thatdam_bus.transports.base import Delivery, Fate, Outcome, QueueKind, QueueSpec, Source
from thatdam_bus.transports.embedded_broker import Broker, MessageQueue
from thatdam_bus.transports.mailbox import make_delivery
from thatdam_bus.transports.socket_path import bind_private_socket, claim_socket_path
from thatdam_bus.transports.socket_protocol import (
    ABANDON,
    OP_CANCEL,
    OP_HELLO,
    OP_PUBLISH,
    OP_SETTLE,
    OP_SUBSCRIBE,
    RELEASE,
    VERSION,
    FramedProtocol,
    FrameError,
    deliver_frame,
    error_frame,
    reply_frame,
)

log = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0
CROWD_CHECK_S = 0.001
"""While a publisher's target queue is past its high-water mark, its connection is not read; checked this often."""
CROWD_PATIENCE_S = 0.05
"""How long a crowded queue may make no progress before the publisher is read again (and the queue's own
full-queue rule applies): a queue nobody consumes must not stall its publishers for ever."""


class _RemoteConsumer:
    """One client subscription: a pump task moving messages from a broker queue to the socket, never more
    than ``prefetch`` unsettled at a time (credit comes back with each settle frame)."""

    def __init__(self, connection: ServerConnection, sid: int, queue: MessageQueue, spec: QueueSpec) -> None:
        self.connection = connection
        self.sid = sid
        self.queue = queue
        self.spec = spec
        self.inflight = 0
        self._credit: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def credit_returned(self) -> None:
        self.inflight -= 1
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)

    async def pump(self) -> None:
        queue, connection, prefetch = self.queue, self.connection, self.spec.prefetch
        while True:
            while self.inflight >= prefetch:
                self._credit = asyncio.get_running_loop().create_future()
                await self._credit
            batch = [await queue.get()]
            room = prefetch - self.inflight - 1
            while room > 0 and (more := queue.get_nowait()) is not None:
                batch.append(more)
                room -= 1
            connection.deliver(self, batch)
            await connection.drain()


class ServerConnection(FramedProtocol):
    """One client of the socket: its publishes, its subscriptions' pumps, and its unsettled deliveries."""

    couple_flow = True

    def __init__(self, server: SocketServer) -> None:
        super().__init__(max_frame=server.max_frame, label=f"bus socket {server.path}")
        self._server = server
        self._broker = server.broker
        self._consumers: dict[int, _RemoteConsumer] = {}
        self._unacked: dict[int, tuple[_RemoteConsumer, Delivery]] = {}
        self._tags = itertools.count(1)
        self._crowd: tuple[str, int, float] | None = None
        """(routing key, depth at the last check, when it last shrank) while reading is held for a crowd."""
        self._handlers = {OP_HELLO: self._hello, OP_PUBLISH: self._publish, OP_SUBSCRIBE: self._subscribe,
                          OP_SETTLE: self._settle, OP_CANCEL: self._cancel}

    def frame_received(self, header: dict[str, Any], body: bytes) -> None:
        handler = self._handlers.get(header["op"])
        if handler is None:
            raise FrameError(f"unknown op {header['op']!r}")
        handler(header, body)

    def deliver(self, consumer: _RemoteConsumer, batch: list[Delivery]) -> None:
        """Record each message as unacked under a fresh tag, then send it. A message whose headers cannot
        be encoded (an in-process publisher may put anything there) is dead-lettered, not left to stall."""
        if self.closed:
            for delivery in reversed(batch):
                self._broker.release(consumer.queue, delivery, redelivered=False)
            return
        for delivery in batch:
            tag = next(self._tags)
            try:
                frame = deliver_frame(consumer.sid, tag, delivery)
            except TypeError as exc:  # orjson.JSONEncodeError
                self._broker.dead_letter(_encodable(delivery), f"headers cannot cross the bus socket: {exc}")
                continue
            consumer.inflight += 1
            self._unacked[tag] = (consumer, delivery)
            self.send(frame)

    def on_close(self, exc: BaseException | None) -> None:
        """Cancel this client's pumps, requeue what it held unsettled, delete its ephemeral queues."""
        for consumer in self._consumers.values():
            self._stop(consumer)
        self._consumers.clear()
        for consumer, delivery in reversed(self._unacked.values()):  # back to the head in their order
            self._broker.release(consumer.queue, delivery)
        self._unacked.clear()
        self._server.forget(self)
        log.debug("%s: client gone (%s)", self.label, exc or "closed")

    # -- operations ---------------------------------------------------------------------------------------

    def _hello(self, header: dict[str, Any], _body: bytes) -> None:
        self.send(reply_frame(header["id"], v=VERSION, prefix=self._broker.prefix, max_frame=self.max_frame,
                              ma=self._broker.max_attempts))

    def _publish(self, header: dict[str, Any], body: bytes) -> None:
        key, headers, request_id = header["k"], header.get("h"), header.get("id")
        if not isinstance(key, str) or not (headers is None or isinstance(headers, dict)):
            raise FrameError("publish needs a string routing key and object headers")
        try:
            depth = self._broker.publish(key, body, headers, bool(header.get("d")), bool(header.get("m")))
        except PublishRefused as exc:
            if request_id is not None:
                self.send(error_frame(request_id, exc))
            return
        if request_id is not None:
            self.send(reply_frame(request_id))
        if depth > self._broker.high_water:
            self._let_consumers_run(key)

    def _subscribe(self, header: dict[str, Any], _body: bytes) -> None:
        request_id, sid = header["id"], header["s"]
        try:
            spec = _spec_of(header)
            if sid in self._consumers:
                raise ValueError(f"subscription id {sid} is already in use on this connection")
        except (ValueError, TypeError) as exc:
            self.send(error_frame(request_id, exc))
            return
        consumer = _RemoteConsumer(self, sid, self._broker.declare(spec), spec)
        self._consumers[sid] = consumer
        self.send(reply_frame(request_id, q=consumer.queue.name))
        consumer.task = self._server.spawn(consumer.pump(), f"bus-socket-pump:{consumer.queue.name}")

    def _settle(self, header: dict[str, Any], _body: bytes) -> None:
        if type(header["t"]) is list and header["f"] == Fate.ACK:
            self._ack_many(header["t"])
            return
        fate, reason = header["f"], header.get("r")
        reason = reason if isinstance(reason, str) else None
        outcome = None if fate in (RELEASE, ABANDON) else Outcome(Fate(fate), reason)
        entry = self._unacked.pop(header["t"], None)
        if entry is None:
            return  # settled twice, or the subscription's queue is gone: nothing left to decide
        consumer, delivery = entry
        if outcome is None:
            self._broker.release(consumer.queue, delivery, redelivered=fate == ABANDON)
        else:
            self._broker.finish(consumer.queue, delivery, outcome)
        consumer.credit_returned()

    def _ack_many(self, tags: list[int]) -> None:
        """The common case, batched by the client: acks only return credit."""
        unacked = self._unacked
        for tag in tags:
            entry = unacked.pop(tag, None)
            if entry is not None:
                entry[0].credit_returned()

    def _cancel(self, header: dict[str, Any], _body: bytes) -> None:
        consumer = self._consumers.pop(header["s"], None)
        if consumer is not None:
            self._stop(consumer)
        self.send(reply_frame(header["id"]))

    def _stop(self, consumer: _RemoteConsumer) -> None:
        """Stop the pump at once (it is suspended, so it sends nothing more); unacked tags stay settleable."""
        if consumer.task is not None:
            consumer.task.cancel()
        if consumer.spec.kind is QueueKind.EPHEMERAL:
            self._broker.delete(consumer.queue)

    def _let_consumers_run(self, routing_key: str) -> None:
        """A target queue is filling: stop reading this publisher until its queues are back under their
        high-water marks, so a remote consumer catches up instead of the queue dropping messages; a queue
        that stops shrinking for ``CROWD_PATIENCE_S`` releases the publisher (nobody may be consuming it)."""
        if self._crowd is not None:
            return
        self.hold_reading("crowded")
        self._crowd = (routing_key, self._depth(routing_key), time.monotonic())
        asyncio.get_running_loop().call_soon(self._check_crowd)

    def _depth(self, routing_key: str) -> int:
        """How far past its high-water mark the most crowded target queue is (0: none is)."""
        high_water = self._broker.high_water
        return max([len(q) - high_water for q in self._broker.route(Source.EVENTS, routing_key)], default=0)

    def _check_crowd(self) -> None:
        if self._crowd is None or self.closed:
            return
        routing_key, depth, shrank_at = self._crowd
        now, current = time.monotonic(), self._depth(routing_key)
        if current <= 0 or (current >= depth and now - shrank_at > CROWD_PATIENCE_S):
            self._crowd = None
            self.release_reading("crowded")
            return
        self._crowd = (routing_key, current, now if current < depth else shrank_at)
        asyncio.get_running_loop().call_later(CROWD_CHECK_S, self._check_crowd)


def _encodable(delivery: Delivery) -> Delivery:
    """The same message with every header the socket cannot carry replaced by its repr, so its dead-letter
    record can reach a socket client (and cannot loop back here)."""
    headers: dict[str, Any] = {}
    for key, value in delivery.headers.items():
        try:
            orjson.dumps(value)
            headers[str(key)] = value
        except TypeError:
            headers[str(key)] = repr(value)
    return make_delivery(delivery.routing_key, delivery.body, headers, delivery.attempt, delivery.queue)


def _spec_of(header: dict[str, Any]) -> QueueSpec:
    patterns = header["p"]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ValueError("patterns must be a list of strings")
    return QueueSpec(patterns=tuple(patterns), kind=QueueKind(header["kind"]), name=header.get("name"),
                     prefetch=int(header["pf"]), source=Source(header["src"]))


class SocketServer:
    """The listening socket, its connections and their pump tasks; everything here is owned and closed."""

    def __init__(self, broker: Broker, path: Path, *, max_frame: int) -> None:
        self.broker = broker
        self.path = path
        self.max_frame = max_frame
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inode: int | None = None

    def __repr__(self) -> str:
        return f"<SocketServer {self.path} clients={len(self._connections)} pumps={len(self._tasks)}>"

    async def start(self) -> None:
        await claim_socket_path(self.path)
        sock = bind_private_socket(self.path)
        try:
            self._inode = os.stat(self.path).st_ino
            self._server = await asyncio.get_running_loop().create_unix_server(self._connect, sock=sock)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("serving the embedded bus on %s", self.path)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def forget(self, connection: ServerConnection) -> None:
        self._connections.discard(connection)

    async def aclose(self) -> None:
        """Stop listening, drop every client (requeueing what they held), wait for the pumps, unlink."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._tasks:
            for task in self._tasks:
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT)
        if self._server is not None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self._server.wait_closed()
            except TimeoutError:
                log.warning("bus socket %s: server did not close within %.1fs", self.path, STOP_TIMEOUT)
            self._server = None
        self._unlink()

    def _connect(self) -> ServerConnection:
        connection = ServerConnection(self)
        self._connections.add(connection)
        return connection

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bus socket %s: pump died", self.path, exc_info=task.exception())

    def _unlink(self) -> None:
        """Remove the socket file only if it is still ours (a successor may have claimed the path)."""
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._inode = None
