"""Keyframes-only capture decodes only the keyframes (``skip_frame=nokey``), not every frame then drops most."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.frames.media import Clip, make_clip
from thatdam_bus.frames import FrameReader, parse_source


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    path = tmp_path_factory.mktemp("media") / "clip.mp4"
    return make_clip(path, seconds=2.0, size=(320, 240), fps=25, gop=10)


async def read_all(path: Path, *, keyframes_only: bool) -> tuple[list[tuple[int | None, bool]], int]:
    """(pts, keyframe) of every frame the reader hands over, and how many frames left the decoder."""
    reader = FrameReader(parse_source(str(path)), lambda _item: True, keyframes_only=keyframes_only)
    got = []
    async with reader:
        while (item := await reader.get()) is not None:
            got.append((item.pts, item.keyframe))
    return got, reader.stats.decoded


async def test_keyframes_only_decodes_nothing_but_the_keyframes(clip: Clip) -> None:
    everything, decoded_all = await read_all(clip.path, keyframes_only=False)
    keyframes, decoded_key = await read_all(clip.path, keyframes_only=True)
    assert decoded_all == clip.frames == 50 and clip.keyframes == 5
    assert decoded_key == clip.keyframes, "the decoder must skip non-key frames, not hand them over"
    assert keyframes == [frame for frame in everything if frame[1]]  # the same keyframes, same pts


async def test_fps_sampling_still_decodes_every_frame(clip: Clip) -> None:
    frames, decoded = await read_all(clip.path, keyframes_only=False)
    assert decoded == len(frames) == clip.frames
    assert sum(1 for _pts, key in frames if not key) == clip.frames - clip.keyframes
