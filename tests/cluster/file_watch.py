"""A reader that polls every ``<root>/*/cluster.json`` in a tight loop, in its own process so it competes with
the nodes for the file and not with the test's event loop for the GIL.

Every read is parsed twice: ``ClusterFile.model_validate_json`` (our model) and the seeds' required keys
(``version, node_id, role, leader{url, advertised_via, last_seen}, services``). A torn or partial file fails both.
Run as ``python -m tests.cluster.file_watch ROOT OUT``; on SIGTERM it writes a JSON summary to OUT:
``{"reads": n, "files": {path: {"reads": n, "states": [[role, leader_url, epoch], ...]}}, "errors": [...]}``
where ``states`` lists each distinct consecutive state seen (so every transition is in it).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from thatdam_bus.events.node import Role
from thatdam_bus.node.cluster_file import ClusterFile

MAX_ERRORS = 20


def seeds_problems(raw: Any) -> list[str]:
    """What the seeds' cluster.json schema (version 1) requires and ``raw`` lacks."""
    if not isinstance(raw, dict):
        return ["not a JSON object"]
    problems = [f"missing {key}" for key in ("version", "node_id", "role", "leader", "services") if key not in raw]
    if raw.get("version") != 1:
        problems.append(f"version {raw.get('version')!r} is not 1")
    if raw.get("role") not in {r.value for r in Role}:
        problems.append(f"role {raw.get('role')!r}")
    leader = raw.get("leader")
    if not isinstance(leader, dict):
        problems.append(f"leader is {leader!r}, not an object")
    else:
        problems += [f"leader.{k} missing" for k in ("url", "advertised_via", "last_seen")
                     if not isinstance(leader.get(k), str) or not leader.get(k)]
    if not isinstance(raw.get("services"), dict):
        problems.append("services is not an object")
    return problems


def check(body: bytes) -> tuple[list[str], tuple[str, str, int] | None]:
    """Problems with one read of the file, and the state it describes (role, leader url, epoch)."""
    try:
        view = ClusterFile.model_validate_json(body)
    except ValidationError as exc:
        return [f"ClusterFile: {exc.errors()[0]['msg']} ({len(body)} bytes)"], None
    problems = seeds_problems(orjson.loads(body))
    return problems, (str(view.role), view.leader.url if view.leader else "", view.epoch)


class Watch:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.reads = 0
        self.files: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.paths: list[Path] = []

    def poll(self, *, rescan: bool = False) -> None:
        if rescan or self.reads % 64 == 0:
            self.paths = sorted(self.root.glob("*/cluster.json"))
        for path in self.paths:
            self.read(path)

    def read(self, path: Path) -> None:
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return
        self.reads += 1
        record = self.files.setdefault(str(path), {"reads": 0, "states": []})
        record["reads"] += 1
        problems, state = check(body)
        if problems and len(self.errors) < MAX_ERRORS:
            self.errors.append(f"{path.parent.name}: {'; '.join(problems)}")
        if state is not None and (not record["states"] or record["states"][-1] != list(state)):
            record["states"].append(list(state))

    def summary(self) -> bytes:
        return orjson.dumps({"reads": self.reads, "files": self.files, "errors": self.errors})


def main(root: str, out: str) -> None:
    watch = Watch(Path(root))
    running = True

    def finish(_sig: int, _frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, finish)
    print("watching", flush=True)
    while running:
        watch.poll()
    watch.poll(rescan=True)  # the final state of every file, however little CPU this niced reader got
    Path(out).write_bytes(watch.summary())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
