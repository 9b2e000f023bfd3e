"""Idle node: what a solo ``thatdam up`` with nothing to do costs in memory and CPU.

    .venv/bin/python bench/idle_bench.py [--seconds 60] [--mdns on|off]

One ``thatdam up`` process with its own state dir, no sources, no services, no endpoints in the environment (so
it settles for solo: embedded broker on ``bus.sock``, flight-recorder ring, and, with mDNS on as installed by
default, advertising itself and browsing for the infrastructure). Startup has settled when the node logged
``up as solo`` and two consecutive one-second samples of its CPU are under 5 % (deadline 30 s); then, for
``--seconds``, ``/proc/<pid>``: ``VmRSS`` sampled every second (the figure is the max), and the CPU time of every
thread over the whole window as % of one core. It is stopped with SIGTERM and must exit 0.

No baseline exists for these; each "baseline" is the row's budget (ratio = value / budget): RSS <= 90 MB
(MiB, as ``VmRSS`` counts), CPU <= 2 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Row, command_line
from nodes import Node, cpu_seconds, finish, rss_kib, stop_all

RSS_BUDGET_MB = 90.0
CPU_BUDGET_PCT = 2.0
SETTLED_PCT = 5.0


async def settle(node: Node, timeout: float = 30.0) -> float:
    """Wait for ``up as solo`` then two quiet seconds in a row; returns how long startup took."""
    began = time.monotonic()
    await node.wait_log(" up as solo ", timeout=timeout)
    quiet = 0
    async with asyncio.timeout(timeout):
        while quiet < 2:
            before = cpu_seconds(node.pid)
            await asyncio.sleep(1.0)  # one CPU sample
            quiet = quiet + 1 if 100 * (cpu_seconds(node.pid) - before) < SETTLED_PCT else 0
    return time.monotonic() - began


async def observe(node: Node, seconds: float) -> dict[str, Any]:
    """RSS every second and the CPU over ``seconds``."""
    samples: list[int] = []
    cpu0, t0 = cpu_seconds(node.pid), time.monotonic()
    while time.monotonic() - t0 < seconds:
        samples.append(rss_kib(node.pid))
        await asyncio.sleep(min(1.0, max(0.0, seconds - (time.monotonic() - t0))))
    cpu1, t1 = cpu_seconds(node.pid), time.monotonic()
    threads = sum(1 for _ in Path(f"/proc/{node.pid}/task").iterdir())
    return {"rss_max_mb": max(samples) / 1024, "rss_first_mb": samples[0] / 1024, "rss_last_mb": samples[-1] / 1024,
            "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "cpu_s": cpu1 - cpu0, "window_s": t1 - t0,
            "threads": threads, "rss_samples_mb": [round(s / 1024, 2) for s in samples]}


async def main(args: argparse.Namespace) -> list[Row]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        node = Node(Path(tmp) / "node", "idle-bench", {"THATDAM_MDNS": args.mdns})
        try:
            node.start()
            startup_s = await settle(node)
            print(f"settled {startup_s:.1f} s after start; measuring {args.seconds:g} s", flush=True)
            figures = await observe(node, args.seconds)
            node.send(signal.SIGTERM)
            if (code := await node.wait_exit()) != 0:
                raise RuntimeError(f"idle node exited {code} on SIGTERM:\n{node.log()[-2000:]}")
        finally:
            stop_all([node])
    extra = {**figures, "startup_s": startup_s, "mdns": args.mdns, "load_average_before": load_before,
             "load_average_after": os.getloadavg()}
    command, title = command_line(), f"Idle solo node (mDNS {args.mdns}), {args.seconds:g} s"
    rows = [
        Row("idle_rss", f"{title}: RSS (max)", command, "max VmRSS", "MB", RSS_BUDGET_MB, figures["rss_max_mb"],
            "<= 1x, i.e. <= 90 MB", figures["rss_max_mb"] <= RSS_BUDGET_MB, 1, extra=extra),
        Row("idle_cpu", f"{title}: CPU", command, "% of one core", "%", CPU_BUDGET_PCT, figures["cpu_pct"],
            "<= 1x, i.e. <= 2 % of one core", figures["cpu_pct"] <= CPU_BUDGET_PCT, 1, extra=extra),
    ]
    return [finish(row) for row in rows]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument("--mdns", choices=("on", "off"), default="on", help="THATDAM_MDNS (default: on, as installed)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
