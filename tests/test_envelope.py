"""The envelope and the payload models: round-trips (property-based), limits, and clear errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from uuid import RFC_4122, UUID

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thatdam_bus import Envelope, FrameReady, NodeHeartbeat, NodeLeft, Role
from thatdam_bus.envelope import decode_raw, encode
from thatdam_bus.errors import DecodeError, SchemaError
from thatdam_bus.events import ALL_PAYLOADS, model_for_type
from thatdam_bus.ids import new_event_id
from thatdam_bus.publisher import Bus
from thatdam_bus.tracing import (
    cause_span_of,
    is_traceparent,
    new_traceparent,
    span_id_of,
    trace_id_of,
    trace_scope,
)

WORD = st.from_regex(r"[A-Za-z0-9_\-]{1,64}", fullmatch=True)
TEXT = st.text(max_size=80)
TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def heartbeats(draw: st.DrawFn) -> NodeHeartbeat:
    return NodeHeartbeat(
        node_id=draw(WORD),
        hostname=draw(TEXT),
        role=draw(st.sampled_from(Role)),
        epoch=draw(st.integers(0, 2**53)),
        version=draw(TEXT),
        uptime_s=draw(st.floats(0, 1e9)),
        load=draw(st.floats(0, 1e3)),
        interval_s=draw(st.floats(0.01, 60)),
    )


@st.composite
def frames(draw: st.DrawFn) -> FrameReady:
    return FrameReady(
        node_id=draw(WORD), device=draw(WORD), seq=draw(st.integers(0, 2**40)),
        pts=draw(st.none() | st.integers(-(2**40), 2**40)), captured_at=draw(TIMES),
        width=draw(st.integers(1, 16384)), height=draw(st.integers(1, 16384)),
        uri=draw(st.text(max_size=200)), sha256=draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
        size_bytes=draw(st.integers(0, 2**40)), keyframe=draw(st.booleans()),
    )


@given(payload=heartbeats() | frames(), epoch=st.integers(0, 2**53), seq=st.integers(0, 2**53),
       subject=st.none() | st.text(max_size=100), when=TIMES)
def test_envelope_round_trips(payload: NodeHeartbeat | FrameReady, epoch: int, seq: int,
                              subject: str | None, when: datetime) -> None:
    sent = Envelope[type(payload)](  # type: ignore[misc]
        type=payload.event_type, source="thatdam://c/n1/test", data=payload, epoch=epoch, seq=seq,
        subject=subject, time=when,
    )
    raw = decode_raw(encode(sent))
    received = raw.model_copy(update={"data": model_for_type(raw.type).model_validate(raw.data)})
    assert received == sent


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", b"[1,2]", b'"text"', b"{not json"])
def test_undecodable_bodies_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_raw(body)


def test_invalid_envelope_names_the_fields() -> None:
    with pytest.raises(SchemaError) as caught:
        decode_raw(b'{"type": "x", "epoch": -1, "data": {}}')
    message = str(caught.value)
    assert "source: Field required" in message
    assert "epoch" in message


def test_every_event_type_is_registered_once() -> None:
    types = [model.event_type for model in ALL_PAYLOADS]
    assert len(types) == len(set(types)) == 17
    with pytest.raises(SchemaError):
        model_for_type("thatdam.nothing.v1")


def test_event_ids_are_unique_and_sortable_by_creation() -> None:
    ids = [new_event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_event_ids_are_version_7_with_the_creation_millisecond_first() -> None:
    before = time.time_ns() // 1_000_000
    made = UUID(new_event_id())
    after = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == RFC_4122
    assert before <= made.int >> 80 <= after


@pytest.mark.parametrize("traceparent", [
    "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # all-zero trace id
    "00-" + "1" * 32 + "-" + "0" * 16 + "-01",  # all-zero span id
    "00-" + "A" * 32 + "-" + "1" * 16 + "-01",  # upper-case hex
    "01-" + "1" * 32 + "-" + "1" * 16 + "-01",  # another version
    "00-" + "1" * 32 + "-" + "1" * 16,  # no flags
])
def test_invalid_trace_contexts_are_refused_by_name(traceparent: str) -> None:
    body = encode(Envelope[dict[str, int]](type="t", source="s", data={})).replace(
        b'"data"', b'"traceparent":"' + traceparent.encode() + b'","data"')
    with pytest.raises(SchemaError, match="traceparent"):
        decode_raw(body)


def test_a_valid_trace_context_is_kept() -> None:
    traceparent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    sent = Envelope[dict[str, int]](type="t", source="s", data={}, traceparent=traceparent)
    assert decode_raw(encode(sent)).traceparent == traceparent


@pytest.mark.parametrize("parent", ["00-" + "1" * 32 + "-" + "2" * 16 + "-01\n", "00-" + "1" * 32 + "-" + "2" * 16])
def test_a_malformed_parent_context_starts_a_new_valid_trace(parent: str) -> None:
    """A caller's context (``TaskContext.continuing``) is checked whole: a trailing newline must not slip into the
    flags of the next span, which the Bus publishes without validating it again."""
    assert trace_id_of(parent) is None
    child = new_traceparent(parent)
    assert is_traceparent(child) and child[3:35] != "1" * 32
    Envelope[dict[str, int]](type="t", source="s", data={}, traceparent=child)  # pydantic accepts it


@pytest.mark.parametrize("tracestate", [
    "thatdam=" + "2" * 16,
    "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
    "acme@sys=x, thatdam=" + "2" * 16,  # tenant@system key, optional space after the comma
    "a=1,,b=2",  # empty members are allowed (W3C)
    "a=1, ",  # and a whitespace-only one
    "",  # and an empty list
])
def test_a_w3c_tracestate_is_kept(tracestate: str) -> None:
    sent = Envelope[dict[str, int]](type="t", source="s", data={}, tracestate=tracestate)
    assert decode_raw(encode(sent)).tracestate == tracestate


@pytest.mark.parametrize("tracestate", [
    "Thatdam=1",  # upper-case key
    "thatdam",  # no value
    "a=1,a=2",  # a key twice
    "a=x=y",  # '=' in the value
    "a=1,b",  # a member without a value
    ",".join(f"k{n}=v" for n in range(33)),  # more than 32 members
])
def test_invalid_tracestates_are_refused_by_name(tracestate: str) -> None:
    body = encode(Envelope[dict[str, int]](type="t", source="s", data={})).replace(
        b'"data"', b'"tracestate":' + orjson.dumps(tracestate) + b',"data"')
    with pytest.raises(SchemaError, match="tracestate"):
        decode_raw(body)


def test_an_event_published_in_a_trace_names_its_cause_and_a_root_names_none() -> None:
    bus = Bus(None, cluster="test", node_id="n1")  # type: ignore[arg-type]
    root = bus.envelope(NodeLeft(node_id="n1"))
    with trace_scope(root.traceparent):
        child = bus.envelope(NodeLeft(node_id="n1"))
    assert root.tracestate is None
    assert trace_id_of(child.traceparent) == trace_id_of(root.traceparent)
    assert child.tracestate == f"thatdam={span_id_of(root.traceparent)}"
    assert cause_span_of(child.tracestate) == span_id_of(root.traceparent) != span_id_of(child.traceparent)
    assert cause_span_of("other=1, thatdam=" + "0" * 16) is None, "an all-zero span names no cause"
