"""The listen address before gRPC binds it: can it be bound, and (for workers) holding it.

No gRPC here: the supervisor of `tollway serve --workers N` uses this module, and it must not
load gRPC before it starts its workers.
"""

from __future__ import annotations

import socket


class ListenError(OSError):
    """The listen address cannot be bound; the message names it and the reason."""


def split_address(address: str) -> tuple[str, int]:
    """("127.0.0.1", 50051) from "127.0.0.1:50051"; ("::1", 0) from "[::1]:0"."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(address: str) -> list[tuple[int, int, int, tuple[object, ...]]]:
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    try:
        found = socket.getaddrinfo(host, split_address(address)[1], type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        raise ListenError(f"cannot listen on {address}: cannot resolve {host!r}") from exc
    return [(family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr in found]


def check_can_listen(address: str, *, reuse_port: bool = False) -> None:
    """Raise ListenError("cannot listen on HOST:PORT: address already in use") when no address
    HOST resolves to can be bound at PORT (gRPC serves when at least one can).

    reuse_port: probe as a worker of a supervised gateway binds (SO_REUSEPORT), which shares
    the port with its sibling workers and with nothing else."""
    reasons = []
    for family, kind, proto, sockaddr in _addresses(address):
        try:
            # SO_REUSEADDR as gRPC sets it: a port only left in TIME_WAIT by the last run is free.
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(sockaddr)
            return
        except OSError as exc:
            reasons.append((exc.strerror or str(exc)).lower())
    raise ListenError(f"cannot listen on {address}: {reasons[0] if reasons else 'no address to bind'}")


def reserve(address: str) -> tuple[str, list[socket.socket]]:
    """Bind (never listen on) every address HOST resolves to with SO_REUSEPORT, and return the
    address with its port made concrete (port 0 picks a free one) and the bound sockets.

    While the supervisor holds them, workers (SO_REUSEPORT, same user) may bind the port and
    nothing else may: a port is not lost to another program while every worker restarts. A
    socket that is bound but not listening is given no connections."""
    held: list[socket.socket] = []
    host, port = split_address(address)
    reasons = []
    try:
        for family, kind, proto, sockaddr in _addresses(address):
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                # Port 0: the first address picks the port, the others follow it, as gRPC does.
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
            except OSError as exc:
                sock.close()
                reasons.append((exc.strerror or str(exc)).lower())
                continue
            port = sock.getsockname()[1]
            held.append(sock)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    if not held:
        raise ListenError(f"cannot listen on {address}: {reasons[0] if reasons else 'no address to bind'}")
    return join_address(host, port), held
