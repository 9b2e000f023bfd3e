"""Sortable unique ids for envelopes (UUIDv7, RFC 9562), since Python 3.11's ``uuid`` has no ``uuid7``."""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_random = b""
_offset = 0
_RANDOM_CHUNK = 8 * 512
"""Random bytes are read from the OS 4 KiB at a time: one ``getrandom`` call per 512 ids (or 170 trace
contexts), not one per id."""


def _forget_random() -> None:
    """A forked child must not reuse its parent's unread random bytes (same ms + same bytes = same id)."""
    global _random, _offset
    _random, _offset = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def _take(count: int) -> bytes:
    """``count`` random bytes from the buffer (caller holds ``_lock``)."""
    global _random, _offset
    if _offset + count > len(_random):
        _random, _offset = os.urandom(_RANDOM_CHUNK), 0
    entropy = _random[_offset:_offset + count]
    _offset += count
    return entropy


def random_hex(digits: int) -> str:
    """``digits`` (even, at most 8192) random lower-case hex digits from the same buffer: what
    ``secrets.token_hex`` gives, without a ``getrandom`` call for each (trace and span ids, one per event)."""
    with _lock:
        return _take(digits // 2).hex()


def new_event_id() -> str:
    """A UUIDv7 string: millisecond timestamp first, so ids sort by creation time within one process.

    A 12-bit counter in ``rand_a`` keeps ids from one process strictly increasing inside the same millisecond.
    """
    global _last_ms, _counter, _random, _offset
    with _lock:
        if _offset + 8 > len(_random):
            _random, _offset = os.urandom(_RANDOM_CHUNK), 0
        entropy = _random[_offset:_offset + 8]
        _offset += 8
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        seq = _counter
    rand_b = int.from_bytes(entropy, "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand_b
    # The canonical 8-4-4-4-12 form, as ``str(uuid.UUID(int=value))`` writes it, at a third of the cost
    # (one id per published event).
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
