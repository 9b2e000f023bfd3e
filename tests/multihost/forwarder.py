"""A TCP forwarder that joins two network namespaces: it listens *inside* one (the test bed's infra host) and
dials *from* its own (the machine's root namespace, where RabbitMQ and Redis listen on 127.0.0.1 only).

Why not ``ip netns exec infra <forwarder>``: a process inside the infra namespace has its own loopback and
cannot reach the root's 127.0.0.1, and RabbitMQ/Redis listen nowhere else. A socket belongs to the namespace
of the thread that created it, for life, so this process (started in the root namespace) enters the infra
namespace with setns(2) only to create its listening sockets, then returns: accepted connections live in the
infra namespace (reachable only over the test bridge, cut with its links), upstream ones in the root namespace.

    python -m tests.multihost.forwarder NETNS LISTEN_PORT=UPSTREAM_PORT ...   # prints "ready" when listening
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys

from tests.tcp_proxy import TcpProxy

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def listen_in(netns: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on 0.0.0.0:<port> inside ``/run/netns/<netns>``; the thread comes back home."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            sockets = []
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                sock.listen(128)
                sock.setblocking(False)
                sockets.append(sock)
            return sockets
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


class NetnsProxy(TcpProxy):
    """``TcpProxy`` serving a socket made elsewhere (here: in another namespace)."""

    def __init__(self, sock: socket.socket, upstream_port: int) -> None:
        super().__init__("127.0.0.1", upstream_port)
        self._sock = sock

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self._sock)


async def main(netns: str, pairs: list[tuple[int, int]]) -> None:
    sockets = listen_in(netns, [listen for listen, _ in pairs])
    proxies = [NetnsProxy(sock, upstream) for sock, (_, upstream) in zip(sockets, pairs, strict=True)]
    for proxy in proxies:
        await proxy.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for proxy in proxies:
        await proxy.aclose()


if __name__ == "__main__":
    pairs = [tuple(int(p) for p in arg.split("=", 1)) for arg in sys.argv[2:]]
    asyncio.run(main(sys.argv[1], pairs))  # type: ignore[arg-type]
