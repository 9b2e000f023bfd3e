"""URLs for endpoints found by discovery, with this node's *own* credentials.

A record (or ``CLOUD_CONTROL_URL``) says only where: ``host:port``. Who we are comes from our environment:
``THATDAM_AMQP_USER`` / ``THATDAM_AMQP_PASSWORD`` (or ``THATDAM_AMQP_PASSWORD_FILE``; default guest/guest)
and ``THATDAM_REDIS_PASSWORD``. The AMQP URL asks for a heartbeat of about half the lease ttl, so a node cut off
from a broker it found notices within a few seconds (RabbitMQ's default, 60 s, would keep a partitioned node
believing in a dead connection for minutes); an explicit ``THATDAM_AMQP_URL`` keeps whatever it says.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import AmqpDsn, RedisDsn

from thatdam_bus.config import Settings
from thatdam_bus.discovery.records import Endpoints, format_endpoint, parse_endpoint
from thatdam_bus.errors import ConfigError


def amqp_password(settings: Settings) -> str:
    """``THATDAM_AMQP_PASSWORD_FILE`` (trailing newline dropped) when set, else ``THATDAM_AMQP_PASSWORD``."""
    path = settings.amqp_password_file
    if path is None:
        return settings.amqp_password.get_secret_value()
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid THATDAM_AMQP_PASSWORD_FILE: cannot read {path}: {exc}") from exc


def amqp_heartbeat_s(settings: Settings) -> int:
    return max(1, int(settings.lease_ttl // 2))


def amqp_url(endpoint: str, settings: Settings) -> str:
    host, port = parse_endpoint(endpoint)
    credentials = f"{quote(settings.amqp_user, safe='')}:{quote(amqp_password(settings), safe='')}"
    return f"amqp://{credentials}@{format_endpoint(host, port)}/?heartbeat={amqp_heartbeat_s(settings)}"


def redis_url(endpoint: str, settings: Settings) -> str:
    host, port = parse_endpoint(endpoint)
    secret = settings.redis_password
    credentials = f":{quote(secret.get_secret_value(), safe='')}@" if secret is not None else ""
    return f"redis://{credentials}{format_endpoint(host, port)}/0"


def with_endpoints(settings: Settings, endpoints: Endpoints) -> Settings:
    """``settings`` whose URLs point at ``endpoints``; an explicit ``THATDAM_REDIS_URL`` is kept."""
    update: dict[str, object] = {"amqp_url": AmqpDsn(amqp_url(endpoints.amqp, settings))}
    if settings.redis_url is None and endpoints.redis is not None:
        update["redis_url"] = RedisDsn(redis_url(endpoints.redis, settings))
    return settings.model_copy(update=update)
