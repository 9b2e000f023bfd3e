"""Not collected by the suite (no ``test_`` file name): ``test_teardown.py`` runs it in a pytest of its own.

A test that fails half-way through a multi-host run, with the infrastructure host and a node host up."""

from __future__ import annotations

from tests.multihost.harness import MultiHostCluster, wait_line


async def test_fails_with_hosts_and_processes_up(bed: MultiHostCluster) -> None:
    await bed.start_infra()
    _, node = bed.start_on("h1")
    await wait_line(node, "up as", timeout=20)
    raise AssertionError("a failure while the bed is in use")
