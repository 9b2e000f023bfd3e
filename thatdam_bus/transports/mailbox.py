"""Two small hot-path pieces shared by the embedded broker and the socket client: a mailbox that workers pull
from, and a fast way to build ``Delivery`` objects (one per message per queue)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

from thatdam_bus.transports.base import Delivery

T = TypeVar("T")


def _slow_delivery(routing_key: str, body: bytes, headers: Mapping[str, Any], attempt: int, queue: str,
                   shared: dict[Any, Any] | None = None) -> Delivery:
    return Delivery(routing_key, body, headers, attempt, queue, shared)


def _fast_delivery(routing_key: str, body: bytes, headers: Mapping[str, Any], attempt: int, queue: str,
                   shared: dict[Any, Any] | None = None) -> Delivery:
    """Fill the frozen dataclass's ``__dict__`` directly: a third of the cost of its ``__init__``, which
    matters at one Delivery per message per queue. Equal to ``Delivery(...)`` (checked at import)."""
    delivery = _new(Delivery)
    fields = delivery.__dict__
    fields["routing_key"] = routing_key
    fields["body"] = body
    fields["headers"] = headers
    fields["attempt"] = attempt
    fields["queue"] = queue
    fields["shared"] = shared
    return delivery


class DeliveryMaker(Protocol):
    def __call__(self, routing_key: str, body: bytes, headers: Mapping[str, Any], attempt: int, queue: str,
                 shared: dict[Any, Any] | None = None) -> Delivery: ...


def _pick_delivery_maker() -> DeliveryMaker:
    """The fast path only if ``Delivery`` still keeps a plain ``__dict__`` with the same fields."""
    if hasattr(_new(Delivery), "__dict__"):
        with contextlib.suppress(Exception):
            memo: dict[Any, Any] = {}
            if vars(_fast_delivery("k", b"", {}, 1, "q", memo)) == vars(Delivery("k", b"", {}, 1, "q", memo)):
                return _fast_delivery
    return _slow_delivery


_new = object.__new__
make_delivery = _pick_delivery_maker()


class Mailbox(Generic[T]):
    """An unbounded FIFO with waiting getters and head insertion (asyncio.Queue cannot put at the head).

    A getter takes its item when it runs, not when it is woken, so several workers pulling from one mailbox
    start their callbacks in FIFO order, and a cancelled getter never loses an item. At most one getter is
    woken at a time; whoever takes an item wakes the next only if items remain. A burst of puts then costs
    one or two task wake-ups instead of one per item, while workers whose callbacks suspend still fan out.
    """

    __slots__ = ("_items", "_waiters", "_waking")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waking = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        self._items.append(item)
        if self._waiters and not self._waking:
            self._wake()

    def put_front(self, item: T) -> None:
        self._items.appendleft(item)
        if self._waiters and not self._waking:
            self._wake()

    def get_nowait(self) -> T | None:
        items = self._items
        if not items:
            return None
        item = items.popleft()
        if items and self._waiters and not self._waking:
            self._wake()
        return item

    def drain(self) -> list[T]:
        """Take everything at once (a queue being deleted, a subscription releasing its backlog)."""
        items = list(self._items)
        self._items.clear()
        return items

    async def get(self) -> T:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._forget(waiter)
                raise
            self._waking -= 1
        return self.get_nowait()  # type: ignore[return-value]  # not empty: checked above

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._waking += 1
                return

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        """A getter was cancelled: drop its waiter, and if it had been woken pass the wake-up on."""
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            self._waking -= 1
            if self._items and self._waiters and not self._waking:
                self._wake()
