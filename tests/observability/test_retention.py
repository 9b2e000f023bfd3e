"""The RabbitMQ recorder never grows past its configured bytes.

We configure 1.2 MB with 200 kB segments, publish about four times that through the exchange, and measure the
stream's own files (segments and indexes, in RabbitMQ's stream directory) every ten publishes: the largest
total seen must stay within the 1.2 MB. It must also still hold a useful share of them (retention must not
simply delete everything), and what a reader can replay must be the newest events, without a hole. The
broker's files must be on this machine (the tests' RabbitMQ is); where they are not, the test is skipped, and
on CI that is a failure. (The solo ring's byte bound is measured on its files in ``test_disk_ring``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from pathlib import Path

import pytest

from tests.conftest import ON_CI, delete_amqp_prefix
from thatdam_bus.recorder.amqp_stream import StreamSource, declare_recorder_stream, stream_arguments, stream_name
from thatdam_bus.transports.amqp import AmqpTransport

MAX_BYTES = 1_200_000
SEGMENT_BYTES = 200_000
BODY_BYTES = 400
EVENTS = 12_000
SAMPLE_EVERY = 10
STREAM_DATA_DIRS = os.environ.get("THATDAM_TEST_STREAM_DATA_DIRS", "/var/lib/rabbitmq/mnesia/*/stream")
"""Where RabbitMQ keeps its streams here (a glob): ``application:get_env(osiris, data_dir)`` on the broker."""


def stream_directory(prefix: str) -> Path:
    """The directory of ``<prefix>.recorder`` (RabbitMQ names it ``<vhost>_<queue>_<timestamp>``, dots as
    underscores; the prefix is unique to the test)."""
    queue = stream_name(prefix).replace(".", "_")
    found = glob.glob(os.path.join(STREAM_DATA_DIRS, f"*_{queue}_*"))
    if len(found) != 1:
        message = f"the stream's directory is not on this machine ({STREAM_DATA_DIRS}: {found})"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[0])


def stored_bytes(directory: Path) -> int:
    """Bytes of every file of the stream now (retention may delete one while we look)."""
    total = 0
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):
            total += entry.stat().st_size
    return total


async def replayable(url: str, prefix: str) -> list[int]:
    """The sequence numbers a reader can replay now, from the stream's first offset to a fresh seam."""
    async with StreamSource.open(url, prefix) as source:
        assert source is not None
        end = await source.end()
        async with contextlib.aclosing(source.history("first", end)) as entries:
            return [int(entry.body.split(b",")[0].split(b":")[1]) async for entry in entries]


async def test_the_stream_never_holds_more_than_max_bytes(rabbitmq: str, prefix: str) -> None:
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    try:
        await transport.start()  # declares the exchange the stream binds to
        await declare_recorder_stream(rabbitmq, prefix, max_age_s=3600, max_bytes=MAX_BYTES,
                                      segment_bytes=SEGMENT_BYTES)
        directory = stream_directory(prefix)
        padding = "p" * BODY_BYTES
        peak = 0
        for seq in range(EVENTS):
            body = f"{{\"seq\": {seq}, \"pad\": \"{padding}\"}}".encode()
            await transport.publish("capture.obs.seq", body, durable=False)  # one class: one channel, one order
            if seq % SAMPLE_EVERY == 0:
                peak = max(peak, stored_bytes(directory))
        async with asyncio.timeout(10):  # the last transient publishes may still be on their way
            seqs = await replayable(rabbitmq, prefix)
            while seqs[-1:] != [EVENTS - 1]:
                await asyncio.sleep(0.05)  # each look appends a seam marker: not in a tight loop
                seqs = await replayable(rabbitmq, prefix)
        written = EVENTS * (BODY_BYTES + 20)
        assert written > 4 * MAX_BYTES, "the test must write well past the bound"
        assert peak <= MAX_BYTES, f"the stream's files reached {peak} bytes"
        stored = stored_bytes(directory)
        # Retention deletes whole segments (each a little over 200 kB) down to 800 kB: at least ~580 kB stay.
        assert stored >= MAX_BYTES // 4, f"retention keeps what fits, not nothing: {stored} bytes stored"
        assert 0 < len(seqs) < EVENTS
        assert seqs == list(range(seqs[0], EVENTS)), "the newest are kept, without a hole"
    finally:
        await transport.aclose()
        await delete_amqp_prefix(rabbitmq, prefix, [stream_name(prefix)])


def test_retention_leaves_two_segments_of_the_budget_and_segments_fit_four_times() -> None:
    sized = stream_arguments(max_age_s=60, max_bytes=MAX_BYTES, segment_bytes=SEGMENT_BYTES)
    assert sized["x-max-length-bytes"] == MAX_BYTES - 2 * SEGMENT_BYTES
    assert sized["x-stream-max-segment-size-bytes"] == SEGMENT_BYTES
    clamped = stream_arguments(max_age_s=60, max_bytes=MAX_BYTES, segment_bytes=MAX_BYTES)
    assert clamped["x-stream-max-segment-size-bytes"] == MAX_BYTES // 4
    assert clamped["x-max-length-bytes"] == MAX_BYTES // 2
