"""Which endpoints a node uses: explicit environment > mDNS > CLOUD_CONTROL_URL > solo, with its own credentials;
and THATDAM_MDNS=off."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.nodes import BIN, node_env
from thatdam_bus.config import Settings, load_settings
from thatdam_bus.discovery.records import Endpoints
from thatdam_bus.discovery.service import NoDiscovery, open_discovery
from thatdam_bus.errors import ConfigError
from thatdam_bus.node.link import link_settings, redact

FOUND = Endpoints("10.77.1.2:5672", "10.77.1.2:6379", "mdns:infra-x")
CLOUD = "https://control.example/?amqp=10.9.0.2:5672&redis=10.9.0.3:6379"


def settings(**values: object) -> Settings:
    return Settings(lease_ttl=2.0, **values)  # type: ignore[arg-type]


def test_explicit_environment_wins() -> None:
    explicit = settings(amqp_url="amqp://u:p@rabbit:5672/", cloud_control_url=CLOUD)
    assert link_settings(explicit, FOUND) is explicit


def test_mdns_endpoints_get_our_own_credentials_and_a_short_heartbeat() -> None:
    chosen = link_settings(settings(cloud_control_url=CLOUD), FOUND)
    assert str(chosen.amqp_url) == "amqp://guest:guest@10.77.1.2:5672/?heartbeat=1"
    assert str(chosen.redis_url) == "redis://10.77.1.2:6379/0"
    assert redact(chosen.amqp_url) == "amqp://10.77.1.2:5672/"


def test_an_explicit_redis_url_is_kept_with_discovered_rabbitmq() -> None:
    chosen = link_settings(settings(redis_url="redis://lease.lan:6379/2"), FOUND)
    assert str(chosen.redis_url) == "redis://lease.lan:6379/2"
    assert chosen.amqp_url is not None and chosen.amqp_url.host == "10.77.1.2"


def test_cloud_hint_after_mdns_then_solo() -> None:
    chosen = link_settings(settings(cloud_control_url=CLOUD), None)
    assert chosen.amqp_url is not None and chosen.amqp_url.host == "10.9.0.2"
    assert str(chosen.redis_url) == "redis://10.9.0.3:6379/0"
    alone = settings()
    assert link_settings(alone, None) is alone and alone.amqp_url is None


def test_credentials_come_from_the_environment_or_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "amqp-password"
    secret.write_text("p/w:@1\n")
    chosen = link_settings(settings(amqp_user="cam@site", amqp_password_file=secret,
                                    redis_password=SecretStr("r:s")), FOUND)
    assert chosen.amqp_url is not None and chosen.redis_url is not None
    assert (chosen.amqp_url.username, chosen.amqp_url.password) == ("cam%40site", "p%2Fw%3A%401")
    assert chosen.redis_url.password == "r%3As"
    with pytest.raises(ConfigError, match="THATDAM_AMQP_PASSWORD_FILE"):
        link_settings(settings(amqp_password_file=tmp_path / "missing"), FOUND)


def test_discovery_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THATDAM_MDNS", raising=False)
    assert load_settings().mdns is True
    monkeypatch.setenv("THATDAM_MDNS", "off")
    monkeypatch.setenv("THATDAM_MDNS_INTERFACES", "eth0, 10.0.0.7")
    monkeypatch.setenv("CLOUD_CONTROL_URL", CLOUD)
    loaded = load_settings()
    assert loaded.mdns is False and loaded.mdns_interfaces == ("eth0", "10.0.0.7")
    assert loaded.cloud_control_url == CLOUD
    monkeypatch.setenv("CLOUD_CONTROL_URL", "https://control.example/?redis=h:1")
    with pytest.raises(ConfigError, match=r"^invalid CLOUD_CONTROL_URL: .*names no amqp endpoint"):
        load_settings()


async def test_mdns_off_advertises_and_browses_nothing() -> None:
    async with open_discovery(settings(mdns=False), "n1") as discovery:
        assert isinstance(discovery, NoDiscovery)
        assert await discovery.wait_for_endpoints(5) is None
        discovery.announce("leader", 3)
        discovery.use("amqp://u:p@127.0.0.1:5672/", None)
        assert discovery.endpoints() is None


def test_advertise_infra_refuses_with_mdns_off(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "thatdam"), "advertise-infra"], env=node_env(tmp_path, THATDAM_MDNS="off"),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "thatdam: cannot advertise: mDNS is off" in result.stderr
