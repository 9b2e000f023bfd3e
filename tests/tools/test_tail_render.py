"""bus-tail's rendering as pure functions: every body becomes a record, nothing raises, the terminal is safe."""

from __future__ import annotations

import io
import re
from typing import Any

import orjson
import pytest

from thatdam_bus import CaptureStartIntent, NodeLeft
from thatdam_bus.cli.tail import EventFilter, use_colour
from thatdam_bus.cli.tail_render import (
    RAW_PREVIEW_BYTES,
    CauseTree,
    Record,
    Style,
    human_line,
    inspect,
    json_line,
    safe,
)
from thatdam_bus.envelope import decode_raw, encode
from thatdam_bus.publisher import Bus
from thatdam_bus.security import ClusterKey, IntentVerifier, Keyring, sign_envelope
from thatdam_bus.security.signing import check_signature
from thatdam_bus.tracing import trace_scope
from thatdam_bus.transports.base import Delivery

KEY = ClusterKey.from_text("tail test key")
ROUTE = "intent.capture.start"
LIMIT = 1 << 20
LOCAL_KEYS = Keyring(KEY)


def _inspect(body: bytes, routing_key: str = "some.key", keyring: Keyring = LOCAL_KEYS,
             headers: dict[str, Any] | None = None) -> Record:
    return inspect(Delivery(routing_key, body, headers or {}), max_bytes=LIMIT, keyring=keyring)


def _intent(key: ClusterKey = KEY) -> bytes:
    envelope = Bus(transport=None, cluster="c", node_id="n1").envelope(  # type: ignore[arg-type]
        CaptureStartIntent(node_id="n1", device="cam0"))
    return encode(sign_envelope(envelope, ROUTE, key))


@pytest.mark.parametrize(("body", "error"), [
    (bytes(range(256)), "binary body (not UTF-8 text)"),
    (b"\x00\x01{", "binary body (not UTF-8 text)"),
    (b'{"type": ', "body is not JSON"),
    (b"[1, 2]", "body is JSON list, not an object"),
    (b'{"type": "x"}', "invalid envelope: source: Field required"),
    (b"", "body is not JSON"),
    (b"x" * (LIMIT + 1), "body too large (1.0 MB > 1.0 MB limit)"),
], ids=["binary", "nul", "truncated-json", "array", "not-an-envelope", "empty", "huge"])
def test_every_undecodable_body_becomes_an_error_record(body: bytes, error: str) -> None:
    record = _inspect(body)
    assert record.event is None
    assert record.error is not None and record.error.startswith(error)
    assert record.size == len(body)
    for raw in (False, True):  # both renderings work on it
        assert orjson.loads(json_line(record, raw=raw, headers=True))["error"] == record.error
        assert "!!" in human_line(record, Style(colour=True), raw=raw, headers=True)


def test_raw_shows_a_truncated_preview_with_the_size() -> None:
    record = _inspect(b"\xff" + b"y" * 5_000_000)
    document = orjson.loads(json_line(record, raw=True, headers=False))
    assert document["size"] == 5_000_001 and document["truncated"] is True
    assert document["raw"].startswith("\\xffyyy") and len(document["raw"]) < RAW_PREVIEW_BYTES + 8
    line = human_line(record, Style(colour=False), raw=True, headers=False)
    assert f"[truncated: {RAW_PREVIEW_BYTES} of 5000001 bytes]" in line
    assert "raw" not in orjson.loads(json_line(record, raw=False, headers=False))
    assert "--raw shows it" in human_line(record, Style(colour=False), raw=False, headers=False)


def test_escape_sequences_from_the_bus_never_reach_the_terminal() -> None:
    record = _inspect(b"\x1b]0;pwned\x07\x1b[2J", routing_key="evil.\x1b[31mkey")
    line = human_line(record, Style(colour=False), raw=True, headers=False)
    assert "\x1b" not in line and "\x07" not in line
    assert "evil.\\x1b[31mkey" in line
    assert safe("tab\there\u009b") == "tab\\x09here\\x9b"


def test_a_valid_event_line_has_time_key_type_short_source_and_payload() -> None:
    body = orjson.dumps({"specversion": "1.0", "id": "e1", "type": "thatdam.node.left.v1",
                         "source": "thatdam://default/0123456789abcdef/node", "time": "2026-01-02T03:04:05.678Z",
                         "data": {"node_id": "0123456789abcdef", "reason": "x" * 500}})
    record = _inspect(body, routing_key="node.0123456789abcdef.left", headers={"ce-id": "e1"})
    assert record.node == "0123456789abcdef" and record.event_type == "thatdam.node.left.v1"
    line = human_line(record, Style(colour=False), raw=False, headers=True)
    first, headers = line.split("\n")
    assert first.startswith("03:04:05.678 node.0123456789abcdef.left  thatdam.node.left.v1  01234567/node  {")
    assert first.endswith("…") and len(first) < 320
    assert headers.strip() == "headers: ce-id=e1"
    assert "\x1b[" in human_line(record, Style(colour=True), raw=False, headers=False)
    document = orjson.loads(json_line(record, raw=False, headers=True))
    assert document["event"]["id"] == "e1" and document["headers"] == {"ce-id": "e1"}
    assert "signature" not in document  # not a signed payload class


