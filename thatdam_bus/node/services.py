"""Finding handler modules (``handlers/<name>.py``, each exposing ``service``) and running them for a role."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from thatdam_bus.config import Settings, load_settings
from thatdam_bus.context import HandlerContext, TaskContext
from thatdam_bus.dispatch import make_callback
from thatdam_bus.errors import ConfigError
from thatdam_bus.events.node import Role
from thatdam_bus.fencing import EpochFence
from thatdam_bus.node.task_host import TaskHost
from thatdam_bus.publisher import Bus
from thatdam_bus.security.verifier import IntentVerifier
from thatdam_bus.service import HandlerSpec, Service, TaskSpec
from thatdam_bus.transports.base import Delivery, Subscription

log = logging.getLogger("thatdam_bus.node.services")


def load_services(names: tuple[str, ...], package: str = "handlers") -> list[Service]:
    """Import ``<package>.<name>`` for each name and return its ``service``; a typo is a ConfigError."""
    services = []
    for name in names:
        try:
            module = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            raise ConfigError(f"invalid THATDAM_SERVICES: no handler module {package}.{name}") from exc
        service = getattr(module, "service", None)
        if not isinstance(service, Service):
            raise ConfigError(f"handler module {package}.{name} has no `service = Service(...)`")
        services.append(service)
    return services


def discover_services(package: str = "handlers") -> list[Service]:
    """The runtime's own services plus every handler module in ``package`` (the AsyncAPI document covers all)."""
    from thatdam_bus.node.core_services import CORE_SERVICES

    root = importlib.import_module(package)
    names = sorted(info.name for info in pkgutil.iter_modules(root.__path__) if not info.name.startswith("_"))
    return [*CORE_SERVICES, *load_services(tuple(names), package)]


@dataclass
class HandlerHost:
    """Subscribes exactly the handlers that run in the current role; a role change starts and stops them."""

    bus: Bus
    services: list[Service]
    max_bytes: int
    states: dict[str, Any] = field(default_factory=dict)
    """Per-service state objects the owner already has (e.g. the node's leader tracker), by service name."""
    verifier: IntentVerifier | None = None
    """Checks signed intents (``security.intent_verifier``); without one, intent handlers refuse all."""
    settings: Settings | None = None
    """Handed to state factories and service tasks; defaults to the environment's."""
    fence: EpochFence | None = None
    """The node's newest leader epoch: intents stamped with an older one are refused."""
    _running: dict[str, Subscription] = field(default_factory=dict)
    _states: dict[str, Any] = field(default_factory=dict)
    _tasks: TaskHost = field(default_factory=TaskHost)

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = load_settings()
        for service in self.services:
            if service.name in self.states:
                self._states[service.name] = self.states[service.name]
            elif service.state_factory is not None:
                self._states[service.name] = service.state_factory(self.settings)

    def state_of(self, service_name: str) -> Any:
        return self._states.get(service_name)

    async def apply_role(self, role: Role) -> None:
        """Start handlers that run as ``role`` and are not running; stop the ones that do not."""
        wanted = {spec.qualified_name: spec for svc in self.services for spec in svc.handlers_for(role)}
        for name in [n for n in self._running if n not in wanted]:
            await self._running.pop(name).cancel()
        for name, spec in wanted.items():
            if name not in self._running:
                queue = spec.queue_for(self.bus.node_id)
                self._running[name] = await self.bus.transport.subscribe(queue, self._callback(spec))
        await self._tasks.sync({
            task.qualified_name: (task, self._task_context(task))
            for svc in self.services for task in svc.tasks_for(role)
        })
        log.debug("role %s: running %s", role, self.running)

    async def stop_all(self) -> None:
        await self._tasks.stop_all()
        for name in list(self._running):
            await self._running.pop(name).cancel()

    @property
    def running(self) -> list[str]:
        return sorted([*self._running, *self._tasks.running])

    def _task_context(self, task: TaskSpec) -> TaskContext:
        assert self.settings is not None
        return TaskContext(self.bus, self.bus.node_id, logging.getLogger(f"handlers.{task.service}"),
                           self._states.get(task.service), self.settings)

    def _callback(self, spec: HandlerSpec):  # type: ignore[no-untyped-def]
        handler_log = logging.getLogger(f"handlers.{spec.service}")
        state = self._states.get(spec.service)

        def context_for(delivery: Delivery) -> HandlerContext:
            return HandlerContext(self.bus, self.bus.node_id, delivery.routing_key, delivery.attempt,
                                  handler_log, state)

        return make_callback(spec, context_for, max_bytes=self.max_bytes, verifier=self.verifier, fence=self.fence)
