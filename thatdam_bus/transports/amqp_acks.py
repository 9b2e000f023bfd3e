"""Coalesced acknowledgements for one consuming channel.

aio-pika's ``message.ack()`` writes one ``basic.ack`` frame per message, and aiormq turns every frame into
its own ``send`` system call: at a few thousand messages a second the acks alone cost as much CPU as the
rest of the consumer. ``AckWindow`` collects the acks of one loop iteration and sends, once, a
``basic.ack(multiple=True)`` for the highest tag below which every delivery is settled. A tag settled out of
order (its predecessor still in a handler) is acked on its own at the same flush, so a slow handler never
holds back its neighbours' credit; each tag is acknowledged exactly once either way.

Delivery tags are per channel and increase in delivery order; a window lives and dies with its channel.
A nack (requeue) is sent at once, and the tag leaves the window before any later multiple-ack is computed;
while a nack is still on its way to the socket, acks wait, so no multiple-ack can overtake it and cover it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiormq.abc import AbstractChannel
from pamqp import commands as spec

log = logging.getLogger("thatdam_bus.transports.amqp")


class AckWindow:
    """Outstanding delivery tags of one channel (in delivery order) and which of them are settled."""

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel
        self._outstanding: dict[int, bool] = {}
        self._flush: asyncio.Handle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._nacking = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._outstanding)

    def delivered(self, tag: int) -> None:
        self._outstanding[tag] = False

    def ack(self, tag: int) -> None:
        """Settle ``tag``; the ack leaves at the end of this loop iteration, coalesced with its neighbours."""
        if tag not in self._outstanding or self.closed:
            return
        self._outstanding[tag] = True
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)

    async def nack(self, tag: int) -> None:
        """Give ``tag`` back to the queue (requeue) now; best effort, the channel may be gone already."""
        if self._outstanding.pop(tag, None) is None or self.closed:
            return
        self._nacking += 1
        try:
            with contextlib.suppress(Exception):
                await self._channel.basic_nack(tag, requeue=True, wait=False)
        finally:
            self._nacking -= 1

    def flush(self) -> None:
        """Send the acks settled so far: one multiple-ack for the settled prefix, single acks past a gap."""
        self._flush = None
        if self._nacking and not self.closed:
            self._flush = asyncio.get_running_loop().call_soon(self.flush)
            return
        outstanding = self._outstanding
        highest = None
        for tag, settled in outstanding.items():
            if not settled:
                break
            highest = tag
        frames: list[spec.Basic.Ack] = []
        if highest is not None:
            for tag in list(outstanding):
                del outstanding[tag]
                if tag == highest:
                    break
            frames.append(spec.Basic.Ack(delivery_tag=highest, multiple=True))
        late = [tag for tag, settled in outstanding.items() if settled]
        for tag in late:
            del outstanding[tag]
            frames.append(spec.Basic.Ack(delivery_tag=tag))
        if frames and not self.closed:
            self._send(frames)

    def _send(self, frames: list[spec.Basic.Ack]) -> None:
        task = asyncio.get_running_loop().create_task(self._write(frames))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _write(self, frames: list[spec.Basic.Ack]) -> None:
        try:
            for frame in frames:
                await self._channel.basic_ack(frame.delivery_tag, multiple=frame.multiple, wait=False)
        except Exception as exc:  # the channel is gone: the broker redelivers what it did not get
            log.debug("could not send %d ack(s): %s: %s", len(frames), type(exc).__name__, exc)

    async def aclose(self) -> None:
        """Send what is settled and wait for it to be written; nothing is acked after this."""
        if self._flush is not None:
            self._flush.cancel()
        self.flush()
        self.closed = True
        if self._sending:
            await asyncio.wait(list(self._sending))
