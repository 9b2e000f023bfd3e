"""The node's Prometheus instruments, named by the Prometheus conventions (``_total`` counters, ``_seconds``
histograms, base units), and the helpers the hot paths call.

Cardinality is bounded by construction: messages are labelled by *channel pattern* (``frame.*.*.ready``, from the
event type via ``events.registry.CHANNELS``) or by handler name, never by a routing key (which carries node ids,
devices and intent ids); dead letters by a reason *class*. Hot paths bind label children once (``HandlerMetrics``
per handler, a dict per event type) so a message costs an ``inc()``, not a label lookup.

Instruments live in the process-wide default registry: one node per process in production; tests that run
several in one process read deltas.
"""

from __future__ import annotations

import itertools
import threading
import time
from bisect import bisect_left
from collections import deque

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

OTHER = "other"
_HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKET_BOUNDS = (*map(floatToGoString, _HANDLER_BUCKETS), "+Inf")
"""The ``le`` labels, as prometheus_client writes them."""

PUBLISHED = Counter("thatdam_messages_published", "Events published by this node, by channel pattern", ["channel"])
DEAD_LETTERED = Counter("thatdam_messages_dead_lettered", "Deliveries dead-lettered by a handler, by the handler's "
                        "channel pattern and reason class", ["handler", "channel", "reason"])
OUTBOX_DEPTH = Gauge("thatdam_outbox_depth", "Durable events no broker has yet (held while RabbitMQ is away)")
SOLO_JOURNAL_EVENTS = Gauge("thatdam_solo_journal_events", "Events a solo node keeps to forward when it joins a "
                            "cluster (mostly copies already delivered locally); 0 in a cluster session")
QUEUE_CONSUMERS = Gauge("thatdam_queue_consumers", "Consumers the broker reports on a durable queue this node "
                        "consumes (0: work piles up); no series while the broker does not answer", ["queue"])
