"""The operator's Prometheus metrics (`--metrics-port`), read at scrape time
from the engine's counters and state: pods known, pending and retrying
pushes, Apply / UpdateMaps / UpdateGroups / Remove sent, hand-offs at CNI ADD, programs
compiled, adopted after a restart, drift repaired, push failures, missed
deletions, and PodPrograms by state.

Started by app.Controller; its own registry, so tests can run several
operators in one process.
"""
from __future__ import annotations

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

COUNTERS = {
    "applies": "Apply RPCs that reached an agent",
    "map updates": "UpdateMaps RPCs that reached an agent",
    "removes": "Remove RPCs that reached an agent",
    "group updates": "UpdateGroups RPCs that reached an agent (peer churn)",
    "group repairs": "nodes sent all their groups again (their members differed)",
    "handed": "programs handed out at CNI ADD (ProgramFor)",
    "compiled": "programs compiled by the pusher",
    "adopted": "programs an agent already held (no reload)",
    "repairs": "pods sent again because an agent lacked them or held another hash",
    "push failures": "failed pushes (retried with backoff)",
    "missed deletions": "deletions found by the resync that no watch event reported",
    "events": "watch events handled",
}


class _Collector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        summary = self.engine.summary()
        for key, help_ in COUNTERS.items():
            family = CounterMetricFamily(f"tailor_operator_{key.replace(' ', '_')}", help_)
            family.add_metric([], summary.get(key, 0))
            yield family
        for key, help_ in (("pods", "pods in the model"), ("pending", "pods waiting for a push"),
                           ("retrying", "pods waiting for a push retry"),
                           ("idle", "1 when nothing is pending, retrying or being pushed")):
            family = GaugeMetricFamily(f"tailor_operator_{key}", help_)
            family.add_metric([], summary.get(key, 0))
            yield family
        states = GaugeMetricFamily("tailor_operator_podprograms", "PodPrograms by state", labels=["state"])
        for state, count in sorted(self.engine.states().items()):
            states.add_metric([state], count)
        yield states


def serve(engine, port: int, address: str = "0.0.0.0"):
    """Start /metrics on a daemon thread; returns the HTTP server."""
    registry = prom.CollectorRegistry()
    registry.register(_Collector(engine))
    server, _thread = prom.start_http_server(port, addr=address, registry=registry)
    return server
