"""The outbox on its own (unit tests, with a stub transport whose broker can be away): what is held, in which
order it leaves, what a full outbox says, and that a killed process loses nothing it had accepted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import orjson
import pytest

from tests.support import wait_until
from thatdam_bus.errors import OutboxFull, PublishRefused, TransportUnavailable
from thatdam_bus.events.frame import FrameReady
from thatdam_bus.events.node import NodeLeft
from thatdam_bus.node.journal import LEGACY_FILE, SoloJournal
from thatdam_bus.outbox import Outbox
from thatdam_bus.publisher import Bus
from thatdam_bus.transports.base import Capabilities, DeliveryCallback, QueueSpec, Subscription

ROOT = Path(__file__).resolve().parents[2]


class Broker:
    """A stub transport: ``connected`` and ``fail_after`` stand for an outage; ``sent`` is what got through."""

    capabilities = Capabilities("stub", cross_host=False, survives_restart=False, publisher_confirms=True)

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.refuse = False
        self.fail_after: int | None = None
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def publish(self, routing_key: str, body: bytes, *, headers: Mapping[str, Any] | None = None,
                      durable: bool = False, mandatory: bool = False) -> None:
        if self.refuse:
            raise PublishRefused(f"broker refused message for {routing_key!r}")
        if not self.connected or (self.fail_after is not None and len(self.sent) >= self.fail_after):
            self.connected = False
            raise TransportUnavailable(f"publish to {routing_key!r} failed, broker unavailable")
        self.sent.append((routing_key, body, dict(headers or {})))

    async def start(self) -> None:
        pass

    async def subscribe(self, spec: QueueSpec, callback: DeliveryCallback) -> Subscription:
        raise NotImplementedError("publish-only stub")

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def seqs(self) -> list[int]:
        return [orjson.loads(body)["data"]["seq"] for _, body, _ in self.sent]


def frame(seq: int) -> FrameReady:
    return FrameReady(node_id="n1", device="cam0", seq=seq, captured_at=datetime.now(UTC), width=8, height=8,
                      uri="file:///f.jpg", sha256=hashlib.sha256(b"").hexdigest(), size_bytes=0, keyframe=True)


async def publish(bus: Bus, *seqs: int) -> None:
    for seq in seqs:
        await bus.publish(frame(seq), "frame.n1.cam0.ready")


async def drained(bus: Bus, broker: Broker, count: int) -> None:
    """Run the bus's drain until ``count`` events went through and nothing is held."""
    assert bus.outbox is not None
    outbox = bus.outbox
    async with asyncio.TaskGroup() as group:
        drain = group.create_task(bus.drain())
        await wait_until(lambda: len(broker.sent) >= count and len(outbox) == 0, 10, f"{count} events sent")
        drain.cancel()


async def test_held_while_away_then_sent_in_order_and_direct_again(state_dir: Path) -> None:
    broker = Broker(connected=False)
    outbox = Outbox(state_dir)
    bus = Bus(broker, cluster="c", node_id="n1", outbox=outbox)
    await publish(bus, 0, 1, 2)
    assert (len(outbox), broker.sent) == (3, [])
    with pytest.raises(TransportUnavailable):  # a non-durable event (a heartbeat) is not held: it may be lost
        await bus.publish(NodeLeft(node_id="n1"), "node.n1.left")
    broker.connected = True
    await publish(bus, 3)  # the broker is back, but older events wait: this one queues behind them
    assert len(outbox) == 4 and broker.sent == []
    await drained(bus, broker, 4)
    await publish(bus, 4)
    assert broker.seqs() == [0, 1, 2, 3, 4]
    assert all(headers["ce-type"] == "thatdam.frame.ready.v1" for _, _, headers in broker.sent)
    assert not (state_dir / "outbox.sqlite").exists()


