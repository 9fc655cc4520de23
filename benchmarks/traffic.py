"""Traffic between network namespaces: TCP throughput with iperf3 and a
TCP request/response rate, for data_plane.py.

Request/response is a small C program (RR_C, built once with the host's
clang): over one TCP connection with TCP_NODELAY the client writes one
byte, waits for the server's one-byte answer, and counts round trips for a
fixed time — netperf's TCP_RR, the figure a policy's per-packet cost shows
in most, since every transaction is two packets through it. C and not
Python, so the tool's own cost does not hide the datapath's. Client and
server run on one CPU (RR_CPU): on different CPUs of an idle virtual
machine each round trip waits for the other vCPU to wake (measured here:
~15,000 round trips/s whatever the datapath, against ~170,000 on one CPU),
which would hide every difference between the set-ups.

Every process started here is stopped by its own PID (Server.stop).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

RR_C = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  int one = 1; char b = 'x';
  struct sockaddr_in a = {.sin_family = AF_INET};
  if (argc == 3 && !strcmp(argv[1], "server")) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_port = htons(atoi(argv[2]));
    if (bind(s, (void *)&a, sizeof a) || listen(s, 8)) { perror("bind"); return 1; }
    for (;;) {
      int c = accept(s, 0, 0);
      if (c < 0) continue;
      setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      while (read(c, &b, 1) == 1 && write(c, &b, 1) == 1) {}
      close(c);
    }
  }
  if (argc == 5 && !strcmp(argv[1], "client")) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, argv[2], &a.sin_addr); a.sin_port = htons(atoi(argv[3]));
    if (connect(c, (void *)&a, sizeof a)) { perror("connect"); return 1; }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    double seconds = atof(argv[4]), start = now(), t = start; long n = 0;
    while (t - start < seconds) {
      if (write(c, &b, 1) != 1 || read(c, &b, 1) != 1) { perror("rr"); return 1; }
      if (++n % 256 == 0) t = now();
    }
    t = now();
    printf("{\"transactions\": %ld, \"seconds\": %.6f}\n", n, t - start);
    return 0;
  }
  fprintf(stderr, "usage: rr server PORT | rr client HOST PORT SECONDS\n");
  return 2;
}
"""


RR_CPU = "0"


def build_rr(tmp: str) -> str:
    """The request/response tool, compiled for this machine; its path."""
    cc = shutil.which("clang") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise FileNotFoundError("no C compiler for the request/response tool: apt-get install clang")
    src, exe = os.path.join(tmp, "rr.c"), os.path.join(tmp, "rr")
    with open(src, "w") as f:
        f.write(RR_C)
    subprocess.run([cc, "-O2", "-o", exe, src], check=True, capture_output=True)
    return exe


def in_netns(netns: str, argv: list[str]) -> list[str]:
    """nsenter enters the network namespace only (and execs: the PID is the tool's)."""
    return ["nsenter", f"--net=/var/run/netns/{netns}", "--", *argv]


class Server:
    """A server process in a namespace, stopped by its own PID."""

    def __init__(self, netns: str, argv: list[str]):
        self.proc = subprocess.Popen(in_netns(netns, argv), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def start_servers(netns: str, rr: str, iperf_port: int, rr_port: int) -> list[Server]:
    return [Server(netns, ["iperf3", "-s", "-p", str(iperf_port)]),
            Server(netns, ["taskset", "-c", RR_CPU, rr, "server", str(rr_port)])]


def wait_listening(client_netns: str, address: str, ports, timeout: float = 10.0) -> None:
    """Until every port accepts a connection from the client's namespace (a
    short Python connect, run inside it)."""
    probe = ("import socket,sys,time\n"
             "end=time.time()+float(sys.argv[2])\n"
             "for p in sys.argv[3:]:\n"
             "  while True:\n"
             "    try: socket.create_connection((sys.argv[1],int(p)),0.5).close(); break\n"
             "    except OSError:\n"
             "      if time.time()>end: sys.exit('port '+p+' not listening')\n"
             "      time.sleep(0.05)\n")
    argv = ["python3", "-c", probe, address, str(timeout)] + [str(p) for p in ports]
    done = subprocess.run(in_netns(client_netns, argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{address} from {client_netns}: {done.stderr.strip()[-300:]}")


def throughput_gbps(client_netns: str, address: str, port: int, seconds: float) -> float:
    """One iperf3 TCP stream for `seconds`: received Gbit/s."""
    argv = ["iperf3", "-c", address, "-p", str(port), "-t", str(seconds), "-J"]
    for attempt in range(3):       # the server takes one test at a time; it may still be closing the last
        done = subprocess.run(in_netns(client_netns, argv), capture_output=True, text=True,
                              timeout=seconds + 30)
        if done.returncode == 0:
            return round(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9, 3)
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 to {address} from {client_netns}: {done.stdout[-300:]} {done.stderr[-300:]}")


def rr_per_second(rr: str, client_netns: str, address: str, port: int, seconds: float) -> float:
    argv = ["taskset", "-c", RR_CPU, rr, "client", address, str(port), str(seconds)]
    done = subprocess.run(in_netns(client_netns, argv),
                          capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"rr to {address} from {client_netns}: {done.stderr.strip()[-300:]}")
    answer = json.loads(done.stdout)
    return round(answer["transactions"] / answer["seconds"])
