"""``thatdam publish`` as a script runs it: a real subprocess against RabbitMQ and an in-test node."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.intent_host import KEY, ROUTE, IntentNode, intent_node, silent_queue, transport_on
from tests.nodes import BIN, node_env

GOOD = orjson.dumps({"node_id": "n1", "device": "video0"}).decode()


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    env: dict[str, str]

    async def __call__(self, *args: str, stdin: str = "", timeout: float = 60.0, **env: str) -> Run:
        """Run ``thatdam publish ...`` without blocking the loop the in-test node runs on."""
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "thatdam"), "publish", *args, env={**self.env, **env},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin.encode())
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def cli(rabbitmq: str, prefix: str, state_dir: Path) -> Cli:
    return Cli(node_env(state_dir, THATDAM_AMQP_URL=rabbitmq, THATDAM_PREFIX=prefix, THATDAM_CLUSTER_KEY=KEY))


@pytest.fixture
async def node(rabbitmq: str, prefix: str, amqp_cleanup: Callable[[str], None]) -> AsyncIterator[IntentNode]:
    async with intent_node(rabbitmq, prefix, amqp_cleanup) as node:
        yield node


async def test_a_good_intent_waits_for_done(cli: Cli, node: IntentNode) -> None:
    run = await cli(ROUTE, "--data", GOOD, "--wait", "--timeout", "15")
    assert run.returncode == 0, run.stderr
    intent_id, result = run.stdout.splitlines()
    assert re.fullmatch(rf"{intent_id} done by n1 \(trace [0-9a-f]{{32}}\)", result), result
    assert [e.id for e in node.handled] == [intent_id]
    assert node.handled[0].sig is not None and node.handled[0].exp is not None


async def test_json_lines_from_stdin_send_one_intent_each(cli: Cli, node: IntentNode) -> None:
    lines = "\n".join(orjson.dumps({"node_id": "n1", "device": f"cam{i}"}).decode() for i in range(3))
    run = await cli(ROUTE, "--wait", stdin=lines + "\n")
    assert run.returncode == 0, run.stderr
    assert sorted(e.data.device for e in node.handled) == ["cam0", "cam1", "cam2"]


async def test_an_invalid_payload_names_its_fields_and_sends_nothing(cli: Cli, node: IntentNode) -> None:
    run = await cli(ROUTE, "--data", '{"node_id": "n1", "fps": -1, "colour": "red"}')
    assert run.returncode == 2
    for needle in ("invalid CaptureStartIntent", "device: Field required", "fps:", "colour:"):
        assert needle in run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""


async def test_a_refused_intent_exits_1_with_the_reason(cli: Cli, node: IntentNode) -> None:
    run = await cli(ROUTE, "--data", GOOD, "--wait", THATDAM_CLUSTER_KEY="not the cluster's key")
    assert run.returncode == 1, run.stderr
    assert re.search(r"rejected by n1: bad signature \(trace [0-9a-f]{32}\)$", run.stdout.splitlines()[1])
    policy = await cli(ROUTE, "--data", '{"node_id": "n1", "device": "forbidden"}', "--wait")
    assert policy.returncode == 1
    assert "device forbidden by policy" in policy.stdout
    assert not node.handled


async def test_an_intent_nobody_answers_times_out_with_3(cli: Cli, rabbitmq: str, prefix: str,
                                                         amqp_cleanup: Callable[[str], None]) -> None:
    async with transport_on(rabbitmq, prefix) as transport:
        silent = await silent_queue(transport, prefix, amqp_cleanup)
        run = await cli(ROUTE, "--data", GOOD, "--wait", "--timeout", "0.5")
        assert run.returncode == 3, run.stderr
        assert "no result for intent" in run.stderr
        await silent.wait_count(1)  # it was routed and taken, just never answered


async def test_nothing_bound_is_exit_4(cli: Cli, amqp_cleanup: Callable[[str], None]) -> None:
    run = await cli(ROUTE, "--data", GOOD)
    assert run.returncode == 4
    assert "unroutable" in run.stderr


@pytest.mark.parametrize("key", [None, ""], ids=["unset", "empty"])
async def test_no_key_is_exit_2_naming_the_variable(cli: Cli, key: str | None) -> None:
    if key is None:
        del cli.env["THATDAM_CLUSTER_KEY"]
    run = await cli(ROUTE, "--data", GOOD, **({} if key is None else {"THATDAM_CLUSTER_KEY": key}))
    assert run.returncode == 2
    assert "THATDAM_CLUSTER_KEY" in run.stderr
    assert "Traceback" not in run.stderr


async def test_an_unknown_routing_key_or_bad_json_is_exit_2(cli: Cli) -> None:
    assert (await cli("no.such.channel", "--data", GOOD)).returncode == 2
    run = await cli(ROUTE, stdin='{"node_id": "n1"\n')
    assert run.returncode == 2
    assert "not JSON" in run.stderr
