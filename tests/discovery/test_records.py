"""The TXT record: what it carries, that it round-trips, and that no credential can get into it or out of it."""

from __future__ import annotations

import pytest

from thatdam_bus.discovery.records import Advert, Endpoints, cloud_endpoints, endpoint_of, parse_endpoint


def test_properties_carry_the_planned_keys_and_round_trip() -> None:
    advert = Advert(node_id="n1", cluster="lab", role="leader", epoch=7, version="0.1.0",
                    amqp="10.0.0.5:5672", redis="10.0.0.5:6379")
    props = advert.properties()
    assert props == {"node_id": "n1", "cluster": "lab", "role": "leader", "epoch": "7", "version": "0.1.0",
                     "amqp": "10.0.0.5:5672", "redis": "10.0.0.5:6379"}
    wire = {k.encode(): v.encode() for k, v in props.items()}
    assert Advert.from_properties(wire) == advert
    assert advert.instance_name == "n1._thatdam._tcp.local."
    assert advert.endpoints == Endpoints("10.0.0.5:5672", "10.0.0.5:6379", "mdns:n1")


def test_endpoints_that_are_not_set_are_left_out() -> None:
    props = Advert(node_id="n1", cluster="lab", role="solo").properties()
    assert "amqp" not in props and "redis" not in props
    assert Advert(node_id="n1", cluster="lab", role="solo").endpoints is None


@pytest.mark.parametrize("url", [
    "amqp://admin:s3cret@rabbit.lan:5672/prod?heartbeat=5",
    "amqps://admin:s3cret@rabbit.lan/",
    "redis://:s3cret@rabbit.lan:6379/0",
])
def test_endpoint_of_a_url_keeps_host_and_port_only(url: str) -> None:
    endpoint = endpoint_of(url)
    assert "s3cret" not in endpoint and "admin" not in endpoint and "/" not in endpoint
    assert endpoint.startswith("rabbit.lan:")


@pytest.mark.parametrize("text", ["guest:guest@10.0.0.5:5672", "amqp://10.0.0.5:5672", "10.0.0.5", "10.0.0.5:0",
                                  "10.0.0.5:70000", "host:5672/vhost", "user@host:5672"])
def test_anything_but_host_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)
    with pytest.raises(ValueError):
        Advert(node_id="n1", cluster="lab", role="worker", amqp=text)


def test_a_record_with_a_credential_or_garbage_is_ignored() -> None:
    base = {b"node_id": b"n2", b"cluster": b"lab", b"role": b"worker", b"epoch": b"1"}
    assert Advert.from_properties({**base, b"amqp": b"guest:guest@10.0.0.5:5672"}) is None
    assert Advert.from_properties({**base, b"epoch": b"-1"}) is None
    assert Advert.from_properties({**base, b"node_id": b"a b"}) is None
    assert Advert.from_properties({b"cluster": b"lab"}) is None
    assert Advert.from_properties({**base, b"amqp": b"\xff"}) is None
    assert Advert.from_properties({**base, b"extra": None}) is not None


def test_ipv6_endpoints_are_bracketed() -> None:
    assert endpoint_of("amqp://[fd00::5]:5672/") == "[fd00::5]:5672"
    assert parse_endpoint("[fd00::5]:5672") == ("fd00::5", 5672)


def test_cloud_control_url_names_endpoints_in_its_query() -> None:
    hint = cloud_endpoints("https://control.example/site/7?amqp=10.1.0.2:5672&redis=redis://10.1.0.3:6380/0")
    assert hint == Endpoints("10.1.0.2:5672", "10.1.0.3:6380", "cloud-control")
    assert cloud_endpoints("https://c.example/?amqp=amqp://u:p@h:5672/").amqp == "h:5672"
    with pytest.raises(ValueError, match="names no amqp endpoint"):
        cloud_endpoints("https://control.example/?redis=h:6379")
