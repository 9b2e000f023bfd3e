"""Fixtures for the leadership acceptance tests: a ``Cluster`` per test (its own prefix, event log running before
any node starts, everything deleted at teardown), the cluster.json watcher, and ``figure`` for measurements."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cluster.harness import Cluster
from tests.cluster.terms import violations

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def cluster(rabbitmq: str, redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Nodes on an isolated prefix. At teardown the event log must show no leadership safety violation."""
    group = Cluster(tmp_path, prefix, rabbitmq, redis_url)
    await group.log.start()
    try:
        yield group
        ours = group.node_ids  # what a test injects by hand is judged by that test
        assert violations([seen for seen in group.log.seen if seen.sender in ours]) == []
    finally:
        await group.aclose()




class FileWatcher:
    """The ``file_watch`` reader process over every node's state dir under ``root``."""

    def __init__(self, root: Path) -> None:
        self.out = root / "file-watch.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.file_watch", str(root), str(self.out)],
            stdout=subprocess.PIPE, cwd=REPO, preexec_fn=lambda: os.nice(10),
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"watching\n"

    def finish(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.close()
        return orjson.loads(self.out.read_bytes())  # type: ignore[no-any-return]

    def clean_report(self) -> dict[str, Any]:
        """Finish, and require that every read of every cluster.json was whole and valid."""
        report = self.finish()
        assert report["errors"] == [], report["errors"]
        assert report["reads"] > 0 and report["files"]
        return report

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def file_watch(cluster: Cluster) -> Iterator[FileWatcher]:
    watcher = FileWatcher(cluster.root)
    try:
        yield watcher
    finally:
        if watcher.proc.poll() is None:
            watcher.proc.kill()
        watcher.close()
