"""The client side of one socket connection: replies to waiting requests, and remote subscriptions.

``SocketTransport`` (``socket_client``) owns one ``ClientConnection``; each subscription owns its worker tasks
and settles through the connection. Acks, the bulk of settles, are batched into one frame per loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, Protocol

from thatdam_bus.errors import TransportError, TransportUnavailable
from thatdam_bus.transports.base import (
    ACK,
    Delivery,
    DeliveryCallback,
    Fate,
    Outcome,
    QueueSpec,
    outcome_of_crash,
    settle,
)
from thatdam_bus.transports.mailbox import Mailbox, make_delivery
from thatdam_bus.transports.socket_protocol import (
    ABANDON,
    ACKS_AT,
    OP_CANCEL,
    OP_DELIVER,
    OP_ERROR,
    OP_OK,
    RELEASE,
    FramedProtocol,
    FrameError,
    acks_frame,
    settle_frame,
    subscribe_header,
)
from thatdam_bus.transports.workers import Workers, worker_count

TRUSTED_MAX_FRAME = 1 << 30
"""The server is the node itself (same user, 0600 socket); its deliveries are not size-limited like a client's
publishes, since an in-process publisher may send a body larger than the socket's frame limit."""


class SessionOwner(Protocol):
    """What the connection and subscriptions need from their transport."""

    socket_path: Path
    max_attempts: int | None

    async def _request(self, header: dict[str, Any]) -> dict[str, Any]: ...

    def _forget(self, subscription: SocketSubscription) -> None: ...

    def _connection_lost(self, exc: BaseException | None) -> None: ...


class ClientConnection(FramedProtocol):
    """The client end: routes deliveries to subscription inboxes and replies to waiting requests."""

    def __init__(self, owner: SessionOwner) -> None:
        super().__init__(max_frame=TRUSTED_MAX_FRAME, label=f"bus socket client {owner.socket_path}")
        self._owner = owner
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.subscriptions: dict[int, SocketSubscription] = {}
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


class SocketSubscription:
    """A remote consumer: the server pushes up to ``prefetch`` deliveries into ``inbox``; workers settle."""

    def __init__(self, owner: SessionOwner, connection: ClientConnection, sid: int, spec: QueueSpec,
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
        return f"<SocketSubscription {self.sid} queue={self._queue!r} inbox={len(self.inbox)}>"

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
        for _, tag in reversed(self.inbox.drain()):  # each goes back to the head: keep their order
            self._connection.send(settle_frame(tag, RELEASE, None))

    async def _work(self) -> None:
        inbox, connection, callback = self.inbox, self._connection, self._callback
        ready = inbox.get_nowait
        while not self._closed:
            delivery, tag = ready() or await inbox.get()
            try:
                outcome = await callback(delivery)
            except Exception as exc:
                outcome = outcome_of_crash(exc)
            except BaseException:
                connection.send(settle_frame(tag, ABANDON, None))
                raise
            if outcome is ACK:
                connection.ack(tag)
                continue
            if not isinstance(outcome, Outcome):
                outcome = Outcome(Fate.REQUEUE, f"subscriber returned {outcome!r}, not an Outcome")
            if self._owner.max_attempts is not None:  # the server's own rule, applied here to know the fate
                outcome = settle(outcome, delivery.attempt, self._owner.max_attempts)
            if outcome.fate is Fate.ACK:
                connection.ack(tag)
                continue
            connection.send(settle_frame(tag, outcome.fate.value, outcome.reason))
            if outcome.fate is Fate.DEAD_LETTER:
                outcome.parked()  # no reply comes: the server stores it as it reads the frame (see Outcome)
