"""The opt-in ``/metrics`` endpoint: a tiny asyncio HTTP server owned by the session's task group.

``prometheus_client.start_http_server`` would run a thread nobody owns (house rule 5); this serves the same
exposition (``generate_latest``) from a task that is cancelled with the session. It binds ``127.0.0.1`` unless
``THATDAM_METRICS_HOST`` says otherwise: the figures name nodes, queues and devices, not for the whole network by
default. A port already in use is logged and the node carries on without metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("thatdam_bus.metrics")
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            request = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].split()
            path = request[1].split(b"?")[0] if len(request) >= 2 else b""
            if request[:1] in ([b"GET"], [b"HEAD"]) and path in {b"/", b"/metrics"}:
                body = await asyncio.to_thread(generate_latest, REGISTRY)
                status, kind = b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, kind = b"not found: try /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
            if request[:1] != [b"HEAD"]:
                writer.write(body)
            await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve_metrics(host: str, port: int) -> None:
    """Serve until cancelled; returns at once (with an error line) when the address cannot be bound."""
    try:
        server = await asyncio.start_server(_answer, host, port, limit=MAX_REQUEST_BYTES)
    except OSError as exc:
        log.error("metrics endpoint not started: cannot listen on %s:%d: %s", host, port, exc)
        return
    log.info("metrics on http://%s:%d/metrics", host, port)
    async with server:
        await server.serve_forever()
