"""A session: everything a node does on one link (broker + lease), from start to the moment the link changes.

The lease keeper reports lease changes; the session turns them into a role (``roles.compute_role``), starts and
stops handlers for it, announces ``cluster.leader.*`` and ``node.<id>.role``, and rewrites ``cluster.json``.
Every leader-only act (reporting lost nodes, claiming ``leader`` in a heartbeat) checks ``keeper.is_leader``
first, which consults the monotonic validity of the lease, so a paused ex-leader does nothing as leader after it
wakes. A node that missed the ``elected`` announcement (it started later, or never contends) heartbeats an older
epoch; the leader then announces its term again, so every node's cluster.json names the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from thatdam_bus import topics
from thatdam_bus.config import Settings
from thatdam_bus.events.cluster import LeaderElected, LeaderLost, LeaderResigned
from thatdam_bus.events.node import NodeLost, NodeRoleChanged, Role
from thatdam_bus.fencing import EpochFence
from thatdam_bus.lease.keeper import Follower, Leader, LeaseKeeper, LeaseState, SteppedDown
from thatdam_bus.membership import MembershipView
from thatdam_bus.metrics.endpoint import serve_metrics
from thatdam_bus.metrics.health import NodeHealth
from thatdam_bus.node.cluster_file import ClusterFile, write_cluster_file
from thatdam_bus.node.cluster_view import cluster_view
from thatdam_bus.node.core_services import CORE_SERVICES, Registry, membership
from thatdam_bus.node.heartbeat import HeartbeatSource
from thatdam_bus.node.leadership import LeaderTracker
from thatdam_bus.node.link import Link, cluster_available, tcp_reachable
from thatdam_bus.node.roles import RoleFacts, compute_role, contests_lease
from thatdam_bus.node.services import HandlerHost
from thatdam_bus.outbox import outbox_for
from thatdam_bus.publisher import Bus, Journal
from thatdam_bus.security.verifier import IntentVerifier
from thatdam_bus.service import Service
from thatdam_bus.transports.base import NetworkTransport

log = logging.getLogger("thatdam_bus.node.session")
BROKER_PROBE_MIN_S, BROKER_PROBE_MAX_S = 0.2, 1.0
"""Bounds of one TCP connect to the broker after a lease backend failure (ttl / 10 within them)."""
BROKER_PROBE_ATTEMPTS = 2
"""A lost SYN is only retransmitted after a second: a fresh connect is the quicker second chance."""


class Session:
    """One link's worth of node behaviour; ``run_until`` returns why it ended."""

    def __init__(self, settings: Settings, node_id: str, link: Link, services: list[Service],
                 heartbeats: HeartbeatSource, journal: Journal | None, verifier: IntentVerifier,
                 probe: Callable[[], Settings] | None = None,
                 on_state: Callable[[Role, int], None] | None = None) -> None:
        """``probe``: the endpoints a solo session probes (they may be found while it runs; default: its own
        settings). ``on_state``: told the role and epoch whenever cluster.json is (re)written (mDNS record)."""
        self.settings = settings
        self._probe = probe or (lambda: settings)
        self._on_state = on_state or (lambda _role, _epoch: None)
        self.node_id = node_id
        self.link = link
        self.fence = EpochFence()
        self.tracker = LeaderTracker(self.fence, on_change=self._leader_changed)
        self._hold_writes = False
        self._reannounced_at = 0.0
        self.view = MembershipView()
        self.heartbeats = heartbeats
        self.bus = Bus(link.transport, cluster=settings.cluster, node_id=node_id,
                       epoch=lambda: self.fence.newest, journal=journal,
                       outbox=None if link.solo else outbox_for(settings))
        self.host = HandlerHost(self.bus, [*CORE_SERVICES, *services], settings.max_message_bytes,
                                states={"leadership": self.tracker, "membership": Registry(self.view, self._catch_up)},
                                verifier=verifier,
                                settings=settings, fence=self.fence)
        contest = link.lease is not None and contests_lease(settings.role)
        self._lease_trouble = asyncio.Event()
        self._ending = False
        self.keeper = (LeaseKeeper(link.lease, self._on_lease_change, on_trouble=self._lease_trouble.set)
                       if contest and link.lease else None)
        self.role = self._computed_role()
        self.health = NodeHealth(self.bus)

    def _computed_role(self) -> Role:
        return compute_role(RoleFacts(
            infrastructure=not self.link.solo,
            holds_lease=self.keeper is not None and self.keeper.is_leader,
            has_devices=bool(self.settings.sources),
            pinned=self.settings.role,
        ))

    @property
    def acting_role(self) -> Role:
        """The role this node may claim right now. ``role`` says ``leader`` until the keeper has processed the
        end of the term; a process waking from a pause longer than the ttl must not claim it meanwhile."""
        if self.role is Role.LEADER and self.keeper is not None and not self.keeper.is_leader:
            return self._computed_role()
        return self.role

    async def start(self) -> None:
        await self.host.apply_role(self.role)
        self.write_cluster_file()

    async def run_until(self, stop: asyncio.Event) -> str:
        """Run the session's duties until ``stop`` is set or the link should change; returns the reason."""
        async with asyncio.TaskGroup() as group:
            duties = [group.create_task(self._heartbeat_loop()), group.create_task(self._registry_loop())]
            duties.append(group.create_task(self.bus.drain()))
            if self.keeper is not None:
                duties.append(group.create_task(self.keeper.run()))
            duties.append(group.create_task(self.health.watch_consumers()))
            if self.settings.metrics_port is not None:
                duties.append(group.create_task(serve_metrics(self.settings.metrics_host, self.settings.metrics_port)))
            link_watch = group.create_task(self._watch_link())
            stopped = group.create_task(stop.wait())
            await asyncio.wait([link_watch, stopped], return_when=asyncio.FIRST_COMPLETED)
            for task in [*duties, link_watch, stopped]:
                task.cancel()
        return "stopped" if stop.is_set() else link_watch.result()

    async def close(self) -> None:
        await self.host.stop_all()

    # -- lease and role --------------------------------------------------------------------------------

    async def _on_lease_change(self, state: LeaseState) -> None:
        """Announce, then change role; cluster.json is written once at the end, so no reader ever sees a
        half-applied change (e.g. itself as leader while its role still says worker). A session ending on a
        lost link only records the end of its term: there is nobody to announce it to, and the next session
        (solo) applies the next role."""
        if self._ending:
            if isinstance(state, SteppedDown):
                log.warning("stepped down at epoch %d: %s (link lost)", state.epoch, state.reason)
            return
        self._hold_writes = True
        try:
            await self._apply_lease_change(state)
        finally:
            self._hold_writes = False
            self.write_cluster_file()

    async def _apply_lease_change(self, state: LeaseState) -> None:
        if isinstance(state, Leader):
            await self._became_leader(state.epoch)
        elif isinstance(state, SteppedDown):
            log.warning("stepped down at epoch %d: %s", state.epoch, state.reason)
            await self._announce(LeaderResigned(node_id=self.node_id, epoch=state.epoch, reason=state.reason),
                                 topics.LEADER_RESIGNED)
        elif isinstance(state, Follower):
            self.tracker.elected(state.holder, state.epoch)
        await self._update_role()

    async def _became_leader(self, epoch: int) -> None:
        self.fence.observe(epoch)
        predecessor = self.tracker.predecessor_lost(epoch)
        if predecessor is not None and predecessor.node_id != self.node_id:
            await self._announce(LeaderLost(node_id=predecessor.node_id, epoch=predecessor.epoch),
                                 topics.LEADER_LOST)
        self.tracker.elected(self.node_id, epoch)
        await self._announce_term(epoch)
        log.info("elected leader at epoch %d", epoch)

    async def _announce_term(self, epoch: int) -> None:
        ttl_ms = int(self.settings.lease_ttl * 1000)
        await self._announce(LeaderElected(node_id=self.node_id, epoch=epoch, ttl_ms=ttl_ms), topics.LEADER_ELECTED)

    async def _catch_up(self, epoch: int) -> None:
        """A heartbeat stamped ``epoch`` arrived: if its sender is behind our term (it missed ``elected``),
        announce the term again, at most once per heartbeat interval and only while the lease is trusted."""
        keeper = self.keeper
        if keeper is None or not keeper.is_leader or not isinstance(keeper.state, Leader):
            return
        if epoch >= keeper.state.epoch:
            return
        if time.monotonic() - self._reannounced_at < self.settings.heartbeat_interval:
            return
        self._reannounced_at = time.monotonic()
        await self._announce_term(keeper.state.epoch)

    async def _update_role(self) -> None:
        role = self._computed_role()
        if role is self.role:
            return
        previous, self.role = self.role, role
        await self.host.apply_role(role)
        if not membership.handlers_for(role):  # no longer fed heartbeats: what it knew goes stale
            for node_id in self.view.members():
                self.view.forget(node_id)
        await self._announce(NodeRoleChanged(node_id=self.node_id, role=role, previous_role=previous,
                                             epoch=self.fence.newest), topics.node_membership(self.node_id, "role"))
        self.write_cluster_file()
        log.info("role %s -> %s (epoch %d)", previous, role, self.fence.newest)

    async def _announce(self, payload: object, routing_key: str) -> None:
        """Best-effort announcement: a broker hiccup must not stop the lease keeper that called us."""
        try:
            async with asyncio.timeout(self.settings.lease_ttl / 3):
                await self.bus.publish(payload, routing_key)  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("could not announce %s: %r", routing_key, exc)

    def _leader_changed(self) -> None:
        """The tracker learned something: when the leader announced its resignation, contend at once (a
        standby takes over a released lease without waiting for its retry period)."""
        known = self.tracker.leader
        if known is not None and known.resigned and self.keeper is not None:
            self.keeper.holder_resigned(known.epoch)
        self.write_cluster_file()

    def write_cluster_file(self) -> None:
        """Rewrite cluster.json (atomically); not while a lease change is half applied, nor before the session
        knows a leader (``cluster_view``)."""
        if self._hold_writes:
            return
        self._on_state(self.role, self.fence.newest)
        view: ClusterFile | None = cluster_view(self)
        if view is not None:
            write_cluster_file(self.settings.state_dir, view)

    # -- duties ----------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Beat every interval. A failed beat is logged and skipped: heartbeats may be lost, the loop may not."""
        key = topics.node_heartbeat(self.node_id)
        interval = self.settings.heartbeat_interval
        while True:
            try:
                role, epoch = self.acting_role, self.fence.newest
                await self.bus.publish(self.heartbeats.beat(role, epoch, self.health.figures(role, epoch)), key)
            except Exception as exc:
                log.warning("heartbeat not sent: %r", exc)
            await asyncio.sleep(interval)

    async def _registry_loop(self) -> None:
        """As leader (or solo): report members that missed their heartbeats as ``node.<id>.lost``."""
        members_before: set[str] = set()
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval / 4)
            if self.role is Role.SOLO or (self.keeper is not None and self.keeper.is_leader):
                for member in self.view.lost():
                    await self._report_lost(member.heartbeat.node_id, member.last_seen)
            members = set(self.view.members())
            if members != members_before:
                members_before = members
                self.write_cluster_file()

    async def _report_lost(self, node_id: str, last_seen: float) -> None:
        self.view.forget(node_id)
        silent_s = time.monotonic() - last_seen
        missed = int(silent_s / self.settings.heartbeat_interval)
        log.warning("node %s lost: no heartbeat for %.1fs", node_id, silent_s)
        await self._announce(NodeLost(node_id=node_id, last_seen=_wall_clock_of(last_seen), missed_heartbeats=missed),
                             topics.node_membership(node_id, "lost"))

    async def _watch_link(self) -> str:
        """Solo: probe for the infrastructure. Cluster: fall back to solo when the broker is out of reach."""
        if self.link.solo:
            while True:
                await asyncio.sleep(self.settings.probe_interval)
                if await cluster_available(self._probe()):
                    return "infrastructure appeared: joining the cluster"
        reason, lease_lost_too = await self._link_lost()
        self._give_up_link(release_lease=not lease_lost_too)
        return reason

    async def _link_lost(self) -> tuple[str, bool]:
        """Returns once the broker is out of reach, and whether the lease backend is too: at once when the
        lease backend fails and the broker does not accept a TCP connection either (a partition: the node must
        be solo before its lease could expire), or when the broker connection stays down for a ttl (recovery
        had its chance)."""
        fallback_after = self.settings.lease_ttl
        down_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.probe_interval):
                    await self._lease_trouble.wait()
            if self._lease_trouble.is_set():
                self._lease_trouble.clear()
                if not await self._broker_answers():
                    return "lease backend and broker both out of reach: falling back to solo", True
            transport = self.link.transport
            if not isinstance(transport, NetworkTransport) or transport.connected:
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since > fallback_after:
                return f"broker unreachable for {fallback_after:.1f}s: falling back to solo", False

    async def _broker_answers(self) -> bool:
        """A TCP connect to the broker with a short deadline, tried twice (a connect is answered by the peer's
        kernel, however busy RabbitMQ is, so a slow answer on a LAN means no answer; a second attempt covers
        one lost packet). Both attempts fit well inside the lease's remaining trust (ttl / 5 in all)."""
        url = self.link.settings.amqp_url
        if url is None:
            return True
        timeout_s = min(BROKER_PROBE_MAX_S, max(BROKER_PROBE_MIN_S, self.settings.lease_ttl / 10))
        for _ in range(BROKER_PROBE_ATTEMPTS):
            if await tcp_reachable(str(url), timeout_s):
                return True
        return False

    def _give_up_link(self, *, release_lease: bool) -> None:
        """Stop waiting on the lost link before the session's duties are cancelled: nothing waits for the
        broker while the session ends, and the keeper ends its term, releasing the lease only if its backend
        may still answer (a release into a partition could only wait out its deadline)."""
        self._ending = True
        if self.keeper is not None:
            self.keeper.release_on_exit = release_lease
        self.link.abandon()

    def __repr__(self) -> str:
        mode = "solo" if self.link.solo else "cluster"
        return f"<Session {mode} role={self.role} epoch={self.fence.newest} keeper={self.keeper!r}>"


def _wall_clock_of(monotonic_instant: float) -> datetime:
    """The wall-clock time of a monotonic instant (for event payloads, which carry RFC 3339 times)."""
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - monotonic_instant)
