"""Declaring handlers: a ``Service`` groups typed handlers, each with its binding patterns, queue class and roles.

    membership = Service("membership")

    @membership.on(Patterns.HEARTBEATS, roles={Role.LEADER, Role.SOLO})
    async def track(event: Envelope[NodeHeartbeat], ctx: HandlerContext) -> None: ...

The payload model is read from the handler's first parameter annotation, so the signature is both the
validator and the AsyncAPI payload. The same declaration runs on every transport.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, get_type_hints

from thatdam_bus.envelope import Envelope, Payload
from thatdam_bus.events.node import Role
from thatdam_bus.topics import topic_matches
from thatdam_bus.transports.base import QueueKind, QueueSpec
from thatdam_bus.types import HandlerFn, StateFactory, TaskFn

ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class HandlerSpec:
    """One declared handler. ``queue.name`` is ``<service>.<function>`` for durable work queues."""

    service: str
    name: str
    fn: HandlerFn
    payload: type[Payload]
    queue: QueueSpec
    roles: frozenset[Role]
    description: str
    per_node: bool = False
    """Addressed to one node: each node has its own durable queue, and takes only events whose
    ``data.node_id`` is its own (others are acked unseen, with no intent result)."""

    @property
    def qualified_name(self) -> str:
        return f"{self.service}.{self.name}"

    def queue_for(self, node_id: str) -> QueueSpec:
        """The queue this node consumes: a per-node handler gets ``<service>.<handler>.<node_id>``."""
        if not self.per_node or self.queue.name is None:
            return self.queue
        return replace(self.queue, name=f"{self.queue.name}.{node_id}")

    def runs_as(self, role: Role) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class TaskSpec:
    """One declared background task of a service."""

    service: str
    name: str
    fn: TaskFn
    roles: frozenset[Role]

    @property
    def qualified_name(self) -> str:
        return f"{self.service}.{self.name}"


class Service:
    """A named set of handlers (one module in ``handlers/``), e.g. the indexer or the membership view."""

    def __init__(
        self,
        name: str,
        *,
        roles: Iterable[Role] = ALL_ROLES,
        description: str = "",
        state: StateFactory | None = None,
    ) -> None:
        """``state(settings)`` makes one object per running node, handed to handlers and tasks as ``ctx.state``."""
        self.name = name
        self.state_factory = state
        self.tasks: list[TaskSpec] = []
        self.roles = frozenset(roles)
        self.description = description
        self.handlers: list[HandlerSpec] = []

    def on(
        self,
        *patterns: str,
        queue: QueueKind = QueueKind.EPHEMERAL,
        roles: Iterable[Role] | None = None,
        prefetch: int = 64,
        per_node: bool = False,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register the decorated coroutine function as a handler for ``patterns``. ``per_node``: the events
        name a target node (``data.node_id``) and only that node handles them."""

        def register(fn: HandlerFn) -> HandlerFn:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"handler {fn.__qualname__} must be an async function")
            name = fn.__name__
            if per_node and "node_id" not in payload_model_of(fn).model_fields:
                raise TypeError(f"per-node handler {fn.__qualname__} needs a payload with a node_id field")
            spec = QueueSpec(
                patterns=tuple(patterns),
                kind=queue,
                name=f"{self.name}.{name}" if queue is QueueKind.DURABLE else None,
                prefetch=prefetch,
            )
            self.handlers.append(
                HandlerSpec(
                    service=self.name,
                    name=name,
                    fn=fn,
                    payload=payload_model_of(fn),
                    queue=spec,
                    roles=frozenset(roles) if roles is not None else self.roles,
                    description=inspect.getdoc(fn) or "",
                    per_node=per_node,
                )
            )
            return fn

        return register

    def task(self, *, roles: Iterable[Role] | None = None) -> Callable[[TaskFn], TaskFn]:
        """Register a background coroutine that runs while the node's role is one of ``roles``."""

        def register(fn: TaskFn) -> TaskFn:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"task {fn.__qualname__} must be an async function")
            chosen = frozenset(roles) if roles is not None else self.roles
            self.tasks.append(TaskSpec(self.name, fn.__name__, fn, chosen))
            return fn

        return register

    def tasks_for(self, role: Role) -> list[TaskSpec]:
        return [spec for spec in self.tasks if role in spec.roles]

    def handlers_for(self, role: Role) -> list[HandlerSpec]:
        return [spec for spec in self.handlers if spec.runs_as(role)]

    def handlers_matching(self, routing_key: str) -> list[HandlerSpec]:
        """Handlers whose bindings would receive ``routing_key`` (used by docs and tests)."""
        return [s for s in self.handlers if any(topic_matches(p, routing_key) for p in s.queue.patterns)]

    def __repr__(self) -> str:
        return f"<Service {self.name} handlers={[h.name for h in self.handlers]}>"


def payload_model_of(fn: HandlerFn) -> type[Payload]:
    """The ``Payload`` subclass in the handler's first parameter annotation ``Envelope[Model]``."""
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if not params or params[0] not in hints:
        raise TypeError(f"handler {fn.__qualname__} needs an annotated first parameter: Envelope[Model]")
    annotation: Any = hints[params[0]]
    metadata = getattr(annotation, "__pydantic_generic_metadata__", None)
    if not metadata or metadata["origin"] is not Envelope or not metadata["args"]:
        raise TypeError(f"handler {fn.__qualname__}: first parameter must be Envelope[Model], not {annotation}")
    model = metadata["args"][0]
    if not (isinstance(model, type) and issubclass(model, Payload)):
        raise TypeError(f"handler {fn.__qualname__}: {model} is not a Payload model")
    return model
