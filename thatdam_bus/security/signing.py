"""Signing intents: HMAC-SHA256 over canonical bytes that bind the envelope to its routing key.

Canonical bytes = the envelope as a JSON object without ``sig``, serialized by orjson with sorted keys and no
whitespace, then ``b"\\n"``, then the routing key (UTF-8). For an envelope built in Python the object is
``model_dump(mode="json", exclude_none=True)``, exactly what ``encode`` puts on the wire. The verifier
canonicalizes the object *as received*, not a re-serialized model, so a shell script that writes its own
JSON (its own timestamp format, omitted defaults) signs what it sends and still verifies.

The routing key is inside the MAC so a valid intent cannot be re-sent to another routing key. The signature
string is ``v1:<kid>:<hex>``; ``kid`` names the key (see ``keys``), so rotation needs no guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from thatdam_bus.envelope import Envelope
from thatdam_bus.security.keys import ClusterKey, Keyring

SIGNATURE_VERSION = "v1"
DEFAULT_TTL_S = 60.0

WallClock = Callable[[], float]
"""Seconds since the epoch (``time.time``): intents carry absolute times, so this is wall time, injected."""


class ParsedSignature(NamedTuple):
    kid: str
    digest: str


def envelope_document(envelope: Envelope[Any]) -> dict[str, Any]:
    """The JSON object an envelope travels as (the same object ``envelope.encode`` serializes)."""
    return envelope.model_dump(mode="json", exclude_none=True)


def canonical_bytes(document: Mapping[str, Any], routing_key: str) -> bytes:
    """What the MAC covers: the object minus ``sig``, sorted keys, compact, then newline and routing key."""
    unsigned = {name: value for name, value in document.items() if name != "sig"}
    return orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS) + b"\n" + routing_key.encode("utf-8")


def digest(key: ClusterKey, document: Mapping[str, Any], routing_key: str) -> str:
    """The hex HMAC-SHA256 of the canonical bytes under ``key``."""
    return hmac.new(key.secret, canonical_bytes(document, routing_key), hashlib.sha256).hexdigest()


def signature(key: ClusterKey, document: Mapping[str, Any], routing_key: str) -> str:
    """The ``sig`` value: ``v1:<kid>:<hex>``."""
    return f"{SIGNATURE_VERSION}:{key.kid}:{digest(key, document, routing_key)}"


def parse_signature(sig: str) -> ParsedSignature | None:
    """Split ``v1:<kid>:<hex>``; None for any other shape (an unknown version is as bad as garbage)."""
    parts = sig.split(":")
    if len(parts) != 3 or parts[0] != SIGNATURE_VERSION or not parts[1] or not parts[2]:
        return None
    return ParsedSignature(parts[1], parts[2])


def check_signature(keyring: Keyring, document: Mapping[str, Any], routing_key: str) -> str | None:
    """None when ``document``'s ``sig`` verifies under a key of ``keyring``, else why not, in a few words.

    Read-only on purpose: no clock and no nonce is claimed, so an observer (bus-tail) can say whether an intent
    is authentic without making the node that will handle it see a replay. Times and replays are the node's
    business (``IntentVerifier``), which also checks the signature first and in the same way.
    """
    sig = document.get("sig")
    if not isinstance(sig, str) or not sig:
        return "unsigned"
    parsed = parse_signature(sig)
    if parsed is None:
        return "bad signature (not v1:<kid>:<hex>)"
    key = keyring.by_kid(parsed.kid)
    if key is None:
        return f"bad signature (unknown key id {parsed.kid})"
    if not hmac.compare_digest(digest(key, document, routing_key).encode(), parsed.digest.encode()):
        return f"bad signature (mismatch under key {key.kid})"
    return None


def new_nonce() -> str:
    """128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def sign_envelope(
    envelope: Envelope[Any],
    routing_key: str,
    key: ClusterKey,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    clock: WallClock = time.time,
) -> Envelope[Any]:
    """A copy of ``envelope`` valid for ``ttl_s`` seconds on ``routing_key`` only: fresh ``exp``, fresh
    ``nonce``, and the ``sig`` over both. The original is left unsigned (envelopes are frozen)."""
    expires = datetime.fromtimestamp(clock(), UTC) + timedelta(seconds=ttl_s)
    stamped = envelope.model_copy(update={"exp": expires, "nonce": new_nonce(), "sig": None})
    sig = signature(key, envelope_document(stamped), routing_key)
    return stamped.model_copy(update={"sig": sig})
