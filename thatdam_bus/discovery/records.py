"""The ``_thatdam._tcp.local.`` record: its TXT properties, and endpoints written ``host:port``.

An endpoint is only ever a host and a port: ``endpoint_of`` drops the scheme, the credentials, the path and the
query of a URL, and ``parse_endpoint`` refuses anything else, so no secret can be written into a record nor
read out of one. The same parser reads ``CLOUD_CONTROL_URL`` (``cloud_endpoints``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Self
from urllib.parse import parse_qs, urlsplit

SERVICE_TYPE = "_thatdam._tcp.local."
INFRA_ROLE = "infra"
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
_ENDPOINT = re.compile(rf"^(?P<host>{_HOST}):(?P<port>[0-9]{{1,5}})$")
_WORD = re.compile(r"^[A-Za-z0-9_\-.]{1,64}$")
_MAX_LABEL = 63


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into its parts; ``ValueError`` for anything else (a URL, a user,
    a path), which is how credentials are kept out."""
    match = _ENDPOINT.match(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"not a host:port endpoint: {text!r}")
    return match["host"].strip("[]"), int(match["port"])


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint_of(url: str) -> str:
    """The ``host:port`` of a URL (default port by scheme), without scheme, credentials, path or query."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if parts.hostname is None or port is None:
        raise ValueError(f"URL names no host and port: {parts.scheme}://{parts.hostname}")
    endpoint = format_endpoint(parts.hostname, port)
    parse_endpoint(endpoint)
    return endpoint


@dataclass(frozen=True)
class Endpoints:
    """Where the infrastructure is: RabbitMQ (required to join) and Redis (the lease), as ``host:port``."""

    amqp: str
    redis: str | None
    origin: str
    """Who said so: ``mdns:<instance>`` or ``cloud-control``."""


def cloud_endpoints(url: str) -> Endpoints:
    """Endpoints named by ``CLOUD_CONTROL_URL``'s query: ``?amqp=host:port&redis=host:port`` (each may also be
    a URL, of which only host and port are kept). ``ValueError`` when it names no usable amqp endpoint."""
    query = parse_qs(urlsplit(url).query)
    amqp, redis = (query.get(key, [""])[0] for key in ("amqp", "redis"))
    if not amqp:
        raise ValueError("CLOUD_CONTROL_URL names no amqp endpoint (?amqp=host:port&redis=host:port)")
    return Endpoints(_as_endpoint(amqp), _as_endpoint(redis) if redis else None, "cloud-control")


def _as_endpoint(text: str) -> str:
    return endpoint_of(text) if "://" in text else format_endpoint(*parse_endpoint(text))


@dataclass(frozen=True)
class Advert:
    """What one record says. ``amqp``/``redis`` are the endpoints its owner uses (``None``: none)."""

    node_id: str
    cluster: str
    role: str
    epoch: int = 0
    version: str = ""
    amqp: str | None = None
    redis: str | None = None

    def __post_init__(self) -> None:
        for name in ("node_id", "cluster", "role"):
            if not _WORD.match(getattr(self, name)):
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")
        for name in ("amqp", "redis"):
            value = getattr(self, name)
            if value is not None:
                parse_endpoint(value)
        if self.epoch < 0:
            raise ValueError(f"invalid epoch: {self.epoch}")

    @property
    def instance_name(self) -> str:
        """``<node id>._thatdam._tcp.local.`` (the node id cut to one DNS label)."""
        return f"{self.node_id[:_MAX_LABEL]}.{SERVICE_TYPE}"

    @property
    def endpoints(self) -> Endpoints | None:
        if self.amqp is None:
            return None
        return Endpoints(self.amqp, self.redis, f"mdns:{self.node_id}")

    def properties(self) -> dict[str, str]:
        """The TXT properties. Endpoints that are not set are left out."""
        props = {"node_id": self.node_id, "cluster": self.cluster, "role": self.role, "epoch": str(self.epoch),
                 "version": self.version}
        props.update({name: value for name in ("amqp", "redis") if (value := getattr(self, name)) is not None})
        return props

    @classmethod
    def from_properties(cls, props: Mapping[bytes, bytes | None]) -> Self | None:
        """Decode a TXT record; ``None`` when it is not a valid thatdam record (a peer's bug is not ours)."""
        try:
            text = {key.decode(): value.decode() for key, value in props.items() if value is not None}
            return cls(node_id=text["node_id"], cluster=text["cluster"], role=text["role"],
                       epoch=int(text.get("epoch", "0")), version=text.get("version", "")[:64],
                       amqp=text.get("amqp") or None, redis=text.get("redis") or None)
        except (KeyError, ValueError, UnicodeDecodeError):
            return None

    def with_(self, **changes: object) -> Self:
        return replace(self, **changes)  # type: ignore[arg-type]

