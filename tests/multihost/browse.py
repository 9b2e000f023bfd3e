"""What a host of the test bed sees over mDNS: every version of every ``_thatdam._tcp.local.`` record, raw.

Run on a host (``ip netns exec``); appends one JSON line per record version to OUT:
``{"at": <wall clock>, "name": ..., "state": "added|updated|removed", "properties": {...}, "addresses": [...]}``.
Plain zeroconf, not the code under test, so the tests judge the record as any other mDNS client would read it.

    python -m tests.multihost.browse OUT
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import orjson
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from thatdam_bus.discovery.records import SERVICE_TYPE


class Recorder:
    def __init__(self, out: Path, zeroconf: AsyncZeroconf) -> None:
        self.out, self.zc = out, zeroconf
        self.pending: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()

    def on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        self.pending.put_nowait((name, state_change))

    async def run(self) -> None:
        while True:
            name, change = await self.pending.get()
            record: dict[str, object] = {"at": time.time(), "name": name, "state": change.name.lower()}
            if change is not ServiceStateChange.Removed:
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                if not await info.async_request(self.zc.zeroconf, 3000):
                    continue
                record["properties"] = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
                record["addresses"] = info.parsed_addresses()
            with self.out.open("ab") as handle:
                handle.write(orjson.dumps(record) + b"\n")


async def main(out: Path) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with AsyncZeroconf(ip_version=IPVersion.V4Only) as zeroconf:
        recorder = Recorder(out, zeroconf)
        browser = AsyncServiceBrowser(zeroconf.zeroconf, SERVICE_TYPE, handlers=[recorder.on_change])
        task = asyncio.create_task(recorder.run())
        out.touch()
        await stop.wait()
        task.cancel()
        await browser.async_cancel()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
