"""The Service table: every agent holds the cluster's Services (each
ClusterIP, port and protocol with its ready backends), which its pods'
programs translate (datapath/services.py, compiler/services.py).

Started by app.Controller and the lab's controller, beside the node table
and in the same way (nodetable.NodeTable): the whole table, SetServices, to
each agent whose last answer named another one — when a Service or a pod
changes (engine.on_services), when an agent appears, and when the
reconcile loop's List shows another digest. The table is computed in this
thread, coalescing a burst of changes into one round.
"""
from __future__ import annotations

import logging

from tailor.datapath.agent import wire
from tailor.datapath.agent.api import agent_pb2 as pb
from tailor.datapath import services as node_services
from tailor.operator.controller.nodetable import NodeTable

log = logging.getLogger("tailor.operator.services")


class ServiceTable(NodeTable):
    what = "Service table"

    def __init__(self, engine, agents, **kwargs) -> None:
        super().__init__(engine, agents, **kwargs)
        self._warned: set[str] = set()

    def table(self) -> list[node_services.ServiceEntry]:
        entries, warnings = self.engine.cluster_services()
        for w in warnings:
            if w not in self._warned:
                self._warned.add(w)
                log.warning("%s", w)
        return entries

    def digest(self) -> str:
        return node_services.digest(self.table())

    def _request(self):
        table = self.table()
        return (pb.SetServicesRequest(services=wire.services_to_proto(table)), node_services.digest(table),
                f"{len(table)} Service ports")

    def _call(self, stub, request):
        return stub.SetServices.future(request, timeout=self.timeout)

    def _describe(self, answer) -> str:
        return f"{answer.services} in force"
