"""What every benchmark shares: the bench events, interleaved rounds, medians, the machine, JSON results.

Every figure is a ratio against a baseline measured in the same run: ``interleave`` alternates baseline and
ours round by round (and which of them goes first), so the noise of a shared machine hits both; the reported
figure of each is the median over the rounds. Results go to ``bench/results/<name>.json`` for ``plots.py``.

Processes: a benchmark with a consumer "in its own process" starts one ``Child`` (multiprocessing, spawn) that
serves rounds over a pipe; both ends stamp ``time.monotonic_ns()``, which is the same clock (CLOCK_MONOTONIC)
in every process of the machine, so publish-to-handler latency can be measured across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, ClassVar

from thatdam_bus.envelope import Payload

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """Where rows are saved and plotted from: ``bench/results``, or ``THATDAM_BENCH_RESULTS`` (a smoke test's
    scratch directory, so that it never replaces measured figures)."""
    return Path(os.environ.get("THATDAM_BENCH_RESULTS", RESULTS))


AMQP_URL = os.environ.get("THATDAM_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ROUTING_KEY = "bench.cam0.tick"
PATTERN = "bench.#"


class Tick(Payload):
    """A small transient event (about 200 B of envelope without the trace context)."""

    event_type: ClassVar[str] = "thatdam.bench.tick.v1"
    camera: str
    n: int
    sent_ns: int


class Work(Tick):
    """The same event, durable: persistent and confirmed."""

    event_type: ClassVar[str] = "thatdam.bench.work.v1"
    durable: ClassVar[bool] = True


# -- statistics ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an unsorted sequence (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))])


def quantiles(values: Sequence[float], points: int = 200) -> list[float]:
    """``points`` evenly spaced quantiles (for a CDF plot without shipping every sample)."""
    if not values:
        return []
    ordered = sorted(values)
    last = len(ordered) - 1
    return [float(ordered[round(i * last / (points - 1))]) for i in range(points)]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# -- rounds -------------------------------------------------------------------------------------------------

Round = Callable[[], Awaitable[dict[str, Any]]]


async def interleave(variants: Mapping[str, Round], rounds: int, *,
                     show: str = "rate") -> dict[str, list[dict[str, Any]]]:
    """Run every variant once per round, alternating which goes first; print each measurement."""
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            figures = await variants[name]()
            runs[name].append(figures)
            shown = ", ".join(f"{key} {_fmt(figures[key])}" for key in show.split(",") if key in figures)
            print(f"  round {index + 1}/{rounds} {name:>9}: {shown}", flush=True)
    return runs


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median of every numeric figure over the rounds of one variant."""
    keys = [key for key, value in runs[0].items() if isinstance(value, int | float)]
    return {key: median([run[key] for run in runs]) for key in keys}


def ratio_text(ratio: float) -> str:
    """``1.22x``, ``0.796x``: three decimals under 1, where a miss by less than a hundredth must still show."""
    return f"{ratio:.2f}x" if ratio >= 1 else f"{ratio:.3f}x"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# -- verdicts and results -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One benchmark row of docs/performance.md, as JSON."""

    name: str
    title: str
    command: str
    metric: str
    unit: str
    baseline: float
    ours: float
    target: str
    passed: bool
    rounds: int
    extra: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("nan")

    def line(self) -> str:
        """The row for a reader."""
        verdict = "MET" if self.passed else "MISSED"
        return (f"{self.title}: baseline {_fmt(self.baseline)} {self.unit}, ours {_fmt(self.ours)} {self.unit}, "
                f"ratio {ratio_text(self.ratio)}, target {self.target}: {verdict}")

    def json_line(self) -> str:
        """The row for a script: name, value, baseline, ratio, target, pass (plus unit, title, load average)."""
        return json.dumps({"name": self.name, "value": round(self.ours, 4), "baseline": round(self.baseline, 4),
                           "ratio": round(self.ratio, 4), "target": self.target, "pass": self.passed,
                           "unit": self.unit, "title": self.title,
                           "load_average": [round(x, 2) for x in os.getloadavg()]})

    def report(self) -> None:
        """Both lines on stdout: the one for a reader, then the JSON line every bench prints per figure."""
        print(self.line(), flush=True)
        print(self.json_line(), flush=True)

    def save(self) -> Path:
        results = results_dir()
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"{self.name}.json"
        document = {**self.__dict__, "ratio": self.ratio, "machine": machine(),
                    "date": datetime.now(UTC).isoformat(timespec="seconds")}
        path.write_text(json.dumps(document, indent=1, default=str) + "\n")
        return path


def throughput_row(name: str, title: str, runs: dict[str, list[dict[str, Any]]], baseline: str, target: float,
                   rounds: int, extra: dict[str, Any]) -> Row:
    """A throughput row: medians of the baseline and of ``bus``, judged against ``target`` x the baseline's
    rate, printed and saved. Every events/s benchmark ends here, so they all judge and record the same way."""
    base, ours = medians(runs[baseline]), medians(runs["bus"])
    row = Row(name, title, command_line(), "events/s", "events/s", base["rate"], ours["rate"], f">= {target}x",
              ours["rate"] >= target * base["rate"], rounds,
              extra={**extra, "baseline_medians": base, "ours_medians": ours}, runs=runs)
    row.report()
    row.save()
    return row


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    packages = {name: version(name) for name in ("aio-pika", "aiormq", "pydantic", "pydantic-core", "orjson")}
    return {"cpu": model, "cores": os.cpu_count(), "kernel": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_average": os.getloadavg(), **packages}


def unique_prefix(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:8]}"


def command_line() -> str:
    return " ".join([".venv/bin/python", *(Path(a).as_posix() for a in sys.argv)])


# -- a child process serving rounds -------------------------------------------------------------------------


class Child:
    """A spawned process running ``target(connection)``; requests and answers are plain picklable values."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self._ours, theirs = context.Pipe()
        self._process = context.Process(target=target, args=(theirs,), daemon=True)
        self._process.start()
        theirs.close()

    def send(self, message: Any) -> None:
        self._ours.send(message)

    async def recv(self, timeout: float = 120.0) -> Any:
        """The child's next answer; a child that raised sends ("error", text), re-raised here."""
        async with asyncio.timeout(timeout):
            answer = await asyncio.to_thread(self._recv_polling, timeout)
        if isinstance(answer, tuple) and answer and answer[0] == "error":
            raise RuntimeError(f"bench child failed: {answer[1]}")
        return answer

    def _recv_polling(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not self._ours.poll(0.05):
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("bench child died or did not answer")
        return self._ours.recv()

    async def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send(None)
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.terminate()


def serve(connection: Connection, handle: Callable[[Any], Awaitable[Any]]) -> None:
    """Child main loop: one asyncio loop for the process, one awaited ``handle`` per request until None."""

    async def loop() -> None:
        while (request := await asyncio.to_thread(connection.recv)) is not None:
            try:
                answer = await handle(request)
            except Exception as exc:  # reported to the parent, which stops the bench
                answer = ("error", f"{type(exc).__name__}: {exc}")
            connection.send(answer)

    asyncio.run(loop())
