"""An emulated lab node: `python3 -m tailor.lab.emulated --node N
--listen unix:PATH --wire unix:PATH --program-source unix:PATH`.

Started by lab.up (processes.start) for `--backend emulated`, where there
are no namespaces, veths or CNI (no root). It is the node agent — the same
core (agent/core.py), emulated backend and gRPC Agent service — plus one
lab-only JSON service on its own socket standing in for the CNI plugin:

    tailor.lab.v1.EmulatedNode/Wire {"namespace", "name", "uid", "containerID", "addresses"}

which hands the core a synthetic endpoint (interface `tl` + hash, made-up
MACs and ifindex) through the same `attach_pod` a CNI ADD calls, so the
core asks the controller for the program (ProgramFor) exactly as in the
kernel lab. `probe` then answers through the Agent service's Trace.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc

from tailor.datapath.agent import core as core_
from tailor.datapath.agent import server as server_
from tailor.datapath.agent import source
from tailor.datapath.agent.backends import base
from tailor.datapath.agent.backends.emulated import EmulatedBackend

SERVICE = "tailor.lab.v1.EmulatedNode"
log = logging.getLogger("tailor.lab.emulated")


def endpoint(container_id: str, addresses: list[str]) -> base.Endpoint:
    """A made-up but stable wired interface for a pod."""
    digest = hashlib.sha256(f"{container_id}/eth0".encode()).digest()
    return base.Endpoint(container_id=container_id, ifname="eth0", netns="",
                         host_ifname="tl" + digest.hex()[:11],
                         host_ifindex=1000 + int.from_bytes(digest[:2], "big"),
                         host_mac=b"\xee" + digest[2:7], pod_mac=b"\x02" + digest[7:12],
                         addresses=tuple(addresses))


def wire(socket_path: str, request: dict, timeout: float = 30.0) -> dict:
    """Called by lab.up: wire one pod on an emulated node."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        fn = channel.unary_unary(f"/{SERVICE}/Wire", request_serializer=lambda o: json.dumps(o).encode(),
                                 response_deserializer=json.loads)
        return fn(request, timeout=timeout)


def _wire_handler(core: core_.Core):
    def handle(req: dict, context) -> dict:
        ep = endpoint(req["containerID"], req["addresses"])
        try:
            core.attach_pod({"namespace": req["namespace"], "name": req["name"], "uid": req["uid"],
                             "containerID": req["containerID"]}, ep)
        except (TimeoutError, base.BackendError) as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{type(e).__name__}: {e}")
        return {"interface": ep.host_ifname}

    return grpc.method_handlers_generic_handler(SERVICE, {"Wire": grpc.unary_unary_rpc_method_handler(
        handle, request_deserializer=json.loads, response_serializer=lambda o: json.dumps(o).encode())})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tailor.lab.emulated")
    parser.add_argument("--node", required=True)
    parser.add_argument("--listen", required=True, help="the Agent service: unix:/path")
    parser.add_argument("--wire", required=True, help="the lab's Wire service: unix:/path")
    parser.add_argument("--program-source", required=True)
    parser.add_argument("--node-ip", action="append", default=[], help="an address of the node")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    core = core_.Core(args.node, EmulatedBackend(args.node),
                      program_for=source.GrpcProgramSource(args.program_source),
                      node_addresses=tuple(args.node_ip))
    core.start()
    for address in (args.listen, args.wire):
        path = address.removeprefix("unix:")
        if os.path.exists(path):
            os.unlink(path)
    agent_server = server_.serve(core, args.listen)
    lab_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    lab_server.add_generic_rpc_handlers((_wire_handler(core),))
    lab_server.add_insecure_port(args.wire)
    lab_server.start()
    log.info("emulated node %s: agent on %s, wire on %s", args.node, args.listen, args.wire)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    lab_server.stop(1).wait()
    agent_server.stop(1).wait()
    core.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
