"""Which decoded frames become JPEGs: keyframes only, or N per second of *presentation time*.

Why presentation time and not the wall clock: a file decodes far faster than real time, and a live source
delivers in bursts after a stall; counting by pts gives the same frames for the same input, whatever the
machine's speed, so tests are exact and a replayed file yields the same thumbnails as the live run did.
The sampler is pure (no clock, no I/O), so the decode thread can call it on every frame for almost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_FPS = 240.0


@dataclass(frozen=True, slots=True)
class Sampling:
    """A sampling policy: ``fps=None`` keeps keyframes only (as ``CaptureStartIntent.fps`` does)."""

    fps: float | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and not (0 < self.fps <= MAX_FPS):
            raise ValueError(f"sampling fps must be in (0, {MAX_FPS:g}], got {self.fps!r}")

    @classmethod
    def keyframes(cls) -> Sampling:
        return cls(None)

    @classmethod
    def per_second(cls, fps: float) -> Sampling:
        return cls(float(fps))

    def __str__(self) -> str:
        return "keyframes" if self.fps is None else f"{self.fps:g} fps"


class Sampler:
    """Stateful decision over one stream: ``accept(seconds, keyframe)`` is called for every decoded frame.

    In fps mode, time is cut into slots of ``1/fps`` seconds and the first frame of each new slot is kept.
    Slots (not "last kept + interval") keep the long-run rate exact under pts jitter, and never keep two
    frames in one slot. A jump back of more than one second (a looped file, a restarted stream) resets it.
    """

    __slots__ = ("_last_slot", "sampling")

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self._last_slot: int | None = None

    def accept(self, seconds: float, keyframe: bool) -> bool:
        fps = self.sampling.fps
        if fps is None:
            return keyframe
        slot = math.floor(seconds * fps + 1e-9)
        if self._last_slot is not None and slot < self._last_slot - fps:
            self._last_slot = None
        if self._last_slot is None or slot > self._last_slot:
            self._last_slot = slot
            return True
        return False

    def __repr__(self) -> str:
        return f"<Sampler {self.sampling} last_slot={self._last_slot}>"
