"""Which local addresses peers can reach: what a record advertises and where mDNS speaks.

Not loopback, not link-local, and not the bridges a container runtime makes (``docker0``, ``br-*``, ``veth*``,
and the like): an address there is only reachable from this machine's containers. ``THATDAM_MDNS_INTERFACES``
(interface names or IPv4 addresses) replaces the rule. IPv4 only: every endpoint we advertise is IPv4 today.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ifaddr import Adapter, get_adapters

from thatdam_bus.discovery.records import format_endpoint, parse_endpoint

CONTAINER_BRIDGES = ("docker", "br-", "veth", "virbr", "cni", "flannel", "podman")
LOCAL_HOSTS = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass(frozen=True)
class Address:
    interface: str
    ip: str


def _ipv4(adapters: Iterable[Adapter]) -> list[Address]:
    return [Address(adapter.nice_name, entry.ip) for adapter in adapters for entry in adapter.ips
            if isinstance(entry.ip, str)]


def _reachable(address: Address) -> bool:
    ip = ipaddress.IPv4Address(address.ip)
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return False
    return not address.interface.startswith(CONTAINER_BRIDGES)


def reachable_addresses(override: Sequence[str] = (), adapters: Iterable[Adapter] | None = None) -> list[Address]:
    """This machine's IPv4 addresses that peers can reach, in interface order. With ``override``, exactly the
    addresses of the named interfaces or the named addresses (loopback still excluded: mDNS cannot use it)."""
    every = _ipv4(get_adapters() if adapters is None else adapters)
    if override:
        wanted = set(override)
        return [a for a in every if (a.interface in wanted or a.ip in wanted)
                and not ipaddress.IPv4Address(a.ip).is_loopback]
    return [a for a in every if _reachable(a)]


def is_local_host(host: str) -> bool:
    """True for names and addresses only this machine can use (127.0.0.1, ::1, 0.0.0.0, localhost)."""
    if host.lower() in LOCAL_HOSTS:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def advertised_endpoint(endpoint: str | None, addresses: Sequence[Address]) -> str | None:
    """The endpoint as peers must dial it: a local host (127.0.0.1, localhost) becomes our first reachable
    address; ``None`` when it is local and we have no reachable address (advertising it would mislead)."""
    if endpoint is None:
        return None
    host, port = parse_endpoint(endpoint)
    if not is_local_host(host):
        return endpoint
    return format_endpoint(addresses[0].ip, port) if addresses else None
