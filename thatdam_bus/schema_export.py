"""JSON Schema for every event type, generated from the pydantic models into ``schemas/``.

The models are the single source of the contract; ``python -m thatdam_bus.schema_export`` rewrites the files
and a test fails when the committed files differ from what the models generate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from thatdam_bus.envelope import Envelope
from thatdam_bus.events.registry import ALL_PAYLOADS

ASYNCAPI_FILE = "asyncapi.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate_schemas() -> dict[str, bytes]:
    """File name -> schema bytes, one envelope schema per event type (data typed by that event's model)."""
    files = {}
    for model in ALL_PAYLOADS:
        schema = Envelope[model].model_json_schema()  # type: ignore[valid-type]
        schema["properties"]["type"]["const"] = model.event_type
        schema = {"$schema": SCHEMA_DIALECT, "$id": f"urn:thatdam:{model.event_type}", **schema}
        schema["title"] = model.event_type
        files[f"{model.event_type}.json"] = orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return files


def generate_asyncapi() -> bytes:
    """The AsyncAPI document over every handler module, with stable key order so the file can be diffed."""
    from thatdam_bus.asyncapi import asyncapi_document
    from thatdam_bus.node.services import discover_services

    document = asyncapi_document(discover_services())
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def write_schemas(directory: Path) -> list[Path]:
    """Rewrite ``directory`` to hold exactly the generated schemas; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    generated = {**generate_schemas(), ASYNCAPI_FILE: generate_asyncapi()}
    for stale in directory.glob("thatdam.*.json"):
        if stale.name not in generated:
            stale.unlink()
    written = []
    for name, content in generated.items():
        path = directory / name
        path.write_bytes(content + b"\n")
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "schemas"
    for path in write_schemas(target):
        print(path)