def test_intents_show_whether_the_signature_verifies_with_the_local_key() -> None:
    good, forged = _intent(), _intent(ClusterKey.from_text("someone else"))
    assert _inspect(good, ROUTE).signature == "valid"
    assert _inspect(forged, ROUTE).signature is not None
    assert _inspect(forged, ROUTE).signature.startswith("bad signature (unknown key id")  # type: ignore[union-attr]
    assert _inspect(good, "intent.capture.stop").signature.startswith("bad signature (mismatch")  # type: ignore[union-attr]
    assert _inspect(good, ROUTE, keyring=Keyring()).signature == "no key"
    unsigned = orjson.loads(good)
    del unsigned["sig"]
    assert _inspect(orjson.dumps(unsigned), ROUTE).signature == "unsigned"
    style = Style(colour=False)
    assert "✓ signed" in human_line(_inspect(good, ROUTE), style, raw=False, headers=False)
    assert "✗ bad signature" in human_line(_inspect(forged, ROUTE), style, raw=False, headers=False)
    assert "? no key" in human_line(_inspect(good, ROUTE, keyring=Keyring()), style, raw=False, headers=False)


def test_checking_a_signature_consumes_no_nonce() -> None:
    """bus-tail looking at an intent must not make the node that handles it see a replay."""
    body = _intent()
    document = orjson.loads(body)
    for _ in range(3):
        assert check_signature(Keyring(KEY), document, ROUTE) is None
    assert _inspect(body, ROUTE).signature == "valid"
    assert IntentVerifier(Keyring(KEY)).verify(decode_raw(body), ROUTE, document) is None  # not a replay


def test_filters_match_type_and_node_globs_and_hide_undecodable_bodies() -> None:
    beat = _inspect(orjson.dumps({"type": "thatdam.node.heartbeat.v1", "source": "thatdam://c/abc123/node",
                                  "data": {}}))
    garbage = _inspect(b"\xff")
    assert EventFilter()(beat) and EventFilter()(garbage)
    assert EventFilter(types=("thatdam.node.heartbeat.v1",))(beat)
    assert EventFilter(types=("*.heartbeat.*",), nodes=("abc*",))(beat)
    assert EventFilter(types=("nope", "thatdam.node.*"))(beat)  # OR within one option
    assert not EventFilter(types=("*.heartbeat.*",), nodes=("xyz",))(beat)  # AND across options
    assert not EventFilter(nodes=("abc123",))(garbage)


def test_colour_follows_the_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour("auto", Tty()) and not use_colour("auto", io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour("auto", Tty())
    assert use_colour("always", io.StringIO()) and not use_colour("never", Tty())
    monkeypatch.setenv("NO_COLOR", "")  # https://no-color.org: only a non-empty value counts
    assert use_colour("auto", Tty())


def test_a_trace_is_drawn_as_the_tree_of_what_caused_what() -> None:
    """Lines of ``--trace`` go one level under the printed event that caused them; an event whose cause was not
    printed (the unrecorded intent of a result) starts at the left, and so does one naming a stranger."""
    bus = Bus(transport=None, cluster="c", node_id="n1")  # type: ignore[arg-type]
    intent = bus.envelope(NodeLeft(node_id="n1"))  # stands in for the intent: caused by nothing, not printed
    with trace_scope(intent.traceparent):
        result = bus.envelope(NodeLeft(node_id="n1"))
        frame = bus.envelope(NodeLeft(node_id="n1"))
    with trace_scope(frame.traceparent):
        indexed = bus.envelope(NodeLeft(node_id="n1"))
    with trace_scope(indexed.traceparent):
        deeper = bus.envelope(NodeLeft(node_id="n1"))
    tree = CauseTree()
    lines = [human_line(_inspect(encode(event), "node.n1.left"), Style(colour=False), raw=False, headers=False,
                        tree=tree) for event in (result, frame, indexed, deeper, result)]
    assert [re.match(r"\D*", line).group(0) for line in lines] == ["", "", "└─ ", "   └─ ", ""]  # type: ignore[union-attr]
