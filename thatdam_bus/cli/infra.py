"""``thatdam advertise-infra``: make this host's RabbitMQ and Redis findable over mDNS.

For a host that runs the infrastructure but no node: it registers one ``_thatdam._tcp.local.`` record with role
``infra`` for ``THATDAM_CLUSTER``, carrying the two endpoints (``host:port``, never credentials), until SIGINT
or SIGTERM, then withdraws it. Endpoints default to ``THATDAM_AMQP_URL`` / ``THATDAM_REDIS_URL`` (their host and
port only), else ``127.0.0.1:5672`` / ``127.0.0.1:6379``; a local host (127.0.0.1, localhost) is advertised as
this host's reachable address, since that is how peers must dial it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import socket

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.config import Settings, load_settings
from thatdam_bus.discovery.records import INFRA_ROLE, endpoint_of, format_endpoint, parse_endpoint
from thatdam_bus.errors import ConfigError


def add_infra_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amqp", metavar="HOST:PORT", help="RabbitMQ endpoint (default: THATDAM_AMQP_URL's, "
                        "else 127.0.0.1:5672)")
    parser.add_argument("--redis", metavar="HOST:PORT", help="Redis endpoint (default: THATDAM_REDIS_URL's, "
                        "else 127.0.0.1:6379)")
    parser.add_argument("--name", help="record name (default: infra-<hostname>)")


def _endpoint(given: str | None, url: object | None, default: str, option: str) -> str:
    try:
        if given is not None:
            return format_endpoint(*parse_endpoint(given))
        return endpoint_of(str(url)) if url is not None else default
    except ValueError as exc:
        raise ConfigError(f"invalid {option}: {exc}") from None


def default_name() -> str:
    return "infra-" + re.sub(r"[^A-Za-z0-9_\-]", "-", socket.gethostname())[:56]


def run_infra(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level)
    amqp = _endpoint(args.amqp, settings.amqp_url, "127.0.0.1:5672", "--amqp")
    redis = _endpoint(args.redis, settings.redis_url, "127.0.0.1:6379", "--redis")
    return asyncio.run(_advertise(settings, args.name or default_name(), amqp, redis))


async def _advertise(settings: Settings, name: str, amqp: str, redis: str) -> int:
    from thatdam_bus.discovery.service import Discovery, open_discovery

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_discovery(settings, name, role=INFRA_ROLE, browse=False) as discovery:
        if not isinstance(discovery, Discovery):
            raise ConfigError("cannot advertise: mDNS is off (THATDAM_MDNS) or no interface is reachable")
        discovery.use(amqp, redis)
        if discovery.advert.amqp is None:
            raise ConfigError(f"cannot advertise {amqp}: it is local and this host has no reachable address")
        discovery.announce(INFRA_ROLE, 0)
        await stop.wait()
    return 0
