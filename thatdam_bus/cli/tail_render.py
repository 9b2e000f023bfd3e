"""What bus-tail prints: one ``Record`` per delivery, shown as a JSON object or as one human line.

Everything on the bus is untrusted input, so inspecting a delivery never raises: a body that is binary, not
JSON, not an envelope, or larger than the node would accept becomes a record with an ``error`` and its size,
and the body itself is shown only on request (``--raw``), truncated. Human output also strips control
characters, so a hostile routing key or payload cannot drive the terminal with escape sequences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from thatdam_bus.envelope import Envelope, describe_validation_error
from thatdam_bus.errors import SchemaError
from thatdam_bus.events.registry import model_for_type
from thatdam_bus.security.keys import Keyring
from thatdam_bus.security.signing import check_signature
from thatdam_bus.tracing import cause_span_of, span_id_of
from thatdam_bus.transports.base import Delivery

RAW_PREVIEW_BYTES = 512
"""How much of an undecodable body ``--raw`` shows; the size note gives the rest away."""
PAYLOAD_CHARS = 200
"""Human lines show the payload compactly and cut it here, so one event stays one line."""
SIGNATURE_VALID = "valid"
SIGNATURE_NO_KEY = "no key"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Record:
    """One delivery as bus-tail understood it: ``event`` (the envelope as JSON) or ``error``, never both."""

    routing_key: str
    size: int
    body: bytes = field(repr=False)
    headers: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    error: str | None = None
    signature: str | None = None
    """For signed payloads (intents): ``valid``, ``no key``, or why it does not verify; else None."""

    @property
    def event_type(self) -> str | None:
        return None if self.event is None else str(self.event["type"])

    @property
    def node(self) -> str | None:
        """The node id from ``thatdam://<cluster>/<node_id>/<service>``; None for other sources."""
        return _source_parts(self.event["source"])[1] if self.event is not None else None


def _source_parts(source: str) -> tuple[str, str | None, str]:
    """(cluster, node id, service) of a thatdam source URI, or (source, None, "") for anything else."""
    rest = source.removeprefix("thatdam://")
    parts = rest.split("/")
    if rest == source or len(parts) < 3:
        return source, None, ""
    return parts[0], parts[1], "/".join(parts[2:])


def inspect(delivery: Delivery, *, max_bytes: int, keyring: Keyring) -> Record:
    """Decode a delivery as far as it goes. Bodies over ``max_bytes`` are not parsed (the node would not
    either), so a 5 MB body costs bus-tail a length check, not a JSON parse."""
    base = Record(delivery.routing_key, len(delivery.body), delivery.body, dict(delivery.headers))
    if len(delivery.body) > max_bytes:
        return _failed(base, f"body too large ({_size(len(delivery.body))} > {_size(max_bytes)} limit)")
    try:
        document = orjson.loads(delivery.body)
    except orjson.JSONDecodeError as exc:
        return _failed(base, "binary body (not UTF-8 text)" if _binary(delivery.body) else f"body is not JSON: {exc}")
    if not isinstance(document, dict):
        return _failed(base, f"body is JSON {type(document).__name__}, not an object")
    try:
        envelope = Envelope[dict[str, Any]].model_validate(document)
    except ValidationError as exc:
        return _failed(base, f"invalid envelope: {describe_validation_error(exc)}")
    event = envelope.model_dump(mode="json", exclude_none=True)
    return Record(base.routing_key, base.size, base.body, base.headers, event=event,
                  signature=_signature(envelope.type, document, delivery.routing_key, keyring))


