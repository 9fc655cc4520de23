"""The operator's settings, as `tailor operator` takes them.

Built by cli/operator.py from its flags, and by tests directly. Plain data.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    # What kopf watches: every namespace, or these. Peers outside the watched
    # namespaces are unknown to the model (fail closed: nobody allows them).
    namespaces: tuple[str, ...] = ()
    # The API server: this kubeconfig only (None: the service account, else $KUBECONFIG).
    kubeconfig: str | None = None
    # The ProgramSource the agents ask at CNI ADD (the zero-window hand-off).
    source_listen: str = "0.0.0.0:9502"
    # This replica's address as the agents reach it (an IP: the port is
    # source_listen's): told to every agent with the node table, so they
    # need no cluster DNS or Service. None: tell them nothing (their own
    # --program-source stands).
    source_advertise: str | None = None
    # One active operator: a coordination.k8s.io Lease (None: no election).
    lease_name: str | None = "tailor-operator"
    lease_namespace: str = "kube-system"
    lease_seconds: float = 15.0          # a holder that stopped renewing loses it after this
    lease_renew_seconds: float = 5.0
    identity: str | None = None          # default: hostname + pid
    # kopf peering (optional; the Lease is what keeps replicas apart).
    peering: str | None = None
    liveness: str | None = None          # e.g. http://0.0.0.0:8080/healthz
    metrics_port: int | None = None      # Prometheus /metrics (None: not served)
    agent_selector: dict | None = None   # the agent pods' labels (None: events.AGENT_SELECTOR)
    # Watch-stream settings (kopf): server-side timeout, client-side timeout,
    # the pause before reconnecting, and how long an idle stream may stay silent.
    watch_server_timeout: int = 300
    watch_client_timeout: float = 330.0
    watch_connect_timeout: float = 10.0
    watch_reconnect_backoff: float = 1.0
    watch_inactivity_timeout: float = 600.0
    request_timeout: float = 30.0
    # Pushing and repairing.
    push_timeout: float = 10.0           # one Apply/UpdateMaps/UpdateGroups/Remove RPC
    push_chunk: int = 128                # pods planned (compiled) per lock hold: one round of RPCs
    push_coalesce: float = 0.0           # wait after work appears, to plan a burst at once
    retry_first: float = 0.2             # backoff after a failed push, doubling...
    retry_max: float = 10.0              # ...up to this
    reconcile_seconds: float = 30.0      # List every agent and repair drift this often
    resync_seconds: float = 300.0        # list the API and drop deletions a watch missed
    # Events on pods for Failed programs, and kopf's own posting level.
    post_events: bool = True

    @property
    def advertised_source(self) -> str:
        """host:port the agents are told ("" for none); IPv6 in brackets."""
        host = self.source_advertise
        if not host:
            return ""
        port = self.source_listen.rsplit(":", 1)[-1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