LEASE_RENEW_SECONDS = Histogram("thatdam_lease_renew_seconds", "Latency of a leader lease renew",
                                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
LEADER_EPOCH = Gauge("thatdam_leader_epoch", "Newest leader epoch this node has seen")
ROLE = Gauge("thatdam_node_role", "1 for this node's current role, 0 for the others", ["role"])
FRAMES_CAPTURED = Counter("thatdam_frames_captured", "JPEG frames captured and announced", ["device"])
FRAMES_DROPPED = Counter("thatdam_frames_dropped", "Decoded frames dropped before encoding (reader queue full)",
                         ["device"])
RECORDER_EVENTS = Counter("thatdam_recorder_events", "Events appended to the solo flight recorder")
RECORDER_BYTES = Gauge("thatdam_recorder_bytes", "Bytes held by the solo flight recorder's segments")

_published: dict[str, Counter] = {}
_channel_of_type: dict[str, str] = {}


def channel_of(event_type: str) -> str:
    """The channel pattern an event type travels on (``other`` for types no channel declares)."""
    if not _channel_of_type:
        from thatdam_bus.events.registry import CHANNELS

        _channel_of_type.update({model.event_type: pattern for pattern, model, _ in CHANNELS})
    return _channel_of_type.get(event_type, OTHER)


def count_published(event_type: str) -> None:
    child = _published.get(event_type)
    if child is None:
        child = _published[event_type] = PUBLISHED.labels(channel=channel_of(event_type))
    child.inc()


class HandlerMetrics:
    """One handler's deliveries and durations on one thread, as plain numbers.

    A delivery costs two attribute updates here instead of three locked increments in prometheus_client's
    children (a counter, and a histogram's sum and bucket): at in-process rates that was a tenth of dispatch.
    The figures stay exact: ``_HandlerCollector`` reads them at scrape time as the same two families
    (``thatdam_messages_consumed_total``, ``thatdam_handler_duration_seconds``) with the same samples. One
    writer per tally: it is keyed by thread, and a callback runs on the loop of the thread that made it, so
    no increment can interleave with another; a scrape (on another thread) only reads."""

    __slots__ = ("buckets", "channel", "consumed", "created", "name", "total")

    def __init__(self, name: str, channel: str) -> None:
        self.name = name
        self.channel = channel
        self.consumed = 0
        self.buckets = [0] * (len(_HANDLER_BUCKETS) + 1)
        """Observations per bucket, not cumulative; the last is +Inf."""
        self.total = 0.0
        self.created = time.time()

    @classmethod
    def of(cls, handler: str, patterns: tuple[str, ...]) -> HandlerMetrics:
        """This thread's tally for the handler (made once, then shared by its callbacks on this thread)."""
        key = (handler, ",".join(patterns), threading.get_ident())
        with _TALLIES_LOCK:
            tally = _TALLIES.get(key)
            if tally is None:
                tally = _TALLIES[key] = cls(handler, key[1])
        return tally

    def count(self) -> None:
        self.consumed += 1

    def observe(self, seconds: float) -> None:
        """One handler run; ``le`` buckets are inclusive, as Prometheus's."""
        self.buckets[bisect_left(_HANDLER_BUCKETS, seconds)] += 1
        self.total += seconds

    def dead_lettered(self, reason_class: str) -> None:
        DEAD_LETTERED.labels(handler=self.name, channel=self.channel, reason=reason_class).inc()
        DEAD_LETTERS.add()


_TALLIES: dict[tuple[str, str, int], HandlerMetrics] = {}
_TALLIES_LOCK = threading.Lock()


class _HandlerCollector(Collector):
    """Exposes the per-thread tallies, summed by labels, as prometheus_client's Counter and Histogram did."""

    def describe(self) -> list[Metric]:
        return self._families()

    def collect(self) -> list[Metric]:
        with _TALLIES_LOCK:
            tallies = list(_TALLIES.values())
        consumed: dict[tuple[str, str], list[float]] = {}
        durations: dict[str, tuple[list[int], list[float]]] = {}
        for tally in tallies:
            count = consumed.setdefault((tally.name, tally.channel), [0, tally.created])
            count[0] += tally.consumed
            count[1] = min(count[1], tally.created)
            buckets, figures = durations.setdefault(tally.name, ([0] * len(tally.buckets), [0.0, tally.created]))
            for index, value in enumerate(list(tally.buckets)):
                buckets[index] += value
            figures[0] += tally.total
            figures[1] = min(figures[1], tally.created)
        return self._families(consumed, durations)

    @staticmethod
    def _families(consumed: dict[tuple[str, str], list[float]] | None = None,
                  durations: dict[str, tuple[list[int], list[float]]] | None = None) -> list[Metric]:
        counter = CounterMetricFamily("thatdam_messages_consumed", "Deliveries handed to a handler",
                                      labels=["handler", "channel"])
        for labels, (value, created) in (consumed or {}).items():
            counter.add_metric(labels, value, created=created)
        histogram = HistogramMetricFamily("thatdam_handler_duration_seconds", "Time spent in a handler",
                                          labels=["handler"])
        for handler, (buckets, (total, created)) in (durations or {}).items():
            cumulative = list(itertools.accumulate(buckets))
            histogram.add_metric([handler], list(zip(_BUCKET_BOUNDS, cumulative, strict=True)), total)
            histogram.samples.append(Sample(histogram.name + "_created", {"handler": handler}, created))
        return [counter, histogram]


REGISTRY.register(_HandlerCollector())


class RecentCounter:
    """Events in the last ``window_s`` seconds, in one-second buckets (constant memory at any rate)."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()

    def add(self, now: float | None = None) -> None:
        second = int(time.monotonic() if now is None else now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([second, 1])
            self._trim(second)

    def count(self, now: float | None = None) -> int:
        second = int(time.monotonic() if now is None else now)
        self._trim(second)
        return sum(n for _, n in self._buckets)

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()


DEAD_LETTERS = RecentCounter()
"""Dead letters of this process's handlers in the last minute (heartbeat ``dead_letters_1m``)."""


def recent_dead_letters() -> int:
    return DEAD_LETTERS.count()


def set_role(role: str, roles: tuple[str, ...]) -> None:
    for name in roles:
        ROLE.labels(role=name).set(1 if name == role else 0)
