"""``thatdam docs [--out DIR]``: the contract as files a person can read offline.

Writes ``asyncapi.json``, ``asyncapi.yaml`` and ``index.html`` from the same declarations the node runs
(``node.services.discover_services``), with this machine's servers: RabbitMQ from ``THATDAM_AMQP_URL``
(credentials dropped) and the solo node's socket under ``THATDAM_STATE_DIR``. Nothing is fetched, so it works
on an edge box without internet, and the page loads nothing either.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import yaml

from thatdam_bus.asyncapi import DEFAULT_AMQP_URL, asyncapi_document
from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.config import Settings, load_settings
from thatdam_bus.docs_html import render_html
from thatdam_bus.errors import ConfigError

DEFAULT_OUT = Path("docs/site")


def add_docs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory to write asyncapi.json, asyncapi.yaml and index.html (default {DEFAULT_OUT})")


def document_for(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI document over every service, with this machine's prefix and servers."""
    from thatdam_bus.node.services import discover_services

    amqp_url = str(settings.amqp_url) if settings.amqp_url is not None else DEFAULT_AMQP_URL
    return asyncapi_document(discover_services(), prefix=settings.prefix, amqp_url=amqp_url,
                             state_dir=settings.state_dir)


def write_docs(document: dict[str, Any], out: Path) -> list[Path]:
    """Write the three files (overwriting earlier ones) and return their paths."""
    files = {
        "asyncapi.json": orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n",
        "asyncapi.yaml": yaml.safe_dump(document, sort_keys=True, allow_unicode=True, width=120).encode(),
        "index.html": render_html(document).encode(),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (out / name).write_bytes(content)
    except OSError as exc:
        raise ConfigError(f"cannot write the docs to {out}: {exc}") from exc
    return [out / name for name in files]


def run_docs(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    for path in write_docs(document_for(load_settings()), Path(args.out)):
        print(path)
    return 0
