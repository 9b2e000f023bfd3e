"""The bed leaves nothing behind, also when a test fails: a failing multi-host test runs in a pytest of its own,
and afterwards no namespace, link or process of it remains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.multihost.netbed import ip, require_netns

ROOT = Path(__file__).resolve().parents[2]
CASE = "tests/multihost/cases/failing_bed.py"


def bed_names() -> set[str]:
    """Every namespace and link of any bed (their names start with ``td``)."""
    namespaces = {line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()}
    links = {line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()}
    return {name for name in namespaces | links if name.startswith("td")}


def processes_under(path: Path) -> list[int]:
    """Pids whose environment names ``path`` (every node and helper of the inner run gets its state dir there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path).encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_failing_test_leaves_no_namespace_link_or_process(tmp_path: Path) -> None:
    require_netns()
    before = bed_names()
    inner = tmp_path / "inner"
    run = subprocess.run([sys.executable, "-m", "pytest", CASE, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          f"--basetemp={inner}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "a failure while the bed is in use" in run.stdout, run.stdout + run.stderr
    assert "1 failed" in run.stdout and "error" not in run.stdout.splitlines()[-1], run.stdout
    assert bed_names() - before == set()
    assert processes_under(inner) == []
