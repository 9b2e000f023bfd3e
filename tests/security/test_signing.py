"""Signing and verification as pure functions: a controllable clock, no broker."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thatdam_bus import CaptureStartIntent, ConfigError, Envelope
from thatdam_bus.config import load_settings
from thatdam_bus.security import (
    ClusterKey,
    IntentVerifier,
    Keyring,
    NonceCache,
    canonical_bytes,
    envelope_document,
    intent_verifier,
    load_keyring,
    sign_envelope,
    signing_key,
)
from thatdam_bus.security.verifier import (
    BAD_SIGNATURE,
    EXPIRED,
    FROM_THE_FUTURE,
    NO_KEY,
    REPLAYED,
    UNSIGNED,
)

KEY = ClusterKey.from_text("correct horse battery staple")
OLD_KEY = ClusterKey.from_text("last year's key")
ROUTE = "intent.capture.start"
T0 = 1_800_000_000.0
KEYRING = Keyring(KEY)


class FakeClock:
    """Wall time that only moves when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def intent(when: float = T0, **data: Any) -> Envelope[CaptureStartIntent]:
    payload = CaptureStartIntent(**{"node_id": "n1", "device": "video0", **data})
    return Envelope[CaptureStartIntent](type=payload.event_type, source="thatdam://test/tool/client",
                                        time=datetime.fromtimestamp(when, UTC), data=payload)


def signed(key: ClusterKey = KEY, when: float = T0, ttl_s: float = 60.0, route: str = ROUTE) -> Envelope[Any]:
    return sign_envelope(intent(when), route, key, ttl_s=ttl_s, clock=lambda: when)


def verifier(clock: FakeClock, keyring: Keyring = KEYRING, **kw: Any) -> IntentVerifier:
    return IntentVerifier(keyring, ttl_s=60, max_skew_s=30, clock=clock, **kw)


def reason(v: IntentVerifier, envelope: Envelope[Any], route: str = ROUTE,
           document: dict[str, Any] | None = None) -> str | None:
    rejection = v.verify(envelope, route, document)
    return None if rejection is None else rejection.reason


def test_round_trip_sets_exp_nonce_and_a_key_id() -> None:
    envelope = signed()
    assert envelope.exp == datetime.fromtimestamp(T0, UTC) + timedelta(seconds=60)
    assert envelope.nonce is not None and len(envelope.nonce) == 32
    assert envelope.sig is not None and envelope.sig.startswith(f"v1:{KEY.kid}:")
    assert KEY.kid == hashlib.sha256(KEY.secret).hexdigest()[:8]
    assert reason(verifier(FakeClock()), envelope) is None


def test_the_signature_covers_the_wire_object_plus_the_routing_key() -> None:
    envelope = signed()
    document = orjson.loads(orjson.dumps(envelope_document(envelope)))
    body = {k: v for k, v in document.items() if k != "sig"}
    expected = hmac.new(KEY.secret, orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n" + ROUTE.encode(),
                        hashlib.sha256).hexdigest()
    assert envelope.sig == f"v1:{KEY.kid}:{expected}"
    assert canonical_bytes(document, ROUTE).endswith(b"\n" + ROUTE.encode())


def test_tampered_data_or_another_routing_key_is_a_bad_signature() -> None:
    envelope = signed()
    tampered = envelope.model_copy(update={"data": CaptureStartIntent(node_id="n1", device="video1")})
    assert reason(verifier(FakeClock()), tampered) == BAD_SIGNATURE
    assert reason(verifier(FakeClock()), envelope, "intent.capture.stop") == BAD_SIGNATURE
    garbled = envelope.model_copy(update={"sig": "v1:nonsense"})
    assert reason(verifier(FakeClock()), garbled) == BAD_SIGNATURE


def test_unsigned_and_half_signed_envelopes() -> None:
    assert reason(verifier(FakeClock()), intent()) == UNSIGNED
    assert reason(verifier(FakeClock()), signed().model_copy(update={"nonce": None})) == UNSIGNED


def test_no_key_on_this_node_refuses_everything() -> None:
    assert reason(verifier(FakeClock(), Keyring()), signed()) == NO_KEY
    assert reason(verifier(FakeClock(), Keyring(previous=KEY)), signed()) == NO_KEY