async def test_a_publish_that_fails_is_held_and_a_refusal_is_not(state_dir: Path) -> None:
    broker = Broker()
    broker.fail_after = 2
    outbox = Outbox(state_dir)
    bus = Bus(broker, cluster="c", node_id="n1", outbox=outbox)
    await publish(bus, 0, 1, 2, 3)
    assert broker.seqs() == [0, 1] and len(outbox) == 2
    broker.fail_after, broker.connected = None, True
    await drained(bus, broker, 4)
    assert broker.seqs() == [0, 1, 2, 3]
    broker.refuse = True
    with pytest.raises(PublishRefused, match="refused"):  # the broker said no: the producer's to handle
        await publish(bus, 4)
    broker.refuse, broker.connected = False, False
    with pytest.raises(TransportUnavailable):  # mandatory wants the broker's answer now: never held
        await bus.publish(frame(5), "frame.n1.cam0.ready", mandatory=True)
    assert len(outbox) == 0


async def test_a_drain_cut_short_keeps_the_rest_and_sends_each_confirmed_event_once(state_dir: Path) -> None:
    broker = Broker(connected=False)
    outbox = Outbox(state_dir)
    bus = Bus(broker, cluster="c", node_id="n1", outbox=outbox)
    await publish(bus, *range(6))
    broker.connected, broker.fail_after = True, 2
    with pytest.raises(TransportUnavailable):
        await outbox.flush(broker)
    assert broker.seqs() == [0, 1] and len(outbox) == 4
    broker.connected, broker.fail_after = True, None
    await drained(bus, broker, 6)
    assert broker.seqs() == list(range(6))


async def test_a_full_outbox_refuses_clearly_and_drops_nothing(state_dir: Path) -> None:
    broker = Broker(connected=False)
    outbox = Outbox(state_dir, max_events=3)
    bus = Bus(broker, cluster="c", node_id="n1", outbox=outbox)
    await publish(bus, 0, 1, 2)
    with pytest.raises(OutboxFull, match=r"outbox .* is full \(3 events") as caught:
        await publish(bus, 3)
    assert isinstance(caught.value, PublishRefused) and len(outbox) == 3
    broker.connected = True
    await drained(bus, broker, 3)
    assert broker.seqs() == [0, 1, 2]
    tight = Outbox(state_dir / "tight", max_bytes=2048)
    await tight.append("k", b"x" * 1500)
    with pytest.raises(OutboxFull, match="bytes"):
        await tight.append("k", b"x" * 1500)


KILLED_PRODUCER = """
import asyncio, os, signal, sys
from pathlib import Path
from tests.reliability.test_outbox import Broker, publish
from thatdam_bus.outbox import Outbox
from thatdam_bus.publisher import Bus

async def main() -> None:
    bus = Bus(Broker(connected=False), cluster="c", node_id="n1", outbox=Outbox(Path(sys.argv[1])))
    await publish(bus, *range(5))
    os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown: what was accepted must already be on disk

asyncio.run(main())
"""


async def test_held_events_survive_a_killed_process(state_dir: Path) -> None:
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", KILLED_PRODUCER, str(state_dir)],
                                     cwd=ROOT, capture_output=True, timeout=30)
    assert result.returncode == -9, result.stderr.decode()
    journal = SoloJournal(state_dir)  # what the restarted node opens
    assert len(journal) == 5
    broker = Broker()
    assert await journal.replay(broker) == 5
    assert broker.seqs() == list(range(5)) and not journal.path.exists()


async def test_held_events_leave_before_later_solo_ones_and_an_old_journal_is_adopted(state_dir: Path) -> None:
    legacy = orjson.dumps({"rk": "frame.n1.cam0.ready", "body": base64.b64encode(b'{"data":{"seq":0}}').decode()})
    (state_dir / LEGACY_FILE).write_bytes(legacy + b"\n{torn")
    cluster = Bus(Broker(connected=False), cluster="c", node_id="n1", outbox=Outbox(state_dir))
    journal = SoloJournal(state_dir)
    await publish(cluster, 1, 2)  # held by a cluster session during an outage ...
    solo = Bus(Broker(), cluster="c", node_id="n1", journal=journal)
    await publish(solo, 3)  # ... then the node fell back to solo and kept a copy of this one
    assert not (state_dir / LEGACY_FILE).exists() and len(journal) == 4
    joined = Broker()
    assert await journal.replay(joined) == 4
    assert joined.seqs() == [0, 1, 2, 3]
