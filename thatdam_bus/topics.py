"""Routing keys: the one place that builds them, and the one pure matcher for topic bindings.

AMQP topic semantics: words are separated by ``.``; in a binding pattern ``*`` matches exactly one word and
``#`` matches zero or more words. Zero-word ``#`` is the case FastStream's in-memory matcher gets wrong
(``a.#`` must match ``a``, ``#.b`` must match ``b``); this matcher is property-tested against real RabbitMQ.
"""

from __future__ import annotations

import re
from functools import lru_cache

_WORD = re.compile(r"^[A-Za-z0-9_\-]+$")


def _word(value: str, what: str) -> str:
    """Validate one routing-key word: no dots, no wildcards, not empty."""
    if not _WORD.match(value):
        raise ValueError(f"{what} {value!r} is not a routing-key word (letters, digits, '_' or '-')")
    return value


def _words(text: str) -> tuple[str, ...]:
    """RabbitMQ splits on '.', and an empty key or pattern is zero words (not one empty word)."""
    return tuple(text.split(".")) if text else ()


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> tuple[str, ...]:
    return _words(pattern)


def topic_matches(pattern: str, routing_key: str) -> bool:
    """True when ``routing_key`` is routed by a topic binding ``pattern`` (RabbitMQ semantics)."""
    return _match(_compiled(pattern), 0, _words(routing_key), 0)


def _match(pat: tuple[str, ...], i: int, key: tuple[str, ...], j: int) -> bool:
    while i < len(pat):
        word = pat[i]
        if word == "#":
            # Collapse runs of '#'; then try every split point (zero or more words).
            while i + 1 < len(pat) and pat[i + 1] == "#":
                i += 1
            if i + 1 == len(pat):
                return True
            return any(_match(pat, i + 1, key, k) for k in range(j, len(key) + 1))
        if j >= len(key) or (word != "*" and word != key[j]):
            return False
        i += 1
        j += 1
    return j == len(key)


# -- builders: every routing key in the system comes from one of these -------------------------------------

LEADER_ELECTED = "cluster.leader.elected"
LEADER_RESIGNED = "cluster.leader.resigned"
LEADER_LOST = "cluster.leader.lost"


def node_heartbeat(node_id: str) -> str:
    return f"node.{_word(node_id, 'node id')}.heartbeat"


def node_membership(node_id: str, change: str) -> str:
    """``node.<id>.joined|left|lost|role``."""
    if change not in {"joined", "left", "lost", "role"}:
        raise ValueError(f"unknown membership change {change!r}")
    return f"node.{_word(node_id, 'node id')}.{change}"


def frame_ready(node_id: str, device: str) -> str:
    return f"frame.{_word(node_id, 'node id')}.{_word(device, 'device')}.ready"


def frame_indexed(node_id: str, device: str) -> str:
    """``frame.<node>.<device>.indexed``: an indexer recorded a frame of that camera."""
    return f"frame.{_word(node_id, 'node id')}.{_word(device, 'device')}.indexed"


def frame_latest(node_id: str, device: str) -> str:
    """``frame.<node>.<device>.latest``: the proxy's coalesced relay of the newest frame of a camera."""
    return f"frame.{_word(node_id, 'node id')}.{_word(device, 'device')}.latest"


def capture_state(node_id: str, device: str, state: str) -> str:
    """``capture.<node>.<device>.started|stopped|failed``."""
    if state not in {"started", "stopped", "failed"}:
        raise ValueError(f"unknown capture state {state!r}")
    return f"capture.{_word(node_id, 'node id')}.{_word(device, 'device')}.{state}"


def intent(target: str, verb: str) -> str:
    """``intent.<target>.<verb>``, e.g. ``intent.capture.start``."""
    return f"intent.{_word(target, 'intent target')}.{_word(verb, 'intent verb')}"


def intent_result(intent_id: str) -> str:
    return f"intent.result.{_word(intent_id, 'intent id')}"


def device_word(device: str) -> str:
    """Turn a device name such as ``/dev/video0`` or ``test://bars`` into one routing-key word."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-]+", "_", device).strip("_")
    return cleaned or "default"


class Patterns:
    """Binding patterns used by subscribers (kept here so no module formats its own)."""

    ALL = "#"
    HEARTBEATS = "node.*.heartbeat"
    MEMBERSHIP = "node.*.*"
    NODES_LEFT = "node.*.left"
    LEADER = "cluster.leader.*"
    FRAMES = "frame.*.*.ready"
    FRAMES_LATEST = "frame.*.*.latest"
    FRAMES_INDEXED = "frame.*.*.indexed"
    CAPTURE_STATE = "capture.*.*.*"
    CAPTURE_INTENTS = "intent.capture.*"
    INTENT_RESULTS = "intent.result.*"
    RECORDED = ("node.#", "cluster.#", "frame.#", "capture.#", "intent.result.#")
    """What the flight recorder keeps: every channel except the intents themselves. A recorder bound to ``#``
    would make every routing key routable and defeat ``mandatory`` publishing (``thatdam publish`` exit 4 for
    an intent no node listens to); an intent's result carries its trace id, so the causal chain stays whole."""
