"""W3C trace context (``traceparent``, ``tracestate``) on envelopes: the CloudEvents distributed-tracing extension.

Every envelope the ``Bus`` builds carries ``traceparent`` = ``00-<trace id>-<span id>-<flags>``. Inside a
handler the trace of the event being handled is the *current* one (a context variable that dispatch sets around
the handler, its intent gate and its result), so whatever the handler publishes continues that trace with a
fresh span id, and names the handled event's span as its cause in ``tracestate`` (``thatdam=<span id>``, our
vendor entry): a trace is then a tree of events, not only a set, which ``bus-tail --trace`` draws. Outside any
handler a publish starts a new trace, with no ``tracestate``. Work a handler hands to a background task keeps
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
TRACESTATE_KEY = "thatdam"
"""Our ``tracestate`` entry: its value is the span id of the event that caused this one."""
TRACESTATE_MAX = 512
_TRACESTATE_MEMBER = re.compile(
    r"(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
"""One W3C ``tracestate`` list member: ``key=value`` (a simple or ``tenant@system`` key; printable value)."""
_SPAN_ID = re.compile(r"(?!0{16})[0-9a-f]{16}")
_OURS_ALONE = re.compile(r"thatdam=(?!0{16})[0-9a-f]{16}")
"""The ``tracestate`` the Bus writes: checked by this one match instead of the member-by-member parse."""

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


def check_tracestate(value: str | None) -> str | None:
    """Pydantic validator of the envelope's ``tracestate`` (whose length the field bounds): W3C's list of at
    most 32 ``key=value`` members, comma-separated, optional spaces around, each key once; empty members, and
    an empty list, are allowed (W3C: vendors must accept them)."""
    if value is None or _OURS_ALONE.fullmatch(value):
        return value
    members = [member for member in (part.strip(" \t") for part in value.split(",")) if member]
    keys = [member.partition("=")[0] for member in members]
    if (len(members) > 32 or len(set(keys)) != len(keys)
            or not all(_TRACESTATE_MEMBER.fullmatch(member) for member in members)):
        raise ValueError("tracestate must be W3C's list of up to 32 key=value members, each key once")
    return value


def child_context(cause: str | None) -> tuple[str, str | None]:
    """(traceparent, tracestate) of an event published while ``cause`` is the current traceparent: a new span
    in its trace naming its span as the cause (our ``tracestate`` entry; other vendors' entries of the cause are
    not carried on); a new trace and no tracestate when there is no valid cause."""
    trace_id = trace_id_of(cause)
    if trace_id is None or cause is None:
        fresh = random_hex(48)
        return f"00-{fresh[:32]}-{fresh[32:]}-{SAMPLED}", None
    return f"00-{trace_id}-{random_hex(16)}-{cause[-2:]}", f"{TRACESTATE_KEY}={cause[36:52]}"


def cause_span_of(tracestate: str | None) -> str | None:
    """The span id our entry of a (received, so untrusted) ``tracestate`` names as the cause; None if none."""
    if not tracestate:
        return None
    for member in tracestate.split(","):
        key, _, value = member.strip(" \t").partition("=")
        if key == TRACESTATE_KEY:
            return value if _SPAN_ID.fullmatch(value) else None
    return None


def span_id_of(traceparent: str | None) -> str | None:
    """The 16-hex span id of a valid ``traceparent``; None for anything else."""
    return traceparent[36:52] if traceparent is not None and is_traceparent(traceparent) else None


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a valid ``traceparent``; None for anything else."""
    return traceparent[3:35] if traceparent is not None and is_traceparent(traceparent) else None


def new_traceparent(parent: str | None = None) -> str:
    """A new span: in ``parent``'s trace (keeping its flags) when there is one, else in a new trace."""
    return child_context(parent)[0]


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