def _binary(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in body


def _failed(base: Record, error: str) -> Record:
    return Record(base.routing_key, base.size, base.body, base.headers, error=error)


def _signature(event_type: str, document: dict[str, Any], routing_key: str, keyring: Keyring) -> str | None:
    """Checked only for payload classes that must be signed, without touching any replay cache."""
    try:
        signed = model_for_type(event_type).signed
    except SchemaError:
        signed = bool(document.get("sig"))  # an unknown type that carries a signature: still worth a check
    if not signed:
        return None
    if keyring.current is None:
        return SIGNATURE_NO_KEY
    return check_signature(keyring, document, routing_key) or SIGNATURE_VALID


def _size(count: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def preview(body: bytes, limit: int = RAW_PREVIEW_BYTES) -> str:
    """The start of a body as text: UTF-8 where it is, ``\\xNN`` where it is not, cut at ``limit`` bytes."""
    return body[:limit].decode("utf-8", "backslashreplace")


def json_line(record: Record, *, raw: bool, headers: bool) -> str:
    """One JSON object per line (for jq): ``routing_key`` plus ``event`` or ``error``/``size``."""
    out: dict[str, Any] = {"routing_key": record.routing_key}
    if record.event is not None:
        out["event"] = record.event
        if record.signature is not None:
            out["signature"] = record.signature
    else:
        out["error"] = record.error
        out["size"] = record.size
        if raw:
            out["raw"] = preview(record.body)
            out["truncated"] = record.size > RAW_PREVIEW_BYTES
    if headers:
        out["headers"] = record.headers
    return orjson.dumps(out, default=str).decode()


@dataclass(frozen=True)
class Style:
    """ANSI colours, or none (piped output, ``NO_COLOR``): each field has one colour so the eye finds it."""

    colour: bool

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text


def safe(text: str) -> str:
    """Control characters as ``\\xNN``: the terminal shows the bus's bytes, never obeys them."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _clock(event_time: str | None) -> str:
    """``HH:MM:SS.mmm`` UTC of the event (or of arrival, for bodies without one)."""
    try:
        moment = datetime.fromisoformat(event_time) if event_time else datetime.now(UTC)
    except ValueError:
        moment = datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


class CauseTree:
    """Indents the lines of one trace (``bus-tail --trace``) by cause: an event whose ``tracestate`` names the
    span of an event printed before it goes one level under that event; one whose cause was not printed (the
    intent itself is not recorded, so its result, capture and frames) starts at the left. Remembers the spans
    of the events it printed, up to ``limit`` (then starts over: a trace that long is a stream, not a tree)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._depth: dict[str, int] = {}
        self._limit = limit

    def prefix(self, event: dict[str, Any]) -> str:
        cause = cause_span_of(_text(event.get("tracestate")))
        depth = self._depth.get(cause, -1) + 1 if cause is not None else 0
        span = span_id_of(_text(event.get("traceparent")))
        if span is not None:
            if len(self._depth) >= self._limit:
                self._depth.clear()
            self._depth[span] = depth
        return "" if depth == 0 else "   " * (depth - 1) + "└─ "


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def human_line(record: Record, style: Style, *, raw: bool, headers: bool, tree: CauseTree | None = None) -> str:
    """``time  routing-key  type  node/service  payload`` (plus a signature mark for intents); with ``tree``
    (``--trace``), indented under the event that caused it."""
    line = _event_line(record, style) if record.event is not None else _error_line(record, style, raw)
    if tree is not None and record.event is not None:
        line = tree.prefix(record.event) + line
    if headers:
        pairs = " ".join(f"{safe(str(k))}={safe(str(v))}" for k, v in sorted(record.headers.items()))
        line += "\n    " + style.paint(f"headers: {pairs or '(none)'}", "2")
    return line


def _event_line(record: Record, style: Style) -> str:
    assert record.event is not None
    fields = [
        style.paint(_clock(record.event["time"]), "2") + " " + style.paint(safe(record.routing_key), "36"),
        style.paint(safe(str(record.event["type"])), "33"),
        _short_source(record, style),
        _signature_mark(record.signature, style) + _payload(record.event.get("data")),
    ]
    return "  ".join(fields)


def _error_line(record: Record, style: Style, raw: bool) -> str:
    """When it arrived, where, why it is not an event, how big; with ``raw`` the start of the body too."""
    note = f"({_size(record.size)}{'' if raw else '; --raw shows it'})"
    line = (f"{style.paint(_clock(None), '2')} {style.paint(safe(record.routing_key), '36')}  "
            f"{style.paint('!! ' + safe(str(record.error)), '31')} {note}")
    if raw:
        cut = f" ... [truncated: {RAW_PREVIEW_BYTES} of {record.size} bytes]" if record.size > RAW_PREVIEW_BYTES else ""
        line += f"\n    raw: {safe(preview(record.body))}{cut}"
    return line


def _short_source(record: Record, style: Style) -> str:
    """``<node id, 8 chars>/<service>``: enough to tell nodes apart, short enough to keep the line."""
    assert record.event is not None
    _, node, service = _source_parts(str(record.event["source"]))
    text = f"{node[:8]}/{service}" if node is not None else str(record.event["source"])
    return style.paint(safe(text), "34")


def _signature_mark(signature: str | None, style: Style) -> str:
    """Whether an intent would pass the signature check on a node holding this machine's key."""
    if signature is None:
        return ""
    if signature == SIGNATURE_VALID:
        return style.paint("✓ signed", "32") + "  "
    if signature == SIGNATURE_NO_KEY:
        return style.paint("? no key to verify", "33") + "  "
    return style.paint(f"✗ {safe(signature)}", "31") + "  "


def _payload(data: Any) -> str:
    text = orjson.dumps(data, default=str).decode()
    return safe(text if len(text) <= PAYLOAD_CHARS else text[: PAYLOAD_CHARS - 1] + "…")
