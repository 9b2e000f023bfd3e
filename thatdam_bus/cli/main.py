"""``thatdam``: the node and its tools (up, tail, publish, status, docs, advertise-infra).

Each command calls ``asyncio.run`` once; errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from thatdam_bus.cli.logs import configure_logging
from thatdam_bus.config import load_settings
from thatdam_bus.errors import ThatdamError


def _up(_args: argparse.Namespace) -> int:
    from thatdam_bus.node.runtime import Node, install_signal_handlers

    settings = load_settings()
    configure_logging(settings.log_level)

    async def run() -> None:
        node = Node(settings)
        install_signal_handlers(node)
        await node.run()

    asyncio.run(run())
    return 0


def _tail(args: argparse.Namespace) -> int:
    from thatdam_bus.cli.tail import run_tail

    return run_tail(args)


def _publish(args: argparse.Namespace) -> int:
    from thatdam_bus.cli.publish import run_publish

    return run_publish(args)


def _status(args: argparse.Namespace) -> int:
    from thatdam_bus.cli.status import run_status

    return run_status(args)


def _docs(args: argparse.Namespace) -> int:
    from thatdam_bus.cli.docs import run_docs

    return run_docs(args)


def _advertise_infra(args: argparse.Namespace) -> int:
    from thatdam_bus.cli.infra import run_infra

    return run_infra(args)


def build_parser() -> argparse.ArgumentParser:
    from thatdam_bus.cli.docs import add_docs_arguments
    from thatdam_bus.cli.infra import add_infra_arguments
    from thatdam_bus.cli.publish import add_publish_arguments
    from thatdam_bus.cli.status import add_status_arguments
    from thatdam_bus.cli.tail import add_tail_arguments

    parser = argparse.ArgumentParser(prog="thatdam", description="thatdam-bus node and tools")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_arguments, run in (
        ("up", "run a node (configured by THATDAM_* environment variables)", None, _up),
        ("tail", "print live events (same as bus-tail)", add_tail_arguments, _tail),
        ("publish", "publish events, signing intents (exit 0/1/2/3/4)", add_publish_arguments, _publish),
        ("status", "leader, epoch and members, read off the bus (exit 3: none)", add_status_arguments, _status),
        ("docs", "write the AsyncAPI document (JSON, YAML) and an offline HTML page", add_docs_arguments, _docs),
        ("advertise-infra", "advertise this host's RabbitMQ and Redis over mDNS (for hosts that run them but no "
         "node)", add_infra_arguments, _advertise_infra),
    ):
        command = commands.add_parser(name, help=help_text)
        if add_arguments is not None:
            add_arguments(command)
        command.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ThatdamError as exc:
        print(f"thatdam: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
