"""W3C trace context (``traceparent``) on envelopes: the CloudEvents distributed-tracing extension.

Every envelope the ``Bus`` builds carries ``traceparent`` = ``00-<trace id>-<span id>-<flags>``. Inside a
handler the trace of the event being handled is the *current* one (a context variable that dispatch sets around
the handler, its intent gate and its result), so whatever the handler publishes continues that trace with a
fresh span id; outside any handler a publish starts a new trace. Work a handler hands to a background task keeps
the trace if the task is created inside the handler (asyncio copies the context) or with a context copied there
(``contextvars.copy_context()``, as the capture manager does for captures it starts later).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar, Token

from thatdam_bus.ids import random_hex

TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
"""Version 00 with lower-case hex (the JSON Schema carries this); all-zero ids are refused as well."""
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
"""Used with ``fullmatch``: ``$`` would also accept a trailing newline, which pydantic's pattern refuses."""
SAMPLED = "01"

_current: ContextVar[str | None] = ContextVar("thatdam_traceparent", default=None)


def is_traceparent(value: str) -> bool:
    return bool(_TRACEPARENT.fullmatch(value))


def is_trace_id(value: str) -> bool:
    return bool(_TRACE_ID.fullmatch(value))


_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


def check_traceparent(value: str | None) -> str | None:
    """Pydantic validator of the envelope field, run after its ``TRACEPARENT_PATTERN`` (which pydantic-core
    checks, but its regex engine has no look-ahead for W3C's "all zeros is invalid"): two comparisons, a third
    of a second regex match, once per decoded event."""
    if value is not None and (value[3:35] == _ZERO_TRACE_ID or value[36:52] == _ZERO_SPAN_ID):
        raise ValueError("traceparent must be 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>, ids not all zero")
    return value


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a valid ``traceparent``; None for anything else."""
    if traceparent is None or not _TRACEPARENT.fullmatch(traceparent):
        return None
    return traceparent[3:35]


def new_traceparent(parent: str | None = None) -> str:
    """A new span: in ``parent``'s trace (keeping its flags) when there is one, else in a new trace."""
    trace_id = trace_id_of(parent)
    flags = parent[-2:] if trace_id is not None and parent is not None else SAMPLED
    if trace_id is None:
        fresh = random_hex(48)
        return f"00-{fresh[:32]}-{fresh[32:]}-{flags}"
    return f"00-{trace_id}-{random_hex(16)}-{flags}"


def current_traceparent() -> str | None:
    """The trace context of the event being handled in this task, if any."""
    return _current.get()


def enter_trace(traceparent: str | None) -> Token[str | None]:
    """``trace_scope`` without the context manager, for dispatch's per-delivery path (a fifth of its cost);
    pair every call with ``leave_trace`` in a ``finally``."""
    return _current.set(traceparent)


def leave_trace(token: Token[str | None]) -> None:
    _current.reset(token)


@contextlib.contextmanager
def trace_scope(traceparent: str | None) -> Iterator[None]:
    """Make ``traceparent`` current for the block (and tasks created in it), then restore the previous one."""
    token = _current.set(traceparent)
    try:
        yield
    finally:
        _current.reset(token)
