"""``cluster.json``: the seeds' contract with the services' shell entrypoints, written atomically.

Schema (seeds, version 1): version, node_id, role, leader{url, advertised_via, last_seen}, services; plus our
epoch and members. Written to a temp file in the same directory, fsynced, then renamed over the old one, so a
reader never sees it half-written.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict

from thatdam_bus.events.node import Role

CLUSTER_FILE = "cluster.json"


class LeaderInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    advertised_via: str
    last_seen: datetime


class ClusterFile(BaseModel):
    """The observed cluster view of one node."""

    model_config = ConfigDict(extra="forbid")
    version: int = 1
    node_id: str
    role: Role
    leader: LeaderInfo | None = None
    services: dict[str, str] = {}
    epoch: int = 0
    members: list[str] = []


def write_cluster_file(state_dir: Path, view: ClusterFile) -> Path:
    """Atomically replace ``<state_dir>/cluster.json`` with ``view``."""
    target = state_dir / CLUSTER_FILE
    body = orjson.dumps(view.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    fd, temp = tempfile.mkstemp(prefix=".cluster.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def remove_cluster_file(state_dir: Path) -> None:
    """Forget the view an earlier process wrote: it describes a node that is no longer running (a role it no
    longer has). The seeds' entrypoints wait for the file while it is missing."""
    (state_dir / CLUSTER_FILE).unlink(missing_ok=True)


def read_cluster_file(state_dir: Path) -> ClusterFile | None:
    try:
        return ClusterFile.model_validate_json((state_dir / CLUSTER_FILE).read_bytes())
    except FileNotFoundError:
        return None
