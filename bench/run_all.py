"""Every benchmark of docs/performance.md in one go, then the plots.

    .venv/bin/python bench/run_all.py [--rounds 6] [--quick] [--only NAME ...]

Needs the local RabbitMQ (``THATDAM_BENCH_AMQP_URL``, default guest on 127.0.0.1:5672) for the amqp rows.
Each bench interleaves its baseline and ours round by round; results go to ``bench/results/``, plots to
``docs/img/``, and the table of ``docs/performance.md`` is rewritten from every result on disk (a row not run
this time keeps its last figures). ``--quick`` (2 rounds, smaller counts) is a smoke test, not a measurement:
its results, plots and table go to a scratch directory, never over the measured ones.
Takes about 22 minutes on a 2-core VM (the failover, membership, frames and idle rows take about 7 of them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import amqp_batching
import amqp_confirms
import amqp_latency
import amqp_throughput
import embedded_inprocess
import embedded_socket
import failover_bench
import frames_bench
import idle_bench
import membership_bench
import recorder_bench
from common import Row

BENCHES = {
    "amqp_throughput": (amqp_throughput, []),
    "amqp_confirms_quorum": (amqp_confirms, ["--queue-type", "quorum"]),
    "amqp_confirms_classic": (amqp_confirms, ["--queue-type", "classic"]),
    "amqp_latency": (amqp_latency, []),
    "amqp_batching": (amqp_batching, []),
    "embedded_inprocess": (embedded_inprocess, []),
    "embedded_socket": (embedded_socket, []),
    # Real `thatdam up` processes on RabbitMQ + Redis; one entry per ttl, so each stays under two minutes.
    "failover_sigkill_ttl2": (failover_bench, ["--ttl", "2"]),
    "failover_sigkill_ttl5": (failover_bench, ["--ttl", "5"]),
    "handover_sigterm_ttl5": (failover_bench, ["--signal", "term", "--ttl", "5"]),
    "membership": (membership_bench, []),
    "frames": (frames_bench, []),
    "idle": (idle_bench, []),
    "recorder_confirms": (recorder_bench, ["--mode", "confirms"]),
    "recorder_transient": (recorder_bench, ["--mode", "transient"]),
    "recorder_batched": (recorder_bench, ["--mode", "batched"]),
}
SINGLE_RUN = {"failover_sigkill_ttl2", "failover_sigkill_ttl5", "handover_sigterm_ttl5", "membership", "idle"}
"""Rows measured in one run (20 trials, one window) against a budget, not in interleaved rounds: no --rounds."""
QUICK = {"amqp_latency": ["--seconds", "2"], "amqp_batching": ["--count", "10000", "--seconds", "2"],
         "failover_sigkill_ttl2": ["--trials", "3"], "failover_sigkill_ttl5": ["--trials", "3"],
         "handover_sigterm_ttl5": ["--trials", "3"], "membership": ["--nodes", "200", "--lose", "10", "--seconds", "5"],
         "frames": ["--seconds", "10", "--paced-seconds", "5"], "idle": ["--seconds", "10"]}


async def main(args: argparse.Namespace) -> list[Row]:
    if args.quick:
        os.environ["THATDAM_BENCH_RESULTS"] = tempfile.mkdtemp(prefix="bench-quick-")
    rows = []
    for name, (module, argv) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        extra = [] if name in SINGLE_RUN else ["--rounds", str(2 if args.quick else args.rounds)]
        if args.quick:
            extra += QUICK.get(name, ["--count", "5000"])
        print(f"== {name}", flush=True)
        began = time.monotonic()
        sys.argv = [f"bench/{Path(module.__file__ or name).name}", *argv, *extra]  # the row's own command
        result = await module.main(module.parse_args(sys.argv[1:]))
        rows.extend(result if isinstance(result, list) else [result])  # some scripts print several rows
        print(f"   ({time.monotonic() - began:.0f} s)", flush=True)
    print()
    for row in rows:
        print(row.line())
    import plots  # matplotlib only now: loaded earlier it would sit in every publisher's heap (longer GCs)

    if args.quick:
        scratch = Path(os.environ["THATDAM_BENCH_RESULTS"])
        plots.main(scratch / "img")
        print(f"smoke test: results and plots in {scratch}; docs/performance.md untouched")
    else:
        docs = Path(__file__).resolve().parents[1] / "docs"
        plots.main(docs / "img", docs / "performance.md")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES))
    asyncio.run(main(parser.parse_args()))
