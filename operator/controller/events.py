"""Watch events -> changes of the operator's model, and the pods each change
affects. Pure: no kopf, no gRPC, no I/O.

Called by controller.engine, under its lock, for every event the kopf
handlers see (and for the bulk load from kopf's indexes at start), and for
the CNI hand-off (`wire`). The parsing is cluster's (pods, networkpolicy,
adminpolicy, selectors); this module adds what a live cluster has and a
manifest file has not:

  - pods join the model without addresses until the CNI (ProgramFor) or
    their status gives them some; tailor never invents an address here;
  - a pod's uid tells a re-created pod from its predecessor (its addresses
    are not carried over);
  - host-network pods are not tailor's (they share the node's address) and
    finished pods (Succeeded, Failed) have released theirs: both are absent;
  - the node agents' addresses: from the agent DaemonSet's pods (the labels
    of AGENT_SELECTOR, or `tailor operator --agent-selector`, which the
    chart renders from the very labels it gives the DaemonSet; container
    port named `grpc`) or the node annotation `tailor.dev/agent-address`,
    which wins;
  - an object the parsers refuse changes nothing: its previous version stays
    in force (fail closed, never fail open) and the outcome says why.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

from tailor.operator import affected, groups, selectors
from tailor.operator.cluster import adminpolicy, manifests, networkpolicy, pods, services
from tailor.operator.cluster.objects import Pod
from tailor.operator.cluster.state import ClusterState
from tailor.operator.errors import InvalidSpec

POD, NAMESPACE, NODE, SERVICE = "Pod", "Namespace", "Node", "Service"
ENDPOINT_SLICE = "EndpointSlice"
NETWORK_POLICY = "NetworkPolicy"
ANP, BANP, CNP = adminpolicy.ANP, adminpolicy.BANP, adminpolicy.CNP
KINDS = (NAMESPACE, NODE, POD, SERVICE, ENDPOINT_SLICE, NETWORK_POLICY, ANP, BANP, CNP)
# The cluster-wide policy kinds: optional CRDs, watched once they exist.
CLUSTER_POLICY_KINDS = adminpolicy.KINDS
# kind -> (group, version, plural): what is watched and listed.
RESOURCES = {
    NAMESPACE: ("", "v1", "namespaces"),
    NODE: ("", "v1", "nodes"),
    POD: ("", "v1", "pods"),
    SERVICE: ("", "v1", "services"),
    ENDPOINT_SLICE: ("discovery.k8s.io", "v1", "endpointslices"),
    NETWORK_POLICY: ("networking.k8s.io", "v1", "networkpolicies"),
    ANP: ("policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies"),
    BANP: ("policy.networking.k8s.io", "v1alpha1", "baselineadminnetworkpolicies"),
    CNP: ("policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies"),
}
DELETED = "DELETED"

# The chart's agent pods, as its default release labels them.
AGENT_SELECTOR = {"app.kubernetes.io/name": "tailor", "app.kubernetes.io/component": "agent"}
AGENT_PORT_NAME = "grpc"
AGENT_ANNOTATION = "tailor.dev/agent-address"
FINISHED_PHASES = ("Succeeded", "Failed")


@dataclasses.dataclass
class Outcome:
    """What one event did to the model."""
    affected: set[str] = dataclasses.field(default_factory=set)   # pod refs to plan again
    groups: set[str] = dataclasses.field(default_factory=set)     # groups whose members changed
    error: str | None = None             # the object was refused: why (nothing changed)
    agents: set[str] = dataclasses.field(default_factory=set)     # nodes whose agent address changed
    services: bool = False               # the Service table may have changed


@dataclasses.dataclass(frozen=True)
class PolicyVerdict:
    """Whether a cluster-wide policy object was taken in: `error` None and a
    `summary` of where it is in force, or the reason it was refused. What
    its status says (policystatus.py)."""
    kind: str
    name: str
    generation: int | None
    error: str | None = None
    summary: str = ""
    uid: str = ""                # a re-created object is another object
    partial: bool = False        # in force, but not all of it as written


def essence(kind: str, body: Mapping) -> dict:
    """The part of an API object the model reads, as plain data (what the
    kopf index keeps per object, and what `World.apply` is given)."""
    meta = body.get("metadata") or {}
    keep_meta = {k: _plain(meta[k]) for k in ("name", "namespace", "uid", "labels", "annotations",
                                              "deletionTimestamp", "generation") if meta.get(k) is not None}
    out = {"apiVersion": body.get("apiVersion"), "kind": kind, "metadata": keep_meta}
    if kind == POD:
        spec = body.get("spec") or {}
        out["spec"] = {k: _plain(spec[k]) for k in ("nodeName", "hostNetwork") if spec.get(k) is not None}
        # Of the containers, only their ports matter (named ports, agent discovery).
        out["spec"]["containers"] = [{"name": c.get("name"), "ports": _plain(c.get("ports") or [])}
                                     for c in spec.get("containers") or [] if isinstance(c, Mapping)]
        status = body.get("status") or {}
        out["status"] = {k: _plain(status[k]) for k in ("phase", "podIP", "podIPs") if status.get(k)}
        # Readiness decides whether Services send to it.
        ready = [c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == "Ready"]
        if ready:
            out["status"]["conditions"] = [{"type": "Ready", "status": ready[-1].get("status")}]
    elif kind == NODE:
        out["status"] = {"addresses": _plain((body.get("status") or {}).get("addresses") or [])}
        spec = body.get("spec") or {}
        out["spec"] = {k: _plain(spec[k]) for k in ("podCIDRs", "podCIDR") if spec.get(k)}
    elif kind == ENDPOINT_SLICE:
        out.update({k: _plain(body[k]) for k in ("addressType", "endpoints", "ports") if body.get(k) is not None})
    elif kind != NAMESPACE:
        out["spec"] = _plain(body.get("spec") or {})
    return out


def _plain(value):
    """A deep copy made of dicts, lists and scalars (kopf hands out views)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def object_key(kind: str, body: Mapping) -> tuple[str, str | None, str]:
    meta = body.get("metadata") or {}
    namespace = None if kind in manifests.CLUSTER_SCOPED else meta.get("namespace") or "default"
    return kind, namespace, meta.get("name") or ""


