"""Running real ``thatdam up`` processes in tests: start, wait for readiness on a condition, stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent


def node_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: nothing from the developer's shell leaks into the node under test."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "THATDAM_STATE_DIR": str(state_dir), "HOME": str(state_dir),
           "THATDAM_MDNS": "off"}  # nor anything from the LAN: tests/multihost turns mDNS on in its own network
    env.update(extra)
    return env


class NodeProcess:
    """A ``thatdam up`` child process whose stderr (logfmt) is kept for assertions."""

    def __init__(self, state_dir: Path, *, wrap: Sequence[str] = (), **env: str) -> None:
        """``wrap``: a command prefix, e.g. ``ip netns exec <host>`` (it must exec, so the pid is the node's)."""
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*wrap, str(BIN / "thatdam"), "up"], env=node_env(state_dir, **env), stdout=self._log, stderr=self._log
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited ({self.proc.returncode}) before {needle!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