def test_expired_and_future_dated_intents() -> None:
    clock = FakeClock()
    v = verifier(clock)
    clock.now = T0 + 61
    assert reason(v, signed()) == EXPIRED
    clock.now = T0 - 31  # sent more than the 30 s skew ahead of this node's clock
    assert reason(v, signed()) == FROM_THE_FUTURE
    clock.now = T0
    assert reason(v, signed(ttl_s=3600)) == FROM_THE_FUTURE  # a lifetime beyond TTL + skew
    clock.now = T0 - 29  # within the skew: accepted
    assert reason(v, signed()) is None


def test_a_nonce_is_accepted_once_until_released() -> None:
    v = verifier(FakeClock())
    envelope = signed()
    assert reason(v, envelope) is None
    assert reason(v, envelope) == REPLAYED
    v.release(envelope)  # the handler asked for a retry: the redelivery is the same intent, not a replay
    assert reason(v, envelope) is None


def test_rotation_accepts_the_previous_key_only_when_configured() -> None:
    old = signed(OLD_KEY)
    assert reason(verifier(FakeClock(), Keyring(KEY, previous=OLD_KEY)), old) is None
    assert reason(verifier(FakeClock(), Keyring(KEY)), old) == BAD_SIGNATURE
    assert reason(verifier(FakeClock(), Keyring(KEY, previous=OLD_KEY)), signed(KEY)) is None


def test_nonce_cache_is_bounded_in_size_and_in_time() -> None:
    clock = FakeClock()
    cache = NonceCache(window_s=10, capacity=3, clock=clock)
    assert all(cache.claim(n) for n in "abcd")
    assert len(cache) == 3 and cache.evicted == 1 and "a" not in cache and "d" in cache
    clock.now += 5
    assert not cache.claim("d")
    clock.now += 5.01
    assert len(cache) == 0
    assert cache.claim("d")


def test_the_replay_window_is_ttl_plus_skew() -> None:
    clock = FakeClock()
    v = verifier(clock)
    assert v.nonces.window_s == 90
    envelope = signed()
    assert reason(v, envelope) is None
    clock.now += 59
    assert reason(v, envelope) == REPLAYED


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
_FIELDS = ["specversion", "id", "type", "source", "time", "datacontenttype", "data", "epoch", "seq", "exp",
           "nonce", "data.node_id", "data.device", "subject", "data.fps"]


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(_FIELDS), value=_json, remove=st.booleans())
def test_changing_any_one_field_breaks_the_signature(field: str, value: Any, remove: bool) -> None:
    envelope = signed()
    document = orjson.loads(orjson.dumps(envelope_document(envelope)))
    target, name = (document["data"], field[5:]) if field.startswith("data.") else (document, field)
    if remove:
        if name not in target:
            return
        del target[name]
    else:
        if target.get(name, ...) == value and name in target:
            return
        target[name] = value
    assert reason(verifier(FakeClock()), envelope, document=document) == BAD_SIGNATURE


def test_keys_from_variables_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from a file\n")
    monkeypatch.setenv("THATDAM_CLUSTER_KEY_FILE", str(key_file))
    monkeypatch.setenv("THATDAM_CLUSTER_KEY_PREVIOUS", "older")
    keyring = load_keyring(load_settings())
    assert keyring.current == ClusterKey(b"from a file")
    assert keyring.previous == ClusterKey(b"older")
    assert "from a file" not in repr(keyring)
    monkeypatch.setenv("THATDAM_CLUSTER_KEY", "also set")
    with pytest.raises(ConfigError, match="THATDAM_CLUSTER_KEY or THATDAM_CLUSTER_KEY_FILE"):
        load_keyring(load_settings())


def test_a_publisher_without_a_key_is_told_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("THATDAM_CLUSTER_KEY", "THATDAM_CLUSTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="THATDAM_CLUSTER_KEY"):
        signing_key(load_settings())


def test_a_keyless_node_says_once_that_it_refuses_intents(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    for name in ("THATDAM_CLUSTER_KEY", "THATDAM_CLUSTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING, logger="thatdam_bus.security"):
        v = intent_verifier(load_settings())
    assert not v.has_key
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "refuses every signed intent" in caplog.records[0].getMessage()


def test_each_consumer_of_an_intent_guards_its_own_copy() -> None:
    v = verifier(FakeClock())
    envelope = signed()
    assert v.verify(envelope, ROUTE, scope="capture.start") is None
    assert v.verify(envelope, ROUTE, scope="audit.record") is None  # a second service's own copy
    assert reason(v, envelope) is None
    rejection = v.verify(envelope, ROUTE, scope="capture.start")
    assert rejection is not None and rejection.reason == REPLAYED