class World:
    """The cluster as the operator knows it: the ClusterState the compiler
    reads, plus pod uids and the agents' addresses."""

    def __init__(self, agent_selector: Mapping[str, str] | None = None) -> None:
        self.state = ClusterState()
        self.agent_selector = dict(AGENT_SELECTOR if agent_selector is None else agent_selector)
        # Members of the peer groups programs test, kept as the state changes.
        self.memberships = groups.Memberships(self.state)
        self.uids: dict[str, str] = {}                           # pod ref -> uid
        self._agent_pods: dict[tuple[str, str], tuple[str, str]] = {}   # (ns, name) -> (node, address)
        self._annotated: dict[str, str] = {}                      # node -> address (annotation)
        self._namespaces: set[str] = set()                        # declared by a Namespace object
        # Cluster-wide policies: the verdict on each, and those changed since taken.
        self.verdicts: dict[tuple[str, str], PolicyVerdict] = {}
        self.changed_verdicts: dict[tuple[str, str], PolicyVerdict] = {}

    # -- events ----------------------------------------------------------------------

    def apply(self, kind: str, event_type: str | None, body: Mapping) -> Outcome:
        """One watch event (type None: a listing) of an object of `kind`."""
        kind_, namespace, name = object_key(kind, body)
        gone = event_type == DELETED
        try:
            if kind == POD:
                return self._pod(namespace, name, body, gone)
            if kind == NAMESPACE:
                return self._namespace(name, body, gone)
            if kind == NODE:
                return self._node(name, body, gone)
            if kind == SERVICE:
                return self._service(namespace, name, body, gone)
            if kind == ENDPOINT_SLICE:
                if gone:
                    return Outcome(services=self.state.delete(ENDPOINT_SLICE, namespace, name))
                new = services.parse_slice(body, namespace, name)
                changed = self.state.endpoint_slices.get((namespace, name)) != new
                self.state.add_endpoint_slice(new)
                return Outcome(services=changed)
            if kind == NETWORK_POLICY:
                return self._network_policy(namespace, name, body, gone)
            if kind in CLUSTER_POLICY_KINDS:
                return self._admin_policy(kind, name, body, gone)
        except InvalidSpec as e:
            what = manifests.describe(kind, namespace, name)
            if kind in CLUSTER_POLICY_KINDS:
                self._judged(kind, name, body, error=f"{e.path}: {e.message}" if e.path else e.message)
            return Outcome(error=f"{what}: {e.path}: {e.message}" if e.path else f"{what}: {e.message}")
        raise ValueError(f"kind {kind_!r} is not one the operator watches")

    def load(self, objects: Iterable[tuple[str, Mapping]]) -> tuple[set[str], list[str]]:
        """Many objects at once (the bulk load from the indexes at start):
        namespaces and nodes first, then pods, then policies. Returns (every
        pod ref, errors)."""
        order = {k: i for i, k in enumerate(KINDS)}
        errors = []
        for kind, body in sorted(objects, key=lambda kb: order[kb[0]]):
            outcome = self.apply(kind, None, body)
            if outcome.error:
                errors.append(outcome.error)
        return {p.ref for p in self.state.pods.values()}, errors

    def _pod(self, namespace: str, name: str, body: Mapping, gone: bool) -> Outcome:
        out = Outcome()
        out.agents = self._agent_pod(namespace, name, body, gone)
        key = (namespace, name, POD)
        old = self.state.pods.get(key)
        spec = body.get("spec") or {}
        phase = (body.get("status") or {}).get("phase")
        if gone or spec.get("hostNetwork") or phase in FINISHED_PHASES:
            if old is None:
                return out
            self.state.delete(POD, namespace, name)
            self.uids.pop(old.ref, None)
            out.affected = affected.by_pod(self.state, old, None)
            out.groups = self.memberships.pod_changed(old, None)
            return out
        pod, _families = pods.from_manifest(body, namespace, name)
        uid = (body.get("metadata") or {}).get("uid") or ""
        if old is not None and uid and self.uids.get(old.ref) not in (None, "", uid):
            # A new pod of the same name: nothing of the old one carries over.
            self.state.delete(POD, namespace, name)
            self.uids.pop(old.ref, None)
            out.affected |= affected.by_pod(self.state, old, None)
            out.groups |= self.memberships.pod_changed(old, None)
            old = None
        new = self.state.add_pod(pod, allocate=False)
        self.uids[new.ref] = uid
        if new != old:
            out.affected |= affected.by_pod(self.state, old, new)
            out.groups |= self.memberships.pod_changed(old, new)
        return out

    def _agent_pod(self, namespace: str, name: str, body: Mapping, gone: bool) -> set[str]:
        """Keep the agent DaemonSet's pods: node -> address."""
        labels = (body.get("metadata") or {}).get("labels") or {}
        before = self._agent_pods.get((namespace, name))
        after = None
        if not gone and self.agent_selector and all(labels.get(k) == v for k, v in self.agent_selector.items()):
            after = _agent_pod_address(body)
        if after is None:
            self._agent_pods.pop((namespace, name), None)
        else:
            self._agent_pods[(namespace, name)] = after
        return {entry[0] for entry in (before, after) if entry} if before != after else set()

    def _namespace(self, name: str, body: Mapping, gone: bool) -> Outcome:
        if gone:
            self._namespaces.discard(name)
            members = list(self.state.pods_in(name))
            if not self.state.delete(NAMESPACE, None, name):
                return Outcome()
            for pod in members:
                self.uids.pop(pod.ref, None)
            return Outcome(affected.union(*(affected.by_pod(self.state, p, None) for p in members)),
                           groups=set().union(*(self.memberships.pod_changed(p, None) for p in members)))
        labels = selectors.parse_labels((body.get("metadata") or {}).get("labels"), "metadata.labels")
        self._namespaces.add(name)
        old = self.state.namespace_labels(name)
        self.state.add_namespace(name, labels)
        new = self.state.namespace_labels(name)
        if new == old:
            return Outcome()
        return Outcome(affected.by_namespace(self.state, name, old, new),
                       groups=self.memberships.namespace_changed(name))

    def _node(self, name: str, body: Mapping, gone: bool) -> Outcome:
        out = Outcome()
        annotation = ((body.get("metadata") or {}).get("annotations") or {}).get(AGENT_ANNOTATION)
        if gone or not annotation:
            if self._annotated.pop(name, None) is not None:
                out.agents.add(name)
        elif self._annotated.get(name) != annotation:
            self._annotated[name] = annotation
            out.agents.add(name)
        old = self.state.nodes.get(name)
        if gone:
            if old is not None:
                self.state.delete(NODE, None, name)
                out.affected = affected.by_node(self.state, old, None)
                out.groups = self.memberships.nodes_changed(old, None)
            return out
        new = manifests.node_from(body, name)
        if new != old:
            self.state.add_node(new)
            out.affected = affected.by_node(self.state, old, new)
            out.groups = self.memberships.nodes_changed(old, new)
        return out

    def _service(self, namespace: str, name: str, body: Mapping, gone: bool) -> Outcome:
        """A Service: the node's Service table follows; programs change only
        when what Services need of them does (a new family, protocol or
        affinity: every pod's shape)."""
        before = self.state.service_use()
        if gone or services.untranslated(body) is not None:
            changed = self.state.delete(SERVICE, namespace, name)
        else:
            new = services.parse(body, namespace, name)
            changed = self.state.services.get((namespace, name)) != new
            if changed:
                self.state.add_service(new)
        out = Outcome(services=changed)
        if changed and self.state.service_use() != before:
            out.affected = {p.ref for p in self.state.pods.values()}
        return out

    def _network_policy(self, namespace: str, name: str, body: Mapping, gone: bool) -> Outcome:
        old = self.state.network_policies.get((namespace, name))
        if gone:
            if old is None:
                return Outcome()
            self.state.delete(NETWORK_POLICY, namespace, name)
            return Outcome(affected.by_network_policy(self.state, old, None))
        _check_api_version(NETWORK_POLICY, body)
        new = networkpolicy.parse(body, namespace, name)
        if new == old:
            return Outcome()
        self.state.add_network_policy(new)
        return Outcome(affected.by_network_policy(self.state, old, new))

    def _admin_policy(self, kind: str, name: str, body: Mapping, gone: bool) -> Outcome:
        old = self._cluster_policy(kind, name)
        if gone:
            self.verdicts.pop((kind, name), None)
            self.changed_verdicts.pop((kind, name), None)
            if old is None:
                return Outcome()
            self.state.delete(kind, None, name)
            return Outcome(affected.by_admin_policy(self.state, old, None))
        _check_api_version(kind, body)
        new = adminpolicy.PARSERS[kind](body, name)
        where = f"in force in the {new.tier} tier" + (f" at priority {new.priority}"
                                                      if new.priority is not None else "")
        self._judged(kind, name, body, summary="; ".join([f"tailor: {where}", *new.notes]),
                     partial=bool(new.notes))
        if new == old:
            return Outcome()
        self.state.add_admin_policy(new)
        return Outcome(affected.by_admin_policy(self.state, old, new))

    def _judged(self, kind: str, name: str, body: Mapping, *, error: str | None = None,
                summary: str = "", partial: bool = False) -> None:
        meta = body.get("metadata") or {}
        generation = meta.get("generation")
        verdict = PolicyVerdict(kind, name, generation if isinstance(generation, int) else None,
                                error, summary, str(meta.get("uid") or ""), partial)
        if self.verdicts.get((kind, name)) != verdict:
            self.verdicts[(kind, name)] = verdict
            self.changed_verdicts[(kind, name)] = verdict

    def _cluster_policy(self, kind: str, name: str):
        if kind == ANP:
            return self.state.admin_policies.get(name)
        if kind == CNP:
            return self.state.cluster_policies.get(name)
        baseline = self.state.baseline
        return baseline if baseline is not None and baseline.name == name else None

    # -- the CNI hand-off --------------------------------------------------------------

    def wire(self, namespace: str, name: str, uid: str, node: str,
             addresses: Iterable[str]) -> tuple[Pod, set[str], set[str]]:
        """A pod's CNI ADD on `node` gave it `addresses`: record them. Returns
        the pod, the other pods the new addresses affect and the groups
        whose members they changed. Raises
        LookupError when the pod (of that uid) is not known yet, ValueError
        when it runs elsewhere or an address is malformed."""
        old = self.state.pods.get((namespace, name, POD))
        if old is None:
            raise LookupError(f"pod {namespace}/{name} is not known to the operator (yet)")
        known_uid = self.uids.get(old.ref)
        if uid and known_uid and uid != known_uid:
            raise LookupError(f"pod {namespace}/{name} uid {uid} is not known to the operator "
                              f"(yet); it knows uid {known_uid}")
        if old.node and old.node != node:
            raise ValueError(f"pod {namespace}/{name} is scheduled on node {old.node}, not {node}")
        ips = tuple(str(ipaddress.ip_interface(a).ip) for a in addresses)
        if not ips:
            raise ValueError(f"pod {namespace}/{name}: the CNI gave no address")
        new = self.state.add_pod(dataclasses.replace(old, node=node, ips=ips), allocate=False)
        if new == old:
            return new, set(), set()
        return (new, affected.by_pod(self.state, old, new) - {new.ref},
                self.memberships.pod_changed(old, new))

    # -- lookups -----------------------------------------------------------------------

    def known(self, kind: str) -> set[tuple[str | None, str]]:
        """(namespace, name) of every object of `kind` the model holds from an
        event (not the namespaces pods merely name; agent pods included)."""
        state = self.state
        if kind == POD:
            return {(p.namespace, p.name) for p in state.pods.values() if p.kind == POD} | set(self._agent_pods)
        if kind == NAMESPACE:
            return {(None, n) for n in self._namespaces}
        if kind == NODE:
            return {(None, n) for n in state.nodes} | {(None, n) for n in self._annotated}
        if kind == SERVICE:
            return set(state.services)
        if kind == ENDPOINT_SLICE:
            return set(state.endpoint_slices)
        if kind == NETWORK_POLICY:
            return set(state.network_policies)
        if kind == ANP:
            return {(None, n) for n in state.admin_policies}
        if kind == CNP:
            return {(None, n) for n in state.cluster_policies}
        return {(None, state.baseline.name)} if state.baseline else set()

    def agent_address(self, node: str) -> str | None:
        """Where the agent of `node` listens: the node's annotation, else the
        agent DaemonSet's pod on that node."""
        if node in self._annotated:
            return self._annotated[node]
        found = sorted(address for n, address in self._agent_pods.values() if n == node)
        return found[0] if found else None

    def agent_nodes(self) -> set[str]:
        return set(self._annotated) | {n for n, _ in self._agent_pods.values()}

    def pods_on(self, node: str) -> set[str]:
        return {p.ref for p in self.state.pods.values() if p.node == node}


