"""``IntentVerifier``: decides whether a signed intent may reach its handler, and if not, why (in two words).

Checks, cheapest-to-forge last: a key on this node, a signature at all, the right signature (constant-time),
then the times it vouches for, then the nonce. Times are checked only on authentic envelopes, so a forged
one is reported as what it is ("bad signature"), not as "expired".
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from thatdam_bus.config import Settings
from thatdam_bus.envelope import Envelope
from thatdam_bus.security.keys import Keyring, load_keyring
from thatdam_bus.security.ratelimit import RateLimiter
from thatdam_bus.security.replay import NonceCache
from thatdam_bus.security.signing import WallClock, digest, envelope_document, parse_signature

log = logging.getLogger("thatdam_bus.security")

NO_KEY = "no cluster key on this node"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad signature"
EXPIRED = "expired"
FROM_THE_FUTURE = "from the future"
REPLAYED = "replayed nonce"
RATE_LIMITED = "rate limited"


@dataclass(frozen=True)
class Rejection:
    """Why an intent was refused: ``reason`` is one of the short strings above (dead-letter header, intent
    result); ``detail`` is for the log only, so it may say more without widening the contract."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


def _aware(moment: datetime) -> datetime:
    """A timestamp without an offset is read as UTC (what every thatdam sender writes)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class IntentVerifier:
    """Verifies signed intents against a keyring, a clock and a replay cache (one per node)."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        ttl_s: float = 60.0,
        max_skew_s: float = 30.0,
        nonce_cache_size: int = 100_000,
        clock: WallClock = time.time,
        limiter: RateLimiter | None = None,
    ) -> None:
        """``limiter``: intents per source (``THATDAM_INTENT_RATE``); None accepts any rate."""
        self.keyring = keyring
        self.limiter = limiter
        self.ttl_s = ttl_s
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.nonces = NonceCache(ttl_s + max_skew_s, nonce_cache_size, clock)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: WallClock = time.time) -> IntentVerifier:
        return cls(
            load_keyring(settings),
            ttl_s=settings.intent_ttl_s,
            max_skew_s=settings.intent_max_skew_s,
            nonce_cache_size=settings.nonce_cache_size,
            clock=clock,
            limiter=RateLimiter(settings.intent_rate, settings.intent_burst),
        )

    @property
    def has_key(self) -> bool:
        return self.keyring.current is not None

    def verify(
        self, envelope: Envelope[Any], routing_key: str, document: Mapping[str, Any] | None = None,
        *, scope: str = "",
    ) -> Rejection | None:
        """None when the intent may run (its nonce is then claimed), else the rejection.

        ``document`` is the JSON object as received; without it the envelope's own serialization is used.
        ``scope`` names the consumer (the handler): two services on one node that both bind an intent each
        get their own copy, and the second copy is not a replay.
        """
        if not self.has_key:
            return Rejection(NO_KEY, "set THATDAM_CLUSTER_KEY")
        rejection = self._check_signature(envelope, routing_key, document)
        if rejection is None and envelope.exp is not None:
            rejection = self._check_times(envelope.time, envelope.exp)
        if rejection is None and not self.nonces.claim(f"{scope}\0{envelope.nonce}"):
            rejection = Rejection(REPLAYED, f"nonce {envelope.nonce} seen within {self.nonces.window_s:g}s")
        return rejection

    def release(self, envelope: Envelope[Any], *, scope: str = "") -> None:
        """The handler asked for another attempt: let the redelivery of this very intent through."""
        self.nonces.release(f"{scope}\0{envelope.nonce}")

    def _check_signature(
        self, envelope: Envelope[Any], routing_key: str, document: Mapping[str, Any] | None
    ) -> Rejection | None:
        if not envelope.sig:
            return Rejection(UNSIGNED, "no sig")
        if envelope.exp is None or not envelope.nonce:
            return Rejection(UNSIGNED, "a signed intent needs exp and nonce")
        parsed = parse_signature(envelope.sig)
        if parsed is None:
            return Rejection(BAD_SIGNATURE, "not v1:<kid>:<hex>")
        key = self.keyring.by_kid(parsed.kid)
        if key is None:
            return Rejection(BAD_SIGNATURE, f"unknown key id {parsed.kid} (known: {self.keyring.kids})")
        expected = digest(key, document if document is not None else envelope_document(envelope), routing_key)
        if not hmac.compare_digest(expected.encode(), parsed.digest.encode()):
            return Rejection(BAD_SIGNATURE, f"mismatch under key {key.kid}")
        return None

    def _check_times(self, sent_at: datetime, expires_at: datetime) -> Rejection | None:
        now = self.clock()
        exp = _aware(expires_at).timestamp()
        sent = _aware(sent_at).timestamp()
        if exp < now:
            return Rejection(EXPIRED, f"{now - exp:.1f}s ago")
        if sent > now + self.max_skew_s:
            return Rejection(FROM_THE_FUTURE, f"sent {sent - now:.1f}s ahead of this node's clock")
        if exp > now + self.ttl_s + self.max_skew_s:
            return Rejection(FROM_THE_FUTURE, f"expires in {exp - now:.0f}s, beyond the {self.ttl_s:g}s TTL")
        return None

    def __repr__(self) -> str:
        return (f"<IntentVerifier keys={self.keyring.kids} ttl={self.ttl_s:g}s skew={self.max_skew_s:g}s "
                f"limiter={self.limiter!r}>")


def intent_verifier(settings: Settings, *, clock: WallClock = time.time) -> IntentVerifier:
    """The node's verifier, built once at start. Logs (once, here) which keys it accepts, or a WARNING that
    this node refuses every signed intent because it has no key."""
    verifier = IntentVerifier.from_settings(settings, clock=clock)
    if verifier.has_key:
        log.info("accepting intents signed with key ids %s", verifier.keyring.kids)
    else:
        log.warning("no cluster key (THATDAM_CLUSTER_KEY): this node refuses every signed intent")
    return verifier
