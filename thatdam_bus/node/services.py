"""Finding handler modules (``handlers/<name>.py``, each exposing ``service``) and running them for a role."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from thatdam_bus.context import HandlerContext
from thatdam_bus.dispatch import make_callback
from thatdam_bus.errors import ConfigError
from thatdam_bus.events.node import Role
from thatdam_bus.publisher import Bus
from thatdam_bus.security.verifier import IntentVerifier
from thatdam_bus.service import HandlerSpec, Service
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
    _running: dict[str, Subscription] = field(default_factory=dict)
    _states: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for service in self.services:
            if service.name in self.states:
                self._states[service.name] = self.states[service.name]
            elif service.state_factory is not None:
                self._states[service.name] = service.state_factory()

    def state_of(self, service_name: str) -> Any:
        return self._states.get(service_name)

    async def apply_role(self, role: Role) -> None:
        """Start handlers that run as ``role`` and are not running; stop the ones that do not."""
        wanted = {spec.qualified_name: spec for svc in self.services for spec in svc.handlers_for(role)}
        for name in [n for n in self._running if n not in wanted]:
            await self._running.pop(name).cancel()
        for name, spec in wanted.items():
            if name not in self._running:
                self._running[name] = await self.bus.transport.subscribe(spec.queue, self._callback(spec))
        log.debug("role %s: running %s", role, sorted(self._running))

    async def stop_all(self) -> None:
        for name in list(self._running):
            await self._running.pop(name).cancel()

    @property
    def running(self) -> list[str]:
        return sorted(self._running)

    def _callback(self, spec: HandlerSpec):  # type: ignore[no-untyped-def]
        handler_log = logging.getLogger(f"handlers.{spec.service}")
        state = self._states.get(spec.service)

        def context_for(delivery: Delivery) -> HandlerContext:
            return HandlerContext(self.bus, self.bus.node_id, delivery.routing_key, delivery.attempt,
                                  handler_log, state)

        return make_callback(spec, context_for, max_bytes=self.max_bytes, verifier=self.verifier)
