"""A private RabbitMQ node for tests that crash and restart a broker: the machine's shared broker is never touched.

The node runs from the installed RabbitMQ as this user, with its own node name, ports, config, data directory
(mnesia), log directory, an empty plugin list and its own ``HOME`` (hence its own Erlang cookie, which
``rabbitmqctl`` finds through the same ``HOME``). It registers with the machine's epmd like any other node.
``crash()`` kills the whole process group (SIGKILL, no clean shutdown) and ``start()`` boots it again on the same
data directory, so durable queues and confirmed persistent messages must survive, as after a power cut.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

SERVER_CANDIDATES = (Path("/usr/lib/rabbitmq/bin/rabbitmq-server"),)
BOOT_TIMEOUT_S = 30.0


def find_server() -> Path | None:
    """The real server script (not the distribution's ``su rabbitmq`` wrapper, which changes user and HOME)."""
    for candidate in SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    return Path(found) if found and os.geteuid() != 0 else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateBroker:
    """One RabbitMQ node under ``root``; ``url`` reaches it as guest (allowed from localhost)."""

    def __init__(self, server: Path, root: Path) -> None:
        self.server = server
        self.root = root
        self.node = f"thatdam-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        for name in ("mnesia", "log", "home"):
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's: its NODENAME is the shared node's
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> None:
        """Boot (or boot again, on the same data) in its own process group."""
        with (self.root / "server.out").open("ab") as out:
            self.proc = subprocess.Popen([str(self.server)], env=self.env(), cwd=self.root, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Wait until the AMQP listener accepts (the last step of boot); returns how long that took."""
        started = time.monotonic()
        while not await asyncio.to_thread(_accepts, self.port):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"private RabbitMQ exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() - started > timeout:
                raise AssertionError(f"private RabbitMQ not up within {timeout}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def crash(self) -> None:
        """SIGKILL the whole node (no clean shutdown, like a power cut), reap it, and wait until its listener is
        gone (a killed VM takes a moment to die: a port that still accepts is not the next boot's)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait, 10)
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(_accepts, self.port):
            if time.monotonic() > deadline:
                raise AssertionError(f"port {self.port} still accepts 10 s after the node was killed")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Halt the node cleanly if it runs; kill its process group if that does not end it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        ctl = self.server.with_name("rabbitmqctl")
        try:
            subprocess.run([str(ctl), "-n", self.node, "stop"], env=self.env(), capture_output=True, timeout=20)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        logs = [*sorted((self.root / "log").glob("*.log")), self.root / "server.out"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
        return "\n".join(text.splitlines()[-lines:])
