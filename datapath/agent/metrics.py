"""The agent's Prometheus metrics, served over HTTP (`--metrics-port`).

Called by core.Core through its metrics hooks (applied, maps_updated,
cni_attach) and by cli/agent.py, which starts the HTTP server. Each Metrics
has its own registry, so several agents (the lab, tests) can live in one
process.
"""
from __future__ import annotations

import prometheus_client as prom
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, node: str, registry: prom.CollectorRegistry | None = None):
        self.registry = registry or prom.CollectorRegistry()
        labels = {"node": node}
        self.applies = prom.Counter(
            "tailor_agent_applies", "Apply requests by outcome (changed, unchanged, pending, failed)",
            ["outcome"], registry=self.registry).labels
        self.apply_latency = prom.Histogram(
            "tailor_agent_apply_seconds", "Time to put an applied program in force",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.map_updates = prom.Counter(
            "tailor_agent_map_entries_updated", "Map entries changed by UpdateMaps",
            registry=self.registry)
        self.cni_latency = prom.Histogram(
            "tailor_agent_cni_attach_seconds",
            "CNI ADD hand-off: from the attach request to the program in force",
            ["outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        prom.Info("tailor_agent", "The agent", registry=self.registry).info(labels)

    # -- core hooks -------------------------------------------------------------------

    def applied(self, outcome: str, seconds: float) -> None:
        self.applies(outcome).inc()
        self.apply_latency.observe(seconds)

    def maps_updated(self, entries: int) -> None:
        self.map_updates.inc(entries)

    def cni_attach(self, outcome: str, seconds: float) -> None:
        self.cni_latency.labels(outcome).observe(seconds)

    def watch_pods(self, states) -> None:
        """Pods-by-state read at scrape time: `states()` -> iterable of state names."""

        class _Collector:
            def collect(self):
                counts: dict[str, int] = {}
                for s in states():
                    counts[s] = counts.get(s, 0) + 1
                family = GaugeMetricFamily("tailor_agent_pods_by_state", "Pods by state",
                                                     labels=["state"])
                for s in ("Pending", "Loaded", "Failed"):
                    family.add_metric([s], counts.get(s, 0))
                yield family

        self.registry.register(_Collector())

    def serve(self, port: int, address: str = "0.0.0.0"):
        """Start the HTTP endpoint (/metrics) on a daemon thread; returns the server."""
        server, _thread = prom.start_http_server(port, addr=address, registry=self.registry)
        return server
