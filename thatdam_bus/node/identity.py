"""A stable node id, created once and kept in ``<state_dir>/node_id`` (the seeds' location and format)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from thatdam_bus.errors import ConfigError

NODE_ID_FILE = "node_id"
_VALID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def load_or_create_node_id(state_dir: Path) -> str:
    """Read the node id, or create it atomically so two processes starting together agree on one id."""
    path = state_dir / NODE_ID_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        existing = _read(path)
        if existing is not None:
            return existing
        candidate = str(uuid.uuid4())  # the seeds: "stable UUIDv4 string"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            existing = _read(path)
            if existing is None:
                raise ConfigError(f"{path} exists but holds no node id") from None
            return existing
        with os.fdopen(fd, "w") as handle:
            handle.write(candidate + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return candidate
    except OSError as exc:
        raise ConfigError(f"cannot use state directory {state_dir}: {exc.strerror}") from exc


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    if not _VALID.match(text):
        raise ConfigError(f"{path} holds {text!r}, which is not a valid node id (letters, digits, '_', '-')")
    return text
