"""Helpers for the frame services on the bus: a tap that decodes what it sees, nodes with known ids, the
``thatdam publish`` CLI run without blocking the loop, and a reader of a node's SQLite catalogue."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tests.nodes import BIN, NodeProcess, node_env
from tests.support import wait_until
from thatdam_bus.events import FrameReady
from thatdam_bus.transports.base import ACK, Delivery, Outcome, QueueSpec, Transport

KEY = "frames test cluster key"


@dataclass
class Seen:
    routing_key: str
    event: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        return self.event["data"]  # type: ignore[no-any-return]

    def frame(self) -> FrameReady:
        return FrameReady.model_validate(self.data)


@dataclass
class Tap:
    """An ephemeral fan-out subscription that decodes every envelope it gets (never steals work)."""

    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> Outcome:
        self.seen.append(Seen(delivery.routing_key, orjson.loads(delivery.body)))
        return ACK

    @classmethod
    async def on(cls, transport: Transport, *patterns: str) -> Tap:
        tap = cls()
        await transport.subscribe(QueueSpec(patterns=patterns, prefetch=512), tap)
        return tap

    def matching(self, predicate: Callable[[str], bool]) -> list[Seen]:
        return [s for s in self.seen if predicate(s.routing_key)]

    def keyed(self, routing_key: str) -> list[Seen]:
        return self.matching(lambda key: key == routing_key)

    def prefixed(self, prefix: str) -> list[Seen]:
        return self.matching(lambda key: key.startswith(prefix))

    async def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        await wait_until(predicate, timeout, what)


def start_node(state_dir: Path, node_id: str, **env: str) -> NodeProcess:
    """A ``thatdam up`` process whose node id is known before it starts (written where it reads it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "node_id").write_text(node_id + "\n")
    return NodeProcess(state_dir, **env)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


async def publish_cli(state_dir: Path, routing_key: str, data: dict[str, Any], *, timeout: float = 15.0,
                      env: dict[str, str] | None = None) -> CliResult:
    """``thatdam publish ROUTING_KEY --data JSON --wait`` as a script would run it (a child process)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "thatdam"), "publish", routing_key, "--data", orjson.dumps(data).decode(), "--wait",
        "--timeout", str(timeout), env=node_env(state_dir, THATDAM_CLUSTER_KEY=KEY, **(env or {})),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(timeout + 30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def catalogue_ids(path: Path) -> list[str]:
    """Every envelope id in a node's catalogue (duplicates kept, to be counted); [] before it exists."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [row[0] for row in db.execute("SELECT id FROM frames")]
    except sqlite3.OperationalError:  # the table is being created
        return []
    finally:
        db.close()
