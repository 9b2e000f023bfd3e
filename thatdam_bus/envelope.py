"""The one envelope every message travels in: CloudEvents 1.0 attribute names plus our extensions.

Extensions: ``epoch`` (newest leader epoch the sender knows: a fencing token), ``seq`` (per-source counter, for
order and gap checks), ``traceparent`` (W3C trace context, see ``tracing``), and for intents ``exp`` / ``nonce`` /
``sig``. The body on the wire is orjson bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from thatdam_bus.errors import DecodeError, SchemaError
from thatdam_bus.ids import new_event_id
from thatdam_bus.tracing import TRACEPARENT_PATTERN, check_traceparent

CONTENT_TYPE = "application/json"
SPEC_VERSION = "1.0"
MAX_ID_LENGTH = 64
MAX_SOURCE_LENGTH = 256

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
    """A CloudEvents 1.0 event with thatdam extensions; ``data`` is the typed payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: str = Field(default=SPEC_VERSION, pattern=r"^1\.0$")
    id: str = Field(default_factory=new_event_id, min_length=1, max_length=MAX_ID_LENGTH)
    type: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=MAX_SOURCE_LENGTH)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = Field(default=None, max_length=256)
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
