"""Durations as people write them: ``90`` or ``90s``, ``10m``, ``24h``, ``7d`` (also RabbitMQ's ``7D``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdDwW]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "D": 86_400, "w": 604_800, "W": 604_800}


def parse_duration(text: str | float) -> float:
    """Seconds in ``text``; ``ValueError`` naming the accepted forms otherwise."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a duration: write e.g. 90, 90s, 10m, 24h or 7d")
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {text!r}")
    return seconds


def rabbitmq_age(seconds: float) -> str:
    """``x-max-age`` syntax (whole seconds: ``600s``)."""
    return f"{max(1, round(seconds))}s"
