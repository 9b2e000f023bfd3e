"""compose.yaml is valid Compose and wires the node the way the runtime reads its settings.

There is no Docker engine here, so the topology is checked by schema and by the settings model; running the
same processes without containers is what the node tests do.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import reference_schema
from thatdam_bus.config import load_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_validates_against_the_compose_spec(compose: dict) -> None:  # type: ignore[type-arg]
    schema = json.loads(reference_schema("compose-spec.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(compose))
    assert not errors, [e.message for e in errors[:5]]


def test_node_environment_is_accepted_by_the_settings_model(compose: dict, monkeypatch) -> None:  # type: ignore[no-untyped-def,type-arg]
    node = compose["services"]["node"]
    assert node["network_mode"] == "host", "mDNS needs host networking (architecture section 7)"
    for name, value in node["environment"].items():
        default = value.split(":-", 1)[1].rstrip("}") if value.startswith("${") else value
        monkeypatch.setenv(name, default)
    settings = load_settings()
    assert settings.amqp_url is not None and settings.redis_url is not None
    assert str(settings.state_dir) == node["volumes"][0].split(":")[1]
