"""Address selection: what peers can reach, never loopback or a container bridge; the override wins."""

from __future__ import annotations

from ifaddr import IP, Adapter

from thatdam_bus.discovery.addresses import Address, advertised_endpoint, is_local_host, reachable_addresses


def adapter(name: str, *ips: str) -> Adapter:
    return Adapter(name, name, [IP(ip, 24, name) for ip in ips], index=1)


MACHINE = [
    adapter("lo", "127.0.0.1"),
    adapter("docker0", "172.17.0.1"),
    adapter("br-5e1f0c", "172.18.0.1"),
    adapter("veth12ab", "169.254.3.3"),
    adapter("eth0", "192.168.1.20"),
    adapter("wlan0", "169.254.10.1", "10.0.0.7"),
    Adapter("eth1", "eth1", [IP(("fd00::2", 0, 0), 64, "eth1")], index=3),
]


def test_only_addresses_peers_can_reach_are_picked() -> None:
    assert reachable_addresses(adapters=MACHINE) == [Address("eth0", "192.168.1.20"), Address("wlan0", "10.0.0.7")]


def test_the_override_names_interfaces_or_addresses_and_may_pick_a_bridge() -> None:
    assert reachable_addresses(["docker0"], adapters=MACHINE) == [Address("docker0", "172.17.0.1")]
    assert reachable_addresses(["10.0.0.7"], adapters=MACHINE) == [Address("wlan0", "10.0.0.7")]
    assert reachable_addresses(["lo"], adapters=MACHINE) == []


def test_a_local_endpoint_is_advertised_as_our_reachable_address() -> None:
    ours = [Address("eth0", "192.168.1.20")]
    assert advertised_endpoint("127.0.0.1:5672", ours) == "192.168.1.20:5672"
    assert advertised_endpoint("localhost:6379", ours) == "192.168.1.20:6379"
    assert advertised_endpoint("0.0.0.0:5672", ours) == "192.168.1.20:5672"
    assert advertised_endpoint("rabbit.lan:5672", ours) == "rabbit.lan:5672"
    assert advertised_endpoint("10.9.9.9:5672", ours) == "10.9.9.9:5672"
    assert advertised_endpoint("127.0.0.1:5672", []) is None
    assert advertised_endpoint(None, ours) is None


def test_local_hosts() -> None:
    assert all(is_local_host(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "LOCALHOST"))
    assert not any(is_local_host(h) for h in ("10.0.0.1", "rabbit.lan", "fd00::1"))
