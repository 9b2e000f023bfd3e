"""A network of hosts on one machine: network namespaces plugged into a Linux bridge, built and torn down by the
tests (root only), with real partitions (a host's switch port goes down).

    root namespace:  bridge td<tag>br (no address: the root namespace is not a host on this network)
                       |-- td<tag><host> (veth)  <->  eth0 10.77.<net>.<octet>/24 in namespace td<tag><host>

Every name carries a per-run tag, and ``/run/thatdam-testbed/<tag>`` holds the owning pid: a bed whose pytest
died without its finalizers (SIGKILL) is swept by the next run, never one that is still in use.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ON_CI

IP = shutil.which("ip") or "/usr/sbin/ip"
REGISTRY = Path("/run/thatdam-testbed")


def require_netns() -> None:
    """Root builds the bed (and CI always tries, so a missing capability fails there); others skip, visibly."""
    if os.geteuid() != 0 and not ON_CI:
        pytest.skip("multi-host test bed needs root (ip netns, veth, bridge); CI runs it")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=10)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    name: str
    netns: str
    port: str
    """The root-side end of its veth: its port on the switch."""
    address: str

    def wrap(self) -> list[str]:
        """Command prefix that runs a program on this host (``ip netns exec`` execs: the pid is the program's)."""
        return [IP, "netns", "exec", self.netns]


class NetBed:
    """One bridge and its hosts; ``close()`` removes everything (processes in the namespaces included)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.net = f"10.77.{random.randint(1, 254)}"
        self.bridge = f"td{self.tag}br"
        self.hosts: dict[str, Host] = {}

    def open(self) -> None:
        sweep_stale_beds()
        REGISTRY.mkdir(exist_ok=True)
        (REGISTRY / self.tag).write_text(str(os.getpid()))
        ip("link", "add", self.bridge, "type", "bridge")
        (Path("/sys/class/net") / self.bridge / "bridge" / "multicast_snooping").write_text("0")
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str, octet: int, *, plugged: bool = True) -> Host:
        host = Host(name, f"td{self.tag}{name}", f"td{self.tag}{name}", f"{self.net}.{octet}")
        self.hosts[name] = host
        ip("netns", "add", host.netns)
        ip("link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("link", "set", host.port, "master", self.bridge)
        ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip("-n", host.netns, "link", "set", "eth0", "up")
        ip("-n", host.netns, "link", "set", "lo", "up")
        if plugged:
            self.plug(host)
        return host

    def plug(self, host: Host) -> float:
        """Its switch port up; returns the monotonic time it was done."""
        ip("link", "set", host.port, "up")
        return time.monotonic()

    def unplug(self, host: Host) -> float:
        """Its switch port down (the cable pulled): nothing reaches the host or leaves it."""
        ip("link", "set", host.port, "down")
        return time.monotonic()

    def close(self) -> None:
        for host in self.hosts.values():
            kill_namespace(host.netns)
            ip("link", "del", host.port, check=False)
            ip("netns", "del", host.netns, check=False)
        ip("link", "del", self.bridge, check=False)
        with contextlib.suppress(FileNotFoundError):
            (REGISTRY / self.tag).unlink()


def kill_namespace(netns: str) -> None:
    """SIGKILL whatever still runs in ``netns`` (a node that outlived its test)."""
    listed = ip("netns", "pids", netns, check=False).stdout.split()
    for pid in listed:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep_stale_beds() -> None:
    """Remove beds whose owner is gone (a run killed before its finalizers)."""
    if not REGISTRY.is_dir():
        return
    for entry in REGISTRY.iterdir():
        with contextlib.suppress(ValueError, OSError):
            if _alive(int(entry.read_text())):
                continue
        prefix = f"td{entry.name}"
        for netns in ip("netns", "list", check=False).stdout.split():
            if netns.startswith(prefix):
                kill_namespace(netns)
                ip("netns", "del", netns, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(prefix):
                ip("link", "del", name, check=False)
        entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
