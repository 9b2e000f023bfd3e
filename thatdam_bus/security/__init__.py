"""Signed intents: the cluster key, HMAC signatures bound to routing keys, the replay guard, and the verifier
that stands between an intent and its handler. See README "Publishing intents from scripts" for the recipe."""

from thatdam_bus.security.keys import ClusterKey, Keyring, load_keyring, signing_key
from thatdam_bus.security.replay import NonceCache
from thatdam_bus.security.signing import canonical_bytes, envelope_document, sign_envelope, signature
from thatdam_bus.security.verifier import IntentVerifier, Rejection, intent_verifier

__all__ = [
    "ClusterKey",
    "IntentVerifier",
    "Keyring",
    "NonceCache",
    "Rejection",
    "canonical_bytes",
    "envelope_document",
    "intent_verifier",
    "load_keyring",
    "sign_envelope",
    "signature",
    "signing_key",
]
