"""The agents side of the operator's test world (operator_world.World): one
node agent per node, in this process — agent core + emulated backend + the
gRPC Agent service — asking the operator's ProgramSource at "CNI ADD"
exactly as the real CNI path does (`Agent.wire` hands the core a synthetic
endpoint through `attach_pod`, as the emulated lab does), and counting the
Apply / UpdateMaps / Remove calls per pod and the UpdateGroups calls per
node (CountingCore).
"""
from __future__ import annotations

import collections
import dataclasses

import grpc
from tailor.datapath.agent import core as core_
from tailor.datapath.agent import server as server_
from tailor.datapath.agent import source as source_
from tailor.datapath.agent.api import agent_pb2_grpc as pb_grpc
from tailor.datapath.agent.backends.emulated import EmulatedBackend
from tailor.lab import emulated as lab_emulated


class CountingCore(core_.Core):
    """The agent core, counting what the operator sends: per pod, and per
    node for the node-wide group updates (UpdateGroups; the members that
    travel inside an Apply or a CNI hand-off are not counted here)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.applies: collections.Counter = collections.Counter()
        self.reloads: collections.Counter = collections.Counter()    # applies that changed something
        self.map_updates: collections.Counter = collections.Counter()
        self.removes: collections.Counter = collections.Counter()
        self.group_updates: collections.Counter = collections.Counter()        # node -> calls
        self.full_group_updates: collections.Counter = collections.Counter()   # of them, full=True
        self.group_changes: list = []          # (full, changes) of every UpdateGroups, in order

    def apply(self, received):
        self.applies[received.key] += 1
        status, changed = super().apply(received)
        if changed:
            self.reloads[received.key] += 1
        return status, changed

    def update_maps(self, namespace, name, uid, maps):
        self.map_updates[f"{namespace}/{name}"] += 1
        return super().update_maps(namespace, name, uid, maps)

    def update_groups(self, changes, *, full=False):
        self.group_updates[self.node] += 1
        if full:
            self.full_group_updates[self.node] += 1
        self.group_changes.append((full, tuple(changes)))
        return super().update_groups(changes, full=full)

    def remove(self, namespace, name, uid=""):
        self.removes[f"{namespace}/{name}"] += 1
        return super().remove(namespace, name, uid)


@dataclasses.dataclass
class Agent:
    node: str
    listen: str
    source: str
    core: CountingCore | None = None
    server: grpc.Server | None = None
    program_source: source_.GrpcProgramSource | None = None
    wired: dict = dataclasses.field(default_factory=dict)    # "ns/name" -> (uid, addresses)

    def start(self) -> Agent:
        self.program_source = source_.GrpcProgramSource(self.source)
        self.core = CountingCore(self.node, EmulatedBackend(self.node), program_for=self.program_source,
                                 attach_timeout=15.0)
        self.core.start()
        self.server = server_.serve(self.core, self.listen, workers=8)
        return self

    def stop(self) -> None:
        self.server.stop(0.5).wait()
        self.program_source.close()
        self.core.stop()

    def restart(self) -> Agent:
        """A new agent process with nothing in it (emulated: no pinned state)."""
        self.stop()
        return self.start()

    def wire(self, namespace: str, name: str, uid: str, addresses: list[str]) -> None:
        """The CNI ADD: returns once the pod's program is attached."""
        container = f"{namespace}-{name}-{uid[:8]}"
        self.core.attach_pod({"namespace": namespace, "name": name, "uid": uid},
                             lab_emulated.endpoint(container, addresses))
        self.wired[f"{namespace}/{name}"] = (uid, tuple(addresses))

    def rewire(self) -> None:
        """Wire again every pod wired before (after restart())."""
        for key, (uid, addresses) in list(self.wired.items()):
            namespace, name = key.split("/")
            self.wire(namespace, name, uid, list(addresses))

    def stub(self) -> pb_grpc.AgentStub:
        return pb_grpc.AgentStub(grpc.insecure_channel(self.listen))

    def held(self) -> dict[str, tuple[str, str]]:
        """{"ns/name": (hash, state)} as List reports."""
        return {s.key: (s.hash, s.state.value) for s in self.core.list()}
