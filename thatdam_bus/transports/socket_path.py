"""Claiming the path of the bus socket: owner-only permissions, stale files removed, live nodes respected.

A node that crashed leaves its socket file behind; the next one may take the path only if nobody answers
there. A path that answers belongs to a live node, and a path that is not a socket is never deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from pathlib import Path

from thatdam_bus.errors import ConfigError, TransportError

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 1.0


async def claim_socket_path(path: Path) -> None:
    """Make the path usable: the directory must exist, a stale socket is removed, a live one is refused."""
    if not path.parent.is_dir():
        raise ConfigError(f"bus socket directory {path.parent} does not exist")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    if await _someone_listens(path):
        raise TransportError(f"another node is already serving the bus on {path}")
    log.info("removing stale bus socket %s (nobody listens)", path)
    path.unlink(missing_ok=True)


async def _someone_listens(path: Path) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a listener too busy to accept is still a listener: never steal its path
    except PermissionError as exc:
        raise ConfigError(f"{path} belongs to another user's bus; refusing to replace it") from exc
    writer.close()
    await writer.wait_closed()
    return True


def bind_private_socket(path: Path) -> socket.socket:
    """Bind, chmod 0600, and only then listen (create_unix_server does), so only the owner can connect."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if "too long" in str(exc):
            raise ConfigError(f"bus socket path {path} is too long for a Unix socket") from exc
        raise TransportError(f"cannot bind the bus socket {path}: {exc}") from exc
    try:
        os.chmod(path, 0o600)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        path.unlink(missing_ok=True)
        raise TransportError(f"cannot make the bus socket {path} private: {exc}") from exc
    return sock
