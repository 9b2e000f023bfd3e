"""``thatdam docs``: the AsyncAPI document it writes is valid AsyncAPI 3.0.0, and its HTML page renders every
channel in a browser that has no network at all."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import reference_schema
from tests.nodes import BIN, node_env
from tests.tools.chromium import find_chromium, run_offline
from thatdam_bus.docs_html import render_html
from thatdam_bus.docs_schema import anchor
from thatdam_bus.events.registry import CHANNELS

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "tools"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``thatdam docs --out DIR`` run as a user would, with credentials in the AMQP URL."""
    base = tmp_path_factory.mktemp("docs")
    out = base / "site"
    run = subprocess.run(
        [str(BIN / "thatdam"), "docs", "--out", str(out)],
        env=node_env(base / "state", THATDAM_AMQP_URL="amqp://scott:tiger-secret@rmq.example:5673/edge"),
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(out / name) for name in ("asyncapi.json", "asyncapi.yaml", "index.html")]
    return out


@pytest.fixture(scope="module")
def document(site: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((site / "asyncapi.json").read_text())
    return loaded


def test_the_written_document_is_valid_asyncapi_3(document: dict[str, Any], site: Path) -> None:
    official = json.loads(reference_schema("asyncapi-3.0.0.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(official).iter_errors(document), key=str)
    assert not errors, "\n".join(e.message[:300] for e in errors[:5])
    assert document["asyncapi"] == "3.0.0"
    assert yaml.safe_load((site / "asyncapi.yaml").read_text()) == document


def test_servers_are_this_machines_without_credentials(document: dict[str, Any], site: Path) -> None:
    servers = document["servers"]
    assert servers["rabbitmq"]["host"] == "rmq.example:5673" and servers["rabbitmq"]["pathname"] == "/edge"
    embedded = servers["embedded"]
    assert embedded["protocol"] == "thatdam-embedded"
    assert embedded["pathname"] == "{stateDir}/bus.sock"
    assert embedded["variables"]["stateDir"]["default"] == str(site.parent / "state")
    for channel in document["channels"].values():
        assert channel["servers"] == [{"$ref": "#/servers/rabbitmq"}, {"$ref": "#/servers/embedded"}]
    for path in site.iterdir():
        text = path.read_text()
        assert "tiger-secret" not in text and "scott" not in text, f"credentials leaked into {path.name}"


def test_every_channel_is_documented(document: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {pattern for pattern, _, _ in CHANNELS} <= addresses


def test_the_page_loads_nothing_from_anywhere(site: Path) -> None:
    page = (site / "index.html").read_text()
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, flags=re.IGNORECASE)
    assert "url(" not in page
    assert "default-src 'none'" in page  # the browser enforces it too (Content-Security-Policy)


def test_the_page_escapes_what_it_renders() -> None:
    page = render_html({"asyncapi": "3.0.0", "info": {"title": "<script>x</script>", "description": "a `<b>`"},
                        "channels": {"c<1>": {"address": "a.<img src=x>", "description": "d"}}})
    assert "<script>x" not in page and "<img" not in page
    assert "&lt;img src=x&gt;" in page and "<code>&lt;b&gt;</code>" in page


def test_the_page_renders_every_channel_in_an_offline_browser(document: dict[str, Any], site: Path,
                                                              tmp_path: Path) -> None:
    browser = find_chromium()
    url = (site / "index.html").as_uri()
    dump = run_offline(browser, tmp_path / "profile-dom", url, "--dump-dom")
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = dump.stdout
    for key, channel in document["channels"].items():
        section = re.search(rf'<section class="channel" id="{re.escape(anchor("ch", key))}">(.*?)</section>', dom,
                            flags=re.DOTALL)
        assert section is not None, f"channel {key} is not in the rendered DOM"
        assert f"<code>{channel['address']}</code>" in section.group(1)
        assert "<table>" in section.group(1), f"channel {key} has no payload schema table"
    for operation_id in document["operations"]:
        assert f"<code>{operation_id}</code>" in dom
    for name in document["components"]["schemas"]:
        assert f'id="{anchor("schema", name)}"' in dom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "asyncapi-docs.png"
    shot.unlink(missing_ok=True)
    run = run_offline(browser, tmp_path / "profile-shot", url, f"--screenshot={shot}", "--window-size=1400,2400",
                      "--hide-scrollbars")
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    print(f"screenshot: {shot}")
