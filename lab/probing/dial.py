"""A pod's client: `python3 -m tailor.lab.probing.dial` (probe mode) or
`... dial --stream ADDR PORT --seconds S` (stream mode).

Started by probe (one per source pod, inside its namespace) and by tests.
Standard library only.

Probe mode reads a JSON list of targets on stdin,
`[{"id": 7, "address": "10.244.2.3", "protocol": "TCP", "port": 80}, ...]`,
tries them all at once (one thread each) and prints one JSON object
`{"7": "open" | "refused" | "timeout" | "error: ..."}`. TCP is a connect
with a timeout; UDP sends a datagram (again every quarter of the timeout)
and waits for the echo.

Stream mode holds one TCP connection and sends a byte every `--interval`
seconds for `--seconds`, reading the echo, then prints
`{"sent", "received", "max_gap", "error"}`: max_gap is the longest time
between two echoes arriving, error the first socket error (a reset) or null.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

RESENDS = 4


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp(address: str, port: int, timeout: float) -> str:
    with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            return "open"
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, socket.timeout):
            return "timeout"
        except OSError as e:
            return f"error: {e}"


def udp(address: str, port: int, timeout: float) -> str:
    payload = f"tailor-probe {address} {port}".encode()
    deadline = time.monotonic() + timeout
    with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, port))
            for _ in range(RESENDS):
                sock.send(payload)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(min(left, timeout / RESENDS))
                try:
                    if sock.recv(65535) == payload:
                        return "open"
                except (TimeoutError, socket.timeout):
                    continue
            return "timeout"
        except ConnectionRefusedError:   # an ICMP port unreachable came back
            return "refused"
        except OSError as e:
            return f"error: {e}"


def probe(targets: list[dict], timeout: float) -> dict[str, str]:
    results: dict[str, str] = {}

    def one(t: dict) -> None:
        check = tcp if t["protocol"] == "TCP" else udp
        results[str(t["id"])] = check(t["address"], int(t["port"]), timeout)

    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def stream(address: str, port: int, seconds: float, interval: float) -> dict:
    sent = received = 0
    max_gap, error = 0.0, None
    with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect((address, port))
        sock.settimeout(interval)
        print("connected", flush=True)
        start = last = time.monotonic()
        next_send = start
        while time.monotonic() - start < seconds:
            try:
                now = time.monotonic()
                if now >= next_send:
                    sock.send(b"x")
                    sent += 1
                    next_send += interval
                try:
                    data = sock.recv(4096)
                except (TimeoutError, socket.timeout):
                    data = None
                if data == b"":
                    error = "connection closed by the peer"
                    break
                if data:
                    now = time.monotonic()
                    received += len(data)
                    max_gap = max(max_gap, now - last)
                    last = now
            except OSError as e:
                error = f"{type(e).__name__}: {e}"
                break
        max_gap = max(max_gap, time.monotonic() - last) if error is None else max_gap
    return {"sent": sent, "received": received, "max_gap": round(max_gap, 3), "error": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tailor.lab.probing.dial")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per connection attempt")
    parser.add_argument("--stream", nargs=2, metavar=("ADDR", "PORT"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args(argv)
    if args.stream:
        try:
            out = stream(args.stream[0], int(args.stream[1]), args.seconds, args.interval)
        except OSError as e:
            out = {"sent": 0, "received": 0, "max_gap": 0, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
        return 0 if out["error"] is None else 1
    targets = json.load(sys.stdin)
    print(json.dumps(probe(targets, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
