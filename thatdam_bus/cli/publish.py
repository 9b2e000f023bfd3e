"""``thatdam publish ROUTING_KEY``: send events (above all signed intents) from shell scripts.

The payload is one JSON object, or JSON lines for many, from ``--data``, ``--file`` or stdin. Every payload is
validated against the channel's model before anything is sent, intents are signed with the cluster key, and
publishes are confirmed and mandatory, so "nobody is listening" is an error rather than silence.

With ``--wait`` each result line ends with the intent's trace id: ``<id> done by <node> (trace <trace id>)``.

Exit codes: 0 sent (and ``done`` with ``--wait``); 1 rejected; 2 bad input or configuration; 3 no result
before ``--timeout``; 4 the broker refused or could not route the message.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.client import Client, model_for_routing_key
from thatdam_bus.config import Settings, load_settings
from thatdam_bus.envelope import Envelope, Payload, describe_validation_error
from thatdam_bus.errors import ConfigError, ContractError, PublishRefused
from thatdam_bus.events.intent import IntentResult, IntentStatus
from thatdam_bus.security.keys import signing_key
from thatdam_bus.tracing import trace_id_of

EXIT_REJECTED = 1
EXIT_TIMEOUT = 3
EXIT_REFUSED = 4


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("routing_key", help="e.g. intent.capture.start")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="the payload: a JSON object, or JSON lines for several")
    source.add_argument("--file", type=Path, help="read the payload from this file (default: stdin)")
    parser.add_argument("--wait", action="store_true", help="wait for each intent's result (exit 0/1/3)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds --wait allows (default 10)")


def read_text(args: argparse.Namespace) -> str:
    if args.data is not None:
        return str(args.data)
    if args.file is not None:
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ContractError(f"cannot read {args.file}: {exc}") from exc
    return sys.stdin.read()


def parse_documents(text: str) -> list[dict[str, Any]]:
    """One JSON object (possibly spread over lines), else one object per non-empty line."""
    if not text.strip():
        raise ContractError("no payload: pass --data, --file, or JSON on stdin")
    try:
        documents = [orjson.loads(text)]
    except orjson.JSONDecodeError:
        documents = [_line(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    for number, document in enumerate(documents, 1):
        if not isinstance(document, dict):
            raise ContractError(f"payload {number} is JSON {type(document).__name__}, not an object")
    return documents


def _line(number: int, line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"line {number} is not JSON: {exc}") from exc


def validate(model: type[Payload], documents: list[dict[str, Any]]) -> list[Payload]:
    """All or nothing: every invalid payload is listed (field by field) and nothing is sent."""
    payloads, problems = [], []
    for number, document in enumerate(documents, 1):
        try:
            payloads.append(model.model_validate(document))
        except ValidationError as exc:
            where = f"payload {number}: " if len(documents) > 1 else ""
            problems.append(f"{where}{describe_validation_error(exc, limit=10)}")
    if problems:
        raise ContractError(f"invalid {model.__name__} ({model.event_type}): {' | '.join(problems)}")
    return payloads


async def publish(args: argparse.Namespace, settings: Settings, payloads: list[Payload]) -> int:
    async with Client.connect(settings) as client:
        envelopes = [client.envelope(payload, args.routing_key) for payload in payloads]
        if not args.wait:
            await _send_all(client, envelopes, args.routing_key)
            return 0
        async with client.awaiting(e.id for e in envelopes) as waiter:
            await _send_all(client, envelopes, args.routing_key)
            results = await waiter.wait_all(args.timeout)
    return report(envelopes, results, args.timeout)


async def _send_all(client: Client, envelopes: list[Envelope[Any]], routing_key: str) -> None:
    for envelope in envelopes:
        await client.send(envelope, routing_key)
        print(envelope.id, flush=True)


def report(envelopes: list[Envelope[Any]], results: dict[str, IntentResult], timeout: float) -> int:
    """One line per intent, ending with its trace id (``bus-tail --trace ID`` shows what it caused); the exit
    code is the worst outcome (rejected before timed out)."""
    code = 0
    for envelope in envelopes:
        result = results.get(envelope.id)
        trace = f"(trace {trace_id_of(envelope.traceparent)})"
        if result is None:
            print(f"thatdam: no result for intent {envelope.id} within {timeout:g}s {trace}", file=sys.stderr)
            code = code or EXIT_TIMEOUT
        elif result.status is IntentStatus.REJECTED:
            print(f"{envelope.id} rejected by {result.node_id}: {result.reason or 'no reason given'} {trace}")
            code = EXIT_REJECTED
        else:
            print(f"{envelope.id} {result.status} by {result.node_id} {trace}")
    return code


def run_publish(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    settings = load_settings()
    model = model_for_routing_key(args.routing_key)
    if args.wait and not model.signed:
        raise ConfigError(f"--wait needs an intent; {model.__name__} has no result to wait for")
    payloads = validate(model, parse_documents(read_text(args)))
    if model.signed:
        signing_key(settings)  # no key: fail before connecting, naming THATDAM_CLUSTER_KEY
    try:
        return asyncio.run(publish(args, settings, payloads))
    except PublishRefused as exc:
        print(f"thatdam: {exc}", file=sys.stderr)
        return EXIT_REFUSED
