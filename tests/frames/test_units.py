"""The pure parts of the pipeline: source parsing, sampling, thumbnail geometry, backoff."""

from __future__ import annotations

from fractions import Fraction

import pytest

from thatdam_bus.errors import ConfigError
from thatdam_bus.frames import Backoff, Sampler, Sampling, SourceKind, parse_source, thumbnail_size


@pytest.mark.parametrize(("size", "target", "expected"), [
    ((1280, 720), 320, (320, 180)),
    ((1920, 1080), 320, (320, 180)),
    ((640, 480), 321, (320, 240)),
    ((320, 240), 1000, (320, 240)),
    ((333, 101), 1000, (332, 100)),
    ((1080, 1920), 320, (320, 568)),
    ((4000, 10), 320, (320, 2)),
])
def test_thumbnail_keeps_aspect_with_even_sides(size: tuple[int, int], target: int,
                                                expected: tuple[int, int]) -> None:
    assert thumbnail_size(*size, target) == expected


def test_keyframe_sampling_keeps_exactly_the_keyframes() -> None:
    sampler = Sampler(Sampling.keyframes())
    flags = [i % 10 == 0 for i in range(50)]
    assert [sampler.accept(i / 25, key) for i, key in enumerate(flags)] == flags


def test_fps_sampling_keeps_the_first_frame_of_each_slot() -> None:
    sampler = Sampler(Sampling.per_second(5))
    kept = [i for i in range(90) if sampler.accept(i / 30, False)]
    assert kept == list(range(0, 90, 6))


def test_fps_above_the_source_rate_keeps_every_frame_and_jitter_never_doubles() -> None:
    sampler = Sampler(Sampling.per_second(60))
    assert all(sampler.accept(i / 25, False) for i in range(25))
    jittery = Sampler(Sampling.per_second(10))
    times = [0.0, 0.099, 0.101, 0.1999, 0.2001, 0.25]
    assert [jittery.accept(t, False) for t in times] == [True, False, True, False, True, False]


def test_a_jump_back_in_time_restarts_sampling() -> None:
    sampler = Sampler(Sampling.per_second(1))
    assert [sampler.accept(t, False) for t in (10.0, 10.5, 9.9, 0.0, 0.5, 1.0)] == \
        [True, False, False, True, False, True]


def test_sampling_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Sampling.per_second(0)
    assert str(Sampling.keyframes()) == "keyframes" and str(Sampling.per_second(2.5)) == "2.5 fps"


def test_sources_are_classified() -> None:
    device = parse_source("/dev/video0")
    assert (device.kind, device.format, device.live) == (SourceKind.DEVICE, "v4l2", True)
    rtsp = parse_source("rtsp://cam.local/stream", timeout_s=3)
    assert (rtsp.kind, rtsp.timeout_s, rtsp.options["rtsp_transport"]) == (SourceKind.URL, 3, "tcp")
    assert parse_source("https://example.org/a.m3u8").kind is SourceKind.URL
    clip = parse_source("file:///media/my%20clip.mp4")
    assert (clip.kind, clip.target, clip.live) == (SourceKind.FILE, "/media/my clip.mp4", False)
    assert parse_source("clips/a.mkv").target == "clips/a.mkv"


def test_test_patterns_parse_to_lavfi_graphs() -> None:
    spec = parse_source("test://bars?size=640x360&rate=25")
    assert (spec.kind, spec.format) == (SourceKind.TEST, "lavfi")
    assert spec.target == "smptebars=size=640x360:rate=25"
    assert spec.realtime and spec.live and spec.size == (640, 360) and spec.rate == 25
    default = parse_source("test://")
    assert default.target == "testsrc2=size=1280x720:rate=30"
    ntsc = parse_source("test://testsrc?rate=30000/1001&realtime=0")
    assert ntsc.rate == Fraction(30000, 1001) and not ntsc.realtime


@pytest.mark.parametrize("text", ["", "  ", "test://nope", "test://bars?size=big", "test://bars?rate=0",
                                  "test://bars?size=8x8", "test://bars?engine=gpu"])
def test_bad_sources_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_source(text)


def test_backoff_grows_then_caps_and_jitter_only_shortens() -> None:
    backoff = Backoff(base_s=0.5, cap_s=8.0, jitter=0.25)
    assert [backoff.delay(n, 0.0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert backoff.delay(3, 1.0) == 1.5 and backoff.delay(10_000, 0.5) == 7.0
    with pytest.raises(ValueError):
        Backoff(base_s=2, cap_s=1)