def _check_api_version(kind: str, body: Mapping) -> None:
    want = {NETWORK_POLICY: networkpolicy.API_VERSION, **adminpolicy.API_VERSIONS}[kind]
    if body.get("apiVersion") not in (None, want):
        raise InvalidSpec("apiVersion", f"{body.get('apiVersion')!r} is not supported for {kind}; use {want}")


def _agent_pod_address(body: Mapping) -> tuple[str, str] | None:
    """(node, host:port) of a running agent pod, or None."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    node, ip = spec.get("nodeName"), status.get("podIP")
    if not node or not ip or status.get("phase") in FINISHED_PHASES:
        return None
    for container in spec.get("containers") or []:
        for port in (container or {}).get("ports") or []:
            if isinstance(port, Mapping) and port.get("name") == AGENT_PORT_NAME and port.get("containerPort"):
                host = f"[{ip}]" if ":" in ip else ip
                return node, f"{host}:{port['containerPort']}"
    return None


def parse_selector(text: str) -> dict[str, str]:
    """`k=v,k=v` (as --agent-selector takes it) -> {k: v}; ValueError naming the bad part."""
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{part!r} is not key=value")
        out[key.strip()] = value.strip()
    if not out:
        raise ValueError("an empty selector would take every pod for an agent")
    return out
