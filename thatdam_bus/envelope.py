"""The one envelope every message travels in: CloudEvents 1.0 attribute names plus our extensions.

Extensions: ``epoch`` (newest leader epoch the sender knows: a fencing token), ``seq`` (per-source counter, for
order and gap checks), ``traceparent`` and ``tracestate`` (W3C trace context and the event's cause, see
``tracing``), and for intents ``exp`` / ``nonce`` / ``sig``. The body on the wire is orjson bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePath
from types import UnionType
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin
from uuid import UUID

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from thatdam_bus.errors import DecodeError, SchemaError
from thatdam_bus.ids import new_event_id
from thatdam_bus.tracing import TRACEPARENT_PATTERN, TRACESTATE_MAX, check_traceparent, check_tracestate

CONTENT_TYPE = "application/json"
SPEC_VERSION = "1.0"
MAX_ID_LENGTH = 64
MAX_SOURCE_LENGTH = 256
MAX_TYPE_LENGTH = 128
MAX_SUBJECT = 256

DataT = TypeVar("DataT")


class Payload(BaseModel):
    """Base of every event payload. ``event_type`` is the CloudEvents ``type`` the payload travels under;
    ``durable`` payloads (work that must not be lost) are published persistent and confirmed; ``signed``
    payloads (intents: commands) reach a handler only with a valid cluster-key signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_type: ClassVar[str]
    durable: ClassVar[bool] = False
    signed: ClassVar[bool] = False


