"""Leadership terms as the event log saw them, and the safety checks over them.

Definition. A *term* ``T(n, e)`` is opened by the receipt of the first announcement of node ``n``'s election
at epoch ``e``: its ``cluster.leader.elected``, or the ``cluster.leader.lost`` report about its predecessor that
a new leader sends just before (stamped ``e``). A later ``elected`` for the same ``(n, e)`` (the leader telling
a node that missed it) re-affirms the term and opens nothing. The term is closed by the first receipt of either
the holder's own ``cluster.leader.resigned`` for ``(n, e)`` or a successor's ``cluster.leader.lost`` for
``(n, e)``; if neither ever arrives, it is closed (``superseded``) by the opening of the next term with a higher
epoch, and otherwise it is still open at the end of the log.

Checks.
1. Terms' epochs strictly increase in the order they open.
2. No overlap: with terms in epoch order, each one is closed no later than the next one opens. A resignation
   or a loss report received after the successor's ``elected`` means two nodes held the lease at once as far as
   the bus can tell.
3. No act outside a term: every message only a leader sends (``elected``, ``cluster.leader.lost``,
   ``node.*.lost``, a ``node.<n>.role`` or heartbeat claiming role ``leader``), sent by ``n`` under epoch ``e``
   (``elected`` names it in its data; every other act carries the sender's fence in its envelope), is sent or
   received inside ``T(n, e)``. A stale leader waking up after its term would show up here (it sends after the
   term, and its message arrives after it). Sent inside but received after is allowed: a partitioned leader's
   last transient messages sit in its TCP send buffer and reach the broker when the link heals, seconds late;
   they were acts inside its term, and every receiver fences them by epoch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from tests.cluster.harness import Seen
from thatdam_bus.topics import topic_matches


@dataclass
class Term:
    node_id: str
    epoch: int
    start: float
    end: float | None = None
    ended_by: str = "open"

    def contains(self, at: float) -> bool:
        return self.start <= at and (self.end is None or at <= self.end)


def terms(log: list[Seen]) -> list[Term]:
    """The terms in the order their ``elected`` was received."""
    found: list[Term] = []
    for seen in log:
        if seen.key == "cluster.leader.elected" and not any(
                (t.node_id, t.epoch) == (seen.data["node_id"], seen.data["epoch"]) for t in found):
            reports = [s.at for s in log if s.key == "cluster.leader.lost" and s.sender == seen.data["node_id"]
                       and s.epoch == seen.data["epoch"] and s.at <= seen.at]
            found.append(Term(seen.data["node_id"], seen.data["epoch"], min([seen.at, *reports])))
    for term in found:
        closers = [s for s in log if s.key in ("cluster.leader.resigned", "cluster.leader.lost")
                   and s.data["node_id"] == term.node_id and s.data["epoch"] == term.epoch and s.at >= term.start]
        if closers:
            term.end, term.ended_by = closers[0].at, closers[0].key.rsplit(".", 1)[1]
            continue
        successors = [t for t in found if t.epoch > term.epoch and t.start >= term.start]
        if successors:
            term.end, term.ended_by = successors[0].start, "superseded"
    return found


def claims_leadership(seen: Seen) -> bool:
    if seen.key in ("cluster.leader.elected", "cluster.leader.lost") or topic_matches("node.*.lost", seen.key):
        return True
    return (topic_matches("node.*.role", seen.key) or topic_matches("node.*.heartbeat", seen.key)) \
        and seen.data.get("role") == "leader"


def claimed_epoch(seen: Seen) -> int:
    """The epoch the act is made under: ``elected`` names it in data; everything else carries the sender's
    fence in the envelope (a lost report's data epoch is the *lost* leader's)."""
    if seen.key == "cluster.leader.elected":
        return int(seen.data["epoch"])
    return seen.epoch


def violations(log: list[Seen]) -> list[str]:
    """Every breach of checks 1-3, as readable lines (empty when the log is safe)."""
    found = terms(log)
    problems = [f"epoch {b.epoch} elected after {a.epoch}" for a, b in itertools.pairwise(found)
                if b.epoch <= a.epoch]
    by_epoch = sorted(found, key=lambda t: t.epoch)
    for before, after in itertools.pairwise(by_epoch):
        if before.end is None or before.end > after.start:
            problems.append(f"term {before} overlaps term {after}")
    index = {(t.node_id, t.epoch): t for t in found}
    for seen in log:
        if not claims_leadership(seen):
            continue
        term = index.get((seen.sender, claimed_epoch(seen)))
        if term is None or not (term.contains(seen.at) or term.contains(seen.sent_at)):
            problems.append(f"{seen.key} from {seen.sender} at epoch {claimed_epoch(seen)} outside its term "
                            f"{term} (received at {seen.at:.3f})")
    return problems
