"""Publishing numbered events across bus-tail's start, and checking what it printed: all, once, in order."""

from __future__ import annotations

import asyncio
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests.nodes import NodeProcess
from tests.support import queue_until, wait_until
from tests.tools.tail_process import TailProcess
from thatdam_bus.recorder.disk_ring import RECORDER_DIR
from thatdam_bus.recorder.ring_reader import RingReader
from thatdam_bus.transports.amqp import AmqpTransport
from thatdam_bus.transports.socket_client import SocketTransport

Publish = Callable[[str, bytes], Awaitable[None]]
KEY = "capture.obs.seq"  # a recorded channel (topics.Patterns.RECORDED)
PACE_S = 0.01
"""The pump's publishing rate (100/s): pacing a producer, not waiting for anything."""
LIVE = 5
"""Events published after bus-tail printed its first record that it must print too: proof it went live."""


def seq_body(seq: int, run: str) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": f"{run}-{seq}", "type": "test.observability.seq.v1",
                         "source": "thatdam://test/obs/pump", "time": datetime.now(UTC).isoformat(),
                         "data": {"seq": seq, "run": run}})


class Numbered:
    """Numbers events 0, 1, 2... for one test run, whichever process or transport publishes them."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]
        self.sent = 0

    async def publish(self, publish: Publish, count: int = 1) -> None:
        """Each number is taken before its publish starts, so no event numbered ``sent`` or above has left yet."""
        for _ in range(count):
            seq, self.sent = self.sent, self.sent + 1
            await publish(KEY, seq_body(seq, self.run))


@dataclass(frozen=True)
class Printed:
    """What bus-tail printed, and ``Numbered.sent`` when its first record came out (its replay had begun)."""

    seqs: list[int]
    attached: int

    @property
    def live(self) -> int:
        """Printed events published only after bus-tail attached: they crossed the seam into live delivery."""
        return sum(seq >= self.attached for seq in self.seqs)


async def history_then_live(env: dict[str, str], publish: Publish, numbered: Numbered, *, history: int = 20,
                            live: int = LIVE, args: tuple[str, ...] = ("--since", "1m")) -> Printed:
    """Publish ``history`` events, start ``bus-tail capture.obs.# ARGS`` while a pump keeps publishing (so the seam
    falls among them), read until ``live`` events published after its first record came out were printed too,
    stop the pump, read the rest. The caller compares ``seqs`` with the range it expects and checks ``live``:
    events published after spawning bus-tail may still be history to it, only those after its first record
    cannot be."""
    await numbered.publish(publish, history)
    tail = await TailProcess.start(env, "capture.obs.#", *args)
    stop = asyncio.Event()

    async def pump() -> None:
        while not stop.is_set():
            await numbered.publish(publish)
            await asyncio.sleep(PACE_S)

    pumping = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(60):
            first = await _seq(tail, numbered.run)
            printed = Printed([first], numbered.sent)
            while printed.live < live:
                printed.seqs.append(await _seq(tail, numbered.run))
            stop.set()
            await pumping
            while printed.seqs[-1] < numbered.sent - 1 and len(printed.seqs) < numbered.sent + 5:
                printed.seqs.append(await _seq(tail, numbered.run))
    finally:
        pumping.cancel()
        await tail.kill()
    return printed


async def _seq(tail: TailProcess, run: str) -> int:
    record = await tail.next_record(timeout=30)
    data = record["event"]["data"]
    assert data["run"] == run, f"an event of another run: {record}"
    return int(data["seq"])


async def stream_declared(url: str, name: str, timeout: float = 30.0) -> None:
    """Wait until the leader has declared the recorder stream (a passive declare succeeds)."""
    await queue_until(url, name, lambda _messages, _consumers: True, timeout)


async def has_consumer(url: str, name: str, timeout: float = 30.0) -> None:
    """Wait until the durable queue ``name`` exists and a node consumes it (a passive declare reports one)."""
    await queue_until(url, name, lambda _messages, consumers: consumers > 0, timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def last_then_live(env: dict[str, str], publish: Publish, numbered: Numbered) -> tuple[list[int], list[int]]:
    """``bus-tail --last 5`` once the events are recorded: the five it replays, then the three published after
    they were printed (live)."""
    tail = await TailProcess.start(env, "capture.obs.#", "--last", "5")
    try:
        last = [(await tail.next_record())["event"]["data"]["seq"] for _ in range(5)]
        await numbered.publish(publish, 3)
        live = [(await tail.next_record())["event"]["data"]["seq"] for _ in range(3)]
    finally:
        await tail.kill()
    return last, live


async def just_past_a_whole_second() -> None:
    """Wait until the wall clock has just passed a whole second (the resolution of a stream's timestamp offset)."""
    second = math.ceil(time.time())
    await wait_until(lambda: time.time() >= second, 2.0, "the next whole second")


async def window_passed(window_s: float) -> None:
    """Wait until the wall clock is more than ``window_s`` past now: whatever was stored before this call is
    older than ``--since {window_s}s`` for a bus-tail started afterwards."""
    start = time.time()
    await wait_until(lambda: time.time() > start + window_s, window_s + 5, f"{window_s}s of wall clock")


async def recorded(state_dir: Path, key: str, count: int, timeout: float = 10.0) -> None:
    """Wait until the solo node's ring holds ``count`` events on ``key``."""
    reader = RingReader(state_dir / RECORDER_DIR)
    await wait_until(lambda: sum(entry.routing_key == key for entry in reader.read(0, reader.end_offset())) >= count,
                     timeout, f"{count} events on {key} in the ring")


def solo(state_dir: Path) -> NodeProcess:
    return _started(NodeProcess(state_dir), "flight recorder")


def leader(state_dir: Path, env: dict[str, str]) -> NodeProcess:
    return _started(NodeProcess(state_dir, **env), "flight recorder: stream")


def _started(node: NodeProcess, needle: str) -> NodeProcess:
    """``node`` once its log shows ``needle``; killed if it never does (a failed start leaves no process)."""
    try:
        node.wait_for_log(needle)
    except BaseException:
        node.kill()
        raise
    return node


async def socket_publisher(state_dir: Path) -> tuple[SocketTransport, Publish]:
    transport = SocketTransport(state_dir / "bus.sock", prefix="thatdam")
    await transport.start()

    async def publish(key: str, body: bytes) -> None:
        await transport.publish(key, body)

    return transport, publish


async def amqp_publisher(url: str, prefix: str, *, confirmed: bool = False) -> tuple[AmqpTransport, Publish]:
    """A publisher on RabbitMQ; ``confirmed`` publishes durably, so each returns once the stream stored it."""
    transport = AmqpTransport(url, prefix=prefix)
    await transport.start()

    async def publish(key: str, body: bytes) -> None:
        await transport.publish(key, body, durable=confirmed)

    return transport, publish
