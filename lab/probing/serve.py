"""A pod's servers: `python3 -m tailor.lab.probing.serve --tcp 80,81 --udp 80,81`.

Started by probe (one per pod, inside the pod's namespace, for the length of
a probe; one on the outside host with --peers) and by tests (the long-lived stream). TCP listeners echo what they
receive; UDP sockets echo each datagram to its sender. Sockets are IPv6 with
IPV6_V6ONLY off, so one socket per port answers IPv4 and IPv6. Prints
`ready` on stdout once every socket is bound, then serves until killed.
Standard library only, so it starts fast in every pod.
"""
from __future__ import annotations

import argparse
import selectors
import socket
import sys


def _bind(kind: int, port: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = ("::", port)
    except OSError:   # IPv6 disabled in this namespace
        sock = socket.socket(socket.AF_INET, kind)
        address = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    if kind == socket.SOCK_STREAM:
        sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(tcp: list[int], udp: list[int], peers: bool = False) -> None:
    sel = selectors.DefaultSelector()
    for port in tcp:
        sel.register(_bind(socket.SOCK_STREAM, port), selectors.EVENT_READ, "listen")
    for port in udp:
        sel.register(_bind(socket.SOCK_DGRAM, port), selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            try:
                if key.data == "listen":
                    conn, peer = sock.accept()
                    if peers:
                        print(f"peer {_bare(peer[0])}", flush=True)
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                elif key.data == "udp":
                    data, peer = sock.recvfrom(65535)
                    if peers:
                        print(f"peer {_bare(peer[0])}", flush=True)
                    sock.sendto(data, peer)
                else:
                    data = sock.recv(65535)
                    if data:
                        sock.sendall(data)
                    else:
                        sel.unregister(sock)
                        sock.close()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                if key.data == "conn":
                    sel.unregister(sock)
                    sock.close()


def _bare(address: str) -> str:
    """An IPv4 peer of a dual-stack socket comes as ::ffff:a.b.c.d."""
    return address.removeprefix("::ffff:")


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tailor.lab.probing.serve")
    parser.add_argument("--tcp", type=_ports, default=[])
    parser.add_argument("--udp", type=_ports, default=[])
    parser.add_argument("--peers", action="store_true",
                        help="print `peer ADDRESS` for each connection and datagram")
    args = parser.parse_args(argv)
    try:
        serve(args.tcp, args.udp, args.peers)
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"serve: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
