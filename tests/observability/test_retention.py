"""The recorder never grows past its configured bytes.

RabbitMQ: retention drops whole segments, evaluated when a segment rolls over. We configure 60 kB with 6 kB
segments, publish about 1.3 MB through the exchange, and measure what a reader can still replay from the
stream's first offset up to a seam marker: each message costs at least its body in the stream, so the replayable
count times the body size bounds the committed size, which must stay under max bytes plus one segment (the
active one). The replayable messages must be the newest ones, contiguous. (The solo ring's own byte bound is
measured on its files in ``test_disk_ring``.)
"""

from __future__ import annotations

import contextlib

from tests.conftest import delete_amqp_prefix
from tests.observability.support import Numbered
from thatdam_bus.recorder.amqp_stream import StreamSource, declare_recorder_stream, stream_name
from thatdam_bus.transports.amqp import AmqpTransport

MAX_BYTES = 60_000
SEGMENT_BYTES = 6_000
BODY_BYTES = 400


async def test_the_stream_keeps_at_most_max_bytes_plus_one_segment(rabbitmq: str, prefix: str) -> None:
    transport = AmqpTransport(rabbitmq, prefix=prefix)
    try:
        await transport.start()  # declares the exchange the stream binds to
        await declare_recorder_stream(rabbitmq, prefix, max_age_s=3600, max_bytes=MAX_BYTES,
                                      segment_bytes=SEGMENT_BYTES)
        numbered = Numbered()
        padding = "p" * BODY_BYTES
        for seq in range(3_000):
            body = f"{{\"seq\": {seq}, \"pad\": \"{padding}\"}}".encode()
            await transport.publish("capture.obs.seq", body, durable=seq % 100 == 0)
            numbered.sent += 1
        async with StreamSource.open(rabbitmq, prefix) as source:
            assert source is not None
            end = await source.end()
            kept = []
            async with contextlib.aclosing(source.history("first", end)) as entries:
                async for entry in entries:
                    kept.append(entry)
        seqs = [int(entry.body.split(b",")[0].split(b":")[1]) for entry in kept]
        committed = sum(len(entry.body) for entry in kept)
        assert 0 < len(kept) < 3_000
        assert committed <= MAX_BYTES + SEGMENT_BYTES, f"{len(kept)} messages, {committed} bytes replayable"
        assert seqs == list(range(seqs[0], 3_000)), "the newest are kept, without a hole"
    finally:
        await transport.aclose()
        await delete_amqp_prefix(rabbitmq, prefix, [stream_name(prefix)])
