"""The committed JSON Schemas are exactly what the models generate, and they accept what the code sends."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson

from tests.conftest import reference_schema
from thatdam_bus import NodeHeartbeat, Role
from thatdam_bus.envelope import encode
from thatdam_bus.events.registry import CHANNELS
from thatdam_bus.publisher import Bus
from thatdam_bus.schema_export import ASYNCAPI_FILE, generate_asyncapi, generate_schemas

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_committed_schemas_match_the_models() -> None:
    generated = generate_schemas()
    committed = {path.name: path.read_bytes().rstrip(b"\n") for path in SCHEMAS.glob("thatdam.*.json")}
    stale = sorted(set(committed) - set(generated))
    missing = sorted(set(generated) - set(committed))
    changed = sorted(name for name in generated if name in committed and committed[name] != generated[name])
    assert not (stale or missing or changed), (
        f"schemas/ drifted from the models (stale {stale}, missing {missing}, changed {changed}); "
        "run: .venv/bin/python -m thatdam_bus.schema_export"
    )


def test_a_real_heartbeat_validates_against_its_schema() -> None:
    schema = json.loads((SCHEMAS / "thatdam.node.heartbeat.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    beat = NodeHeartbeat(node_id="n1", hostname="h", role=Role.SOLO, epoch=3, version="1", uptime_s=1,
                         load=0.1, interval_s=1)
    envelope = Bus(transport=None, cluster="c", node_id="n1").envelope(beat)  # type: ignore[arg-type]
    jsonschema.validate(orjson.loads(encode(envelope)), schema)
    broken = orjson.loads(encode(envelope))
    broken["data"]["role"] = "emperor"
    assert not jsonschema.Draft202012Validator(schema).is_valid(broken)




def test_committed_asyncapi_matches_the_code() -> None:
    committed = (SCHEMAS / ASYNCAPI_FILE).read_bytes().rstrip(b"\n")
    assert committed == generate_asyncapi(), "run: .venv/bin/python -m thatdam_bus.schema_export"


def test_asyncapi_covers_every_channel_and_handler() -> None:
    document = orjson.loads(generate_asyncapi())
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {pattern for pattern, _, _ in CHANNELS} <= addresses
    assert "membership.track_heartbeat:node.*.heartbeat" in document["channels"]
    assert "Envelope[NodeHeartbeat]" in document["components"]["schemas"]


def test_asyncapi_validates_against_the_official_schema() -> None:
    official = json.loads(reference_schema("asyncapi-3.0.0.json").read_text())
    validator = jsonschema.Draft7Validator(official)
    errors = sorted(validator.iter_errors(orjson.loads(generate_asyncapi())), key=str)
    assert not errors, "\n".join(e.message[:300] for e in errors[:5])