class Envelope(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 event with thatdam extensions; ``data`` is the typed payload.

    Frozen, like every ``Payload``: in one process the same instance may reach several handlers (one decode
    per message for all subscribers of a deeply immutable model, see ``shareable``), so a handler that wants a
    changed event makes one with ``model_copy(update=...)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: str = Field(default=SPEC_VERSION, pattern=r"^1\.0$")
    id: str = Field(default_factory=new_event_id, min_length=1, max_length=MAX_ID_LENGTH)
    type: str = Field(min_length=1, max_length=MAX_TYPE_LENGTH)
    source: str = Field(min_length=1, max_length=MAX_SOURCE_LENGTH)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = Field(default=None, max_length=MAX_SUBJECT)
    datacontenttype: str = Field(default=CONTENT_TYPE, max_length=128)
    data: DataT
    epoch: int = Field(default=0, ge=0)
    seq: int = Field(default=0, ge=0)
    exp: datetime | None = None
    nonce: str | None = Field(default=None, max_length=64)
    sig: str | None = Field(default=None, max_length=128)
    traceparent: Annotated[str | None, AfterValidator(check_traceparent)] = Field(
        default=None, pattern=TRACEPARENT_PATTERN, description="W3C trace context (CloudEvents distributed tracing)"
    )
    tracestate: Annotated[str | None, AfterValidator(check_tracestate)] = Field(
        default=None, max_length=TRACESTATE_MAX, description="W3C tracestate (CloudEvents distributed tracing); "
        "its thatdam=<span id> entry names the span of the event that caused this one")


_TYPED: dict[type[Any], type[Envelope[Any]]] = {}


def typed_envelope(model: type[Any]) -> type[Envelope[Any]]:
    """``Envelope[model]``, cached: pydantic's own look-up of a parametrised generic costs about a microsecond,
    paid once per published and once per delivered event otherwise."""
    typed = _TYPED.get(model)
    if typed is None:
        typed = _TYPED[model] = Envelope[model]  # type: ignore[valid-type]
    return typed


def _template() -> dict[str, Any]:
    """Every envelope field in declaration order with its default; the two factory fields (``id``, ``time``)
    are filled per envelope by ``assemble``."""
    return {name: None if info.default_factory is not None else info.default
            for name, info in Envelope.model_fields.items()}


_TEMPLATE = _template()
_set_attribute = object.__setattr__


def _assemble_unvalidated(cls: type[Envelope[Any]], explicit: dict[str, Any]) -> Envelope[Any]:
    fields = _TEMPLATE.copy()
    fields["id"] = new_event_id()
    fields["time"] = datetime.now(UTC)
    fields.update(explicit)
    envelope = cls.__new__(cls)
    _set_attribute(envelope, "__dict__", fields)
    _set_attribute(envelope, "__pydantic_fields_set__", set(explicit))
    _set_attribute(envelope, "__pydantic_extra__", None)
    _set_attribute(envelope, "__pydantic_private__", None)
    return envelope


def _assemble_validated(cls: type[Envelope[Any]], explicit: dict[str, Any]) -> Envelope[Any]:
    return cls(**explicit)


def _pick_assemble() -> Callable[[type[Envelope[Any]], dict[str, Any]], Envelope[Any]]:
    """The unvalidated path only if it still builds exactly what pydantic builds (checked once, at import: it
    fills pydantic's instance slots as ``model_construct`` does, at a sixth of ``model_construct``'s cost)."""
    if {n for n, info in Envelope.model_fields.items() if info.default_factory is not None} != {"id", "time"}:
        return _assemble_validated
    with contextlib.suppress(Exception):
        explicit = {"type": "t", "source": "s", "subject": None, "data": {"k": 1}, "epoch": 0, "seq": 1,
                    "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        cls = typed_envelope(dict[str, Any])
        fast, slow = _assemble_unvalidated(cls, explicit), cls(**explicit)
        fast_copy, slow_copy = fast.model_copy(update={"seq": 2}), slow.model_copy(update={"seq": 2})
        slow = slow.model_copy(update={"id": fast.id, "time": fast.time})
        if (fast == slow and fast.model_dump() == slow.model_dump() and repr(fast) == repr(slow)
                and fast.__pydantic_fields_set__ == cls(**explicit).__pydantic_fields_set__
                and fast_copy.seq == slow_copy.seq == 2 and fast.model_dump(exclude_unset=True).keys()
                == cls(**explicit).model_dump(exclude_unset=True).keys()):
            return _assemble_unvalidated
    return _assemble_validated


assemble = _pick_assemble()
"""``assemble(Envelope[Model], fields)``: an envelope from ``fields`` (what the caller would pass to the
constructor; ``id`` and ``time`` are made fresh) **without validating them**. Only for values that are valid by
construction: the ``Bus`` checks what it cannot vouch for and takes the validating constructor otherwise."""


_IMMUTABLE_LEAVES: tuple[type, ...] = (str, int, float, bool, bytes, complex, type(None), Decimal, datetime, date,
                                        dt_time, timedelta, UUID, Enum, PurePath, IPv4Address, IPv6Address)
_SHAREABLE: dict[type[Any], bool] = {}


def shareable(model: type[BaseModel]) -> bool:
    """Whether one validated instance of ``model`` can be handed to several handlers: the model is frozen and
    every field, at any depth, is immutable (scalars, enums, tuples, frozensets, frozen models). Dispatch then
    decodes an event once for all in-process subscribers of the model; a payload with a list or dict field
    (which one handler could change under another) is decoded for each of them instead."""
    known = _SHAREABLE.get(model)
    if known is None:
        known = _SHAREABLE[model] = _deeply_immutable(model, frozenset())
    return known


def _deeply_immutable(model: type[BaseModel], judging: frozenset[type[Any]]) -> bool:
    """``shareable`` without its cache: a model met again while it is being judged (a cycle) is judged by its
    other fields; nothing computed inside a cycle is cached, since it assumed an answer for the outer model."""
    if model in judging:
        return True
    judging = judging | {model}
    return (model.model_config.get("frozen", False) is True and model.model_config.get("extra") != "allow"
            and not model.__private_attributes__
            and all(_immutable(info.annotation, judging) for info in model.model_fields.values()))


def _immutable(annotation: Any, judging: frozenset[type[Any]]) -> bool:
    origin = get_origin(annotation)
    if origin is Literal:
        return all(isinstance(value, _IMMUTABLE_LEAVES) for value in get_args(annotation))
    if origin is Annotated:
        return _immutable(get_args(annotation)[0], judging)
    if origin in (Union, UnionType, tuple, frozenset):
        return all(_immutable(arg, judging) for arg in get_args(annotation) if arg is not Ellipsis)
    if origin is None and isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return _deeply_immutable(annotation, judging)
        return issubclass(annotation, _IMMUTABLE_LEAVES) and not issubclass(annotation, (tuple, frozenset))
    return False


def source_uri(cluster: str, node_id: str, service: str) -> str:
    """``thatdam://<cluster>/<node_id>/<service>``: the CloudEvents ``source`` of everything a node emits."""
    return f"thatdam://{cluster}/{node_id}/{service}"


def encode(envelope: Envelope[Any]) -> bytes:
    """Envelope to wire bytes (orjson)."""
    return orjson.dumps(envelope.model_dump(mode="json", exclude_none=True))


def decode_raw(body: bytes) -> Envelope[dict[str, Any]]:
    """Wire bytes to an envelope whose ``data`` is still an untyped mapping.

    Raises ``DecodeError`` for bytes that are not a JSON object and ``SchemaError`` for an object that is not
    a valid envelope; both carry a one-line reason fit for a dead-letter header.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DecodeError(f"body is JSON {type(document).__name__}, not an object")
    try:
        return Envelope[dict[str, Any]].model_validate(document)
    except ValidationError as exc:
        raise SchemaError(f"invalid envelope: {describe_validation_error(exc)}") from exc


def describe_validation_error(exc: ValidationError, limit: int = 5, *, prefix: str = "") -> str:
    """One line naming each invalid field, e.g. ``data.device: Field required; epoch: must be >= 0``."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join([prefix, *(str(item) for item in error["loc"])] if prefix else
                         [str(item) for item in error["loc"]]) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
