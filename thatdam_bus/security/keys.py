"""The cluster key: one shared secret that signs intents, plus an optional previous key during rotation.

Signing always uses the current key; verification accepts either, chosen by the key id carried in the
signature, so a rotation is: give every node the new key with the old one as ``THATDAM_CLUSTER_KEY_PREVIOUS``,
switch the senders, then drop the previous key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from thatdam_bus.config import Settings
from thatdam_bus.errors import ConfigError

KEY_ID_LENGTH = 8


@dataclass(frozen=True)
class ClusterKey:
    """A secret plus its public id (first 8 hex digits of its SHA-256), which names it in signatures."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.secret:
            raise ConfigError("a cluster key must not be empty")

    @classmethod
    def from_text(cls, text: str) -> ClusterKey:
        """Any string; its UTF-8 bytes are the HMAC key (so shell scripts can use it as typed)."""
        return cls(text.encode("utf-8"))

    @property
    def kid(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:KEY_ID_LENGTH]

    def __repr__(self) -> str:
        return f"<ClusterKey kid={self.kid}>"


@dataclass(frozen=True)
class Keyring:
    """The keys a process holds: ``current`` signs and verifies, ``previous`` only verifies (rotation)."""

    current: ClusterKey | None = None
    previous: ClusterKey | None = None

    def by_kid(self, kid: str) -> ClusterKey | None:
        """The key a signature names. Without a current key nothing verifies: a node must not keep accepting
        intents under a key it has been told to retire."""
        if self.current is None:
            return None
        keys = (self.current, self.previous)
        return next((key for key in keys if key is not None and key.kid == kid), None)

    @property
    def kids(self) -> list[str]:
        return [key.kid for key in (self.current, self.previous) if key is not None]


def _read_key(secret: SecretStr | None, path: Path | None, variable: str) -> ClusterKey | None:
    """One key from its variable or its ``_FILE`` twin (trailing newline stripped: ``echo key > file``)."""
    if secret is not None and path is not None:
        raise ConfigError(f"set {variable} or {variable}_FILE, not both")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invalid {variable}_FILE: cannot read {path}: {exc}") from exc
        if not text:
            raise ConfigError(f"invalid {variable}_FILE: {path} is empty")
        return ClusterKey.from_text(text)
    if secret is None:
        return None
    if not secret.get_secret_value():
        raise ConfigError(f"invalid {variable}: empty")
    return ClusterKey.from_text(secret.get_secret_value())


def load_keyring(settings: Settings) -> Keyring:
    """The keys configured by ``THATDAM_CLUSTER_KEY[_FILE]`` and ``THATDAM_CLUSTER_KEY_PREVIOUS[_FILE]``."""
    return Keyring(
        current=_read_key(settings.cluster_key, settings.cluster_key_file, "THATDAM_CLUSTER_KEY"),
        previous=_read_key(
            settings.cluster_key_previous, settings.cluster_key_previous_file, "THATDAM_CLUSTER_KEY_PREVIOUS"
        ),
    )


def signing_key(settings: Settings) -> ClusterKey:
    """The key a publisher signs with; its absence is a configuration error that names the variable."""
    key = load_keyring(settings).current
    if key is None:
        raise ConfigError(
            "no cluster key: set THATDAM_CLUSTER_KEY (or THATDAM_CLUSTER_KEY_FILE) to sign intents"
        )
    return key
