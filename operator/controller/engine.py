"""The operator's shared state behind one lock: the model (events.World),
what each agent should hold (desired.Desired), which pods wait for a push
and which for a retry, what the agents last reported, and the pods handed
out at CNI ADD that their agent has not confirmed yet. What each PodProgram
should say is views.Views, which the engine holds and keeps up to date
under the same lock.

Called from several sides at once, and free of kopf, gRPC and the API:
  - the kopf handlers (asyncio loop): `event()`, `load()`. They translate
    and mark the affected pods pending; they never compile, never wait on I/O;
  - source.ProgramSource (gRPC threads): `program_for()`, the CNI hand-off,
    compiles the one pod that asks;
  - the pusher thread: `take()` plans (compiles) a chunk of pending pods,
    `done()`/`failed()` record the outcome; the reconcile thread:
    `reported()` compares an agent's List with what it should hold;
  - the PodProgram writer (asyncio): `take_views()`, `redo_view()`; the
    metrics: `summary()`, `states()`.

The lock is held for short steps only: one event, one pod's hand-off, one
chunk of planning. Sending happens outside it.
"""
from __future__ import annotations

import collections
import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from tailor.operator import desired
from tailor.operator.compiler import program, resolve
from tailor.operator.controller import events, views

# An agent's report speaks a PodProgram's states (agents.py maps them).
PENDING, LOADED, FAILED = views.PENDING, views.LOADED, views.FAILED
APPLY, UPDATE_MAPS, REMOVE, UPDATE_GROUPS = "Apply", "UpdateMaps", "Remove", "UpdateGroups"
REMOVE_ATTEMPTS = 10     # a Remove for an agent that never answers is dropped after this
# A pod handed out at CNI ADD that its agent does not list yet is still being
# attached (the ADD fails on its own if not, and the runtime retries it):
# it is repaired only if still missing after this long.
HANDOFF_GRACE = 30.0


class NotReady(Exception):
    """The initial listing is not complete: a program compiled now could miss
    a policy and allow too much. The agent asks again."""


@dataclasses.dataclass(frozen=True)
class Report:
    """One pod as an agent's List reported it."""
    uid: str
    hash: str
    state: str                            # Pending / Loaded / Failed
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Work:
    """One RPC for the pusher to send: `rpc` to the agent of `node`."""
    rpc: str                              # Apply, UpdateMaps, Remove, UpdateGroups
    push: desired.Push
    namespace: str
    name: str
    uid: str
    addresses: tuple[str, ...] = ()
    maps: dict | None = None              # UpdateMaps: {direction: {map: entries}}
    planned_at: float = 0.0               # engine clock when planned

    @property
    def node(self) -> str | None:
        return self.push.node

    @property
    def pod(self) -> str:
        return self.push.pod


# A pending entry that plans a node's groups, not a pod.
_GROUPS_OF = "groups-of:"


def _key(ref: str) -> str:
    """ns/name[Kind] -> ns/name (the agent's key)."""
    return ref.split("[", 1)[0]


class Engine:
    def __init__(self, *, retry_first: float = 0.2, retry_max: float = 10.0, coalesce: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, agent_selector=None):
        # Once work appears, wait this long before planning it, so a burst of
        # changes (pods starting together) becomes one push per affected pod.
        self.coalesce = coalesce
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self.world = events.World(agent_selector)
        self.desired = desired.Desired(self.world.memberships)
        self._groups: set[str] = set()                       # groups whose members changed
        self._groups_planned_at: dict[str, float] = {}       # node -> when its groups last changed
        # Group changes sent to a node and not answered yet: its List may miss them.
        self._groups_in_flight: collections.Counter = collections.Counter()
        self.synced = False
        self.stopped = False
        self._freeze_after_sync = False
        self.retry_first, self.retry_max, self.clock = retry_first, retry_max, clock
        self._pending: set[str] = set()
        self._retry: dict[str, tuple[int, float]] = {}      # ref -> (failures, not before)
        self._reports: dict[str, dict[str, Report]] = {}    # node -> agent key -> report
        self._reports_wanted = False                         # List every agent before planning
        self._busy = False                                   # the pusher is sending a chunk
        self._sent_at: dict[str, float] = {}                 # ref -> when sent or handed
        self._uids: dict[str, str] = {}                      # ref -> uid last sent (for Remove)
        # Handed out at CNI ADD, not yet reported Loaded: the agent may not
        # hold it yet, so a change is sent whole (Apply), never as UpdateMaps.
        self._handed: set[str] = set()
        self._handed_at: dict[str, float] = {}               # ref -> when last handed out
        self.counters: collections.Counter = collections.Counter()
        self.errors: collections.deque = collections.deque(maxlen=50)
        self.on_views: Callable[[], None] = lambda: None    # the writer's wake-up
        self.on_nodes: Callable[[], None] = lambda: None    # a Node changed (nodetable.py)
        self.on_services: Callable[[], None] = lambda: None  # Services or pods changed (servicetable.py)
        # Through a lambda, not on_views itself: app replaces on_views after this.
        self.views = views.Views(self.world, on_change=lambda: self.on_views())
        self.on_agents: Callable[[set[str]], None] = lambda nodes: None   # agents moved
        # The policy status writer's wake-up: a cluster-wide policy's verdict changed.
        self.on_policy_verdicts: Callable[[], None] = lambda: None

    # -- kopf side ---------------------------------------------------------------------

    def load(self, objects: Iterable[tuple[str, Mapping]]) -> list[str]:
        """The initial listing, complete (kopf's indexes): the model from
        scratch, every pod pending. Until now nothing is pushed or handed out."""
        with self._lock:
            refs, errors = self.world.load(objects)
            self.errors.extend(errors)
            self.synced = True
            self._reports_wanted = True
            self._freeze_after_sync = True
            self._pending |= refs
            self.counters["initial listings"] += 1
            self._wake.notify_all()
            nodes = self.world.agent_nodes()
            judged = bool(self.world.changed_verdicts)
        self.on_agents(nodes)
        self.on_nodes()
        self.on_services()
        if judged:
            self.on_policy_verdicts()
        return errors

    def event(self, kind: str, event_type: str | None, body: Mapping) -> events.Outcome:
        """One watch event: the model changes, the affected pods wait for a push."""
        with self._lock:
            outcome = self.world.apply(kind, event_type, body)
            self.counters["events"] += 1
            if outcome.error:
                self.errors.append(outcome.error)
            if self.synced and outcome.affected:
                self._pending |= outcome.affected
                self._drop_views(outcome.affected)
                self._wake.notify_all()
            if outcome.groups:
                self._groups |= outcome.groups
                self._wake.notify_all()
            for node in outcome.agents:
                # A new agent address: retry its pods now, and check what it holds.
                waiting = self.world.pods_on(node) & set(self._retry)
                for ref in waiting:
                    self._retry.pop(ref)
                self._pending |= waiting
                self._wake.notify_all()
            judged = bool(self.world.changed_verdicts)
        if outcome.agents:
            self.on_agents(outcome.agents)
        if kind == events.NODE:
            self.on_nodes()
        if outcome.services or kind == events.POD and self.world.state.services:
            self.on_services()
        if judged:
            self.on_policy_verdicts()
        return outcome

    def known(self, kind: str) -> set[tuple[str | None, str]]:
        with self._lock:
            return self.world.known(kind)

    def vanished(self, kind: str, keys: Iterable[tuple[str | None, str]]) -> int:
        """Objects a fresh listing no longer has (their deletion was missed,
        e.g. while a watch was down): deleted from the model like a DELETED event."""
        count = 0
        for namespace, name in keys:
            meta = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
            self.event(kind, events.DELETED, {"kind": kind, "metadata": meta})
            count += 1
        with self._lock:
            self.counters["missed deletions"] += count
        return count

    # -- the CNI hand-off --------------------------------------------------------------

    def program_for(self, namespace: str, name: str, uid: str, node: str, addresses):
        """A pod's agent asks during CNI ADD: record the addresses, compile,
        remember the program as given. Returns (pod, uid, programs, entries,
        the members of the groups it tests, to send along).
        Raises NotReady, LookupError (pod unknown yet), ValueError (wrong
        node, bad address) or program.CompileError."""
        with self._lock:
            if not self.synced:
                raise NotReady("the operator has not finished its initial listing")
            pod, touched, moved = self.world.wire(namespace, name, uid, node, addresses)
            uid = self.world.uids.get(pod.ref) or uid
            spec = resolve.resolve(self.world.state, pod)
            try:
                programs = self.desired.templates.compile(spec)
            except program.CompileError as e:
                self.views.set(pod, uid, state=FAILED, message=f"cannot compile: {e}")
                raise
            entries: dict = {}
            groups = self.desired.given(pod.ref, node, programs, entries, spec, self.world.memberships)
            self._groups |= moved
            self._groups_planned_at[node] = self.clock()
            self._pending.discard(pod.ref)
            self._retry.pop(pod.ref, None)
            self._sent_at[pod.ref] = self.clock()
            self._uids[pod.ref] = uid
            self._pending |= touched
            self.counters["handed"] += 1
            self._handed.add(pod.ref)
            self._handed_at[pod.ref] = self.clock()
            self.views.set(pod, uid, programs=programs, state=PENDING,
                           message=f"handed to the agent on node {node} at CNI ADD")
            self._wake.notify_all()
            return pod, uid, programs, entries, groups

    # -- the pusher --------------------------------------------------------------------

    def take(self, limit: int, timeout: float | None = None) -> list[Work] | None:
        """Wait for work; plan up to `limit` pending pods. Returns the RPCs
        to send ([] on timeout or stop), or None when every agent should be
        asked what it holds first (after the initial listing)."""
        with self._lock:
            self._busy = False
            deadline = None if timeout is None else self.clock() + timeout
            while True:
                if self.stopped:
                    return []
                if self.synced and self._reports_wanted:
                    return None
                now = self.clock()
                due = [r for r, (_, at) in self._retry.items() if at <= now]
                if self.synced and (self._pending or due or self._groups):
                    break
                if deadline is not None and now >= deadline:
                    return []
                waits = [at - now for _, at in self._retry.values()] if self.synced else []
                if deadline is not None:
                    waits.append(deadline - now)
                self._wake.wait(max(0.0, min(waits)) if waits else None)
            until = self.clock() + self.coalesce
            while self.coalesce and not self.stopped and self.clock() < until:
                self._wake.wait(until - self.clock())
            for ref in due:
                self._retry.pop(ref, None)
            self._pending |= set(due)
            refs = sorted(self._pending)[:limit]
            self._pending -= set(refs)
            self._busy = True
            works = self._plan(refs)
            if self._freeze_after_sync and not self._pending:
                # What the initial sync built (the model, the programs) lives as
                # long as the operator: out of the collector's sight, a full
                # collection no longer rescans it (~200 ms at 10,000 pods, paid
                # by whichever change was being planned).
                gc.freeze()
                self._freeze_after_sync = False
            return works

    def reports_taken(self) -> None:
        """The pusher asked every agent (reported() was called for each)."""
        with self._lock:
            self._reports_wanted = False
            self._wake.notify_all()

    def _plan(self, refs: list[str]) -> list[Work]:
        state = self.world.state
        works = []
        now = self.clock()
        changed, self._groups = self._groups, set()
        for push in self.desired.plan(state, [r for r in refs if not r.startswith(_GROUPS_OF)], changed):
            self.counters["planned"] += 1
            if push.action == desired.GROUPS:
                self._groups_planned_at[push.node] = now
                self._groups_in_flight[push.node] += 1
                works.append(Work(UPDATE_GROUPS, push, "", "", "", planned_at=now))
                continue
            if push.groups:
                self._groups_planned_at[push.node] = now
                self._groups_in_flight[push.node] += 1
            if push.action == desired.REMOVE:
                namespace, name = _key(push.pod).split("/", 1)
                works.append(Work(REMOVE, push, namespace, name, self._uids.get(push.pod, ""), planned_at=now))
                continue
            pod = state.find_pod(push.pod)
            uid = self.world.uids.get(pod.ref, "")
            if push.error is not None:
                self.views.set(pod, uid, state=FAILED, message=f"cannot compile: {push.error}")
                self.counters["compile errors"] += 1
                continue
            self.counters["compiled"] += 1
            self.views.set(pod, uid, programs=push.programs)
            if pod.node is None:
                continue                           # not scheduled: nobody to send to
            self._uids[pod.ref] = uid
            if push.action == desired.MAPS and pod.ref not in self._handed:
                maps = desired.changed_maps(self.desired.last_entries(pod.ref), push.entries)
                works.append(Work(UPDATE_MAPS, push, pod.namespace, pod.name, uid, pod.ips, maps,
                                  planned_at=now))
                continue
            report = self._reports.get(pod.node, {}).get(_key(pod.ref))
            if report is not None and report.hash == push.programs.hash and report.uid in ("", uid) \
                    and report.state != FAILED:
                # The agent holds this very program already (an operator restart,
                # a lost answer): no reload; only make sure its maps are current,
                # and that the node has the members the Apply would have carried.
                self.counters["adopted"] += 1
                works.append(Work(UPDATE_MAPS, dataclasses.replace(push, groups=()), pod.namespace,
                                  pod.name, uid, pod.ips, desired.changed_maps({}, push.entries),
                                  planned_at=now))
                if push.groups:
                    works.append(Work(UPDATE_GROUPS, desired.Push(desired.GROUPS, "", pod.node,
                                                                  groups=push.groups),
                                      "", "", "", planned_at=now))
                continue
            works.append(Work(APPLY, push, pod.namespace, pod.name, uid, pod.ips, planned_at=now))
        return works

    def done(self, work: Work, status: Report | None = None) -> None:
        """The agent has `work` (status: what Apply answered)."""
        with self._lock:
            if work.rpc == UPDATE_GROUPS or work.push.groups:
                # Until now a List could miss these members: compare only Lists asked later.
                self._groups_planned_at[work.node] = self.clock()
                self._groups_in_flight[work.node] -= 1
            if work.rpc == UPDATE_GROUPS:
                self.counters["group updates"] += 1
                self._retry.pop(_GROUPS_OF + str(work.node), None)
                return
            if work.rpc != REMOVE and self._handed_at.get(work.pod, -1.0) > work.planned_at:
                # Handed out at a CNI ADD after this was planned: the agent
                # holds one of the two, not surely the newer. Send it whole again.
                self.desired.forget(work.pod)
                self._pending.add(work.pod)
                self._wake.notify_all()
                return
            self.desired.sent(work.push)
            self._retry.pop(work.pod, None)
            self._sent_at[work.pod] = self.clock()
            self.counters[{APPLY: "applies", UPDATE_MAPS: "map updates", REMOVE: "removes"}[work.rpc]] += 1
            if work.rpc == REMOVE:
                self._uids.pop(work.pod, None)
                self._forget_handed(work.pod)
                return
            view = self.views.get(work.pod)
            if view is None:
                return
            if status is not None:
                self._observe(work.pod, status)
            elif work.push.action == desired.APPLY and view.hash == work.push.programs.hash:
                # Adopted: the agent's report said it holds this hash.
                report = self._reports.get(work.node, {}).get(_key(work.pod))
                if report is not None:
                    self._observe(work.pod, report)

    def failed(self, work: Work, code: str, details: str) -> None:
        """Sending `work` failed: plan the pod again after a backoff."""
        with self._lock:
            self.counters["push failures"] += 1
            if work.rpc == UPDATE_GROUPS or work.push.groups:
                # The node may lack members it was planned to hold: all of them again.
                self._groups_in_flight[work.node] -= 1
                self._groups_planned_at[work.node] = self.clock()
                self.desired.forget_node(work.node)
                key = _GROUPS_OF + str(work.node)
                failures, _ = self._retry.get(key, (0, 0.0))
                self._retry[key] = (failures + 1, self.clock() + min(self.retry_first * 2 ** failures,
                                                                       self.retry_max))
                self._wake.notify_all()
                if work.rpc == UPDATE_GROUPS:
                    return
            failures, _ = self._retry.get(work.pod, (0, 0.0))
            if work.rpc == UPDATE_MAPS and code == "NOT_FOUND":
                # The agent does not know the pod (it restarted): send it whole.
                self.desired.forget(work.pod)
                self._pending.add(work.pod)
                self._wake.notify_all()
                return
            if work.rpc == REMOVE and failures + 1 >= REMOVE_ATTEMPTS:
                self.desired.forget(work.pod)      # the CNI DEL cleans up on the node
                self._retry.pop(work.pod, None)
                self._forget_handed(work.pod)
                return
            delay = min(self.retry_first * 2 ** failures, self.retry_max)
            self._retry[work.pod] = (failures + 1, self.clock() + delay)
            self._wake.notify_all()
            view = self.views.get(work.pod)
            if view is not None and work.rpc != REMOVE:
                self.views.update(work.pod, message=f"agent on node {work.node}: {code}: {details}; "
                                                    f"retrying in {delay:.1f}s")

    # -- the reconcile loop ------------------------------------------------------------

    def reported(self, node: str, pods: Iterable[tuple[str, Report]], asked_at: float,
                 groups_digest: str | None = None) -> list[Work]:
        """An agent's List (asked at `asked_at`): repair what drifted. A pod
        the agent lacks or holds at another hash is sent again whole; a pod
        the operator does not know at all is removed (returned); group
        members that differ from what was planned are all sent again."""
        with self._lock:
            held = dict(pods)
            self._reports[node] = held
            if not self.synced:
                return []
            if groups_digest is not None and self._groups_planned_at.get(node, -1.0) <= asked_at \
                    and self._groups_in_flight[node] <= 0 \
                    and groups_digest != self.desired.groups_digest(node):
                self.desired.forget_node(node)
                self._groups_planned_at[node] = self.clock()
                self._pending.add(_GROUPS_OF + node)
                self.counters["group repairs"] += 1
            for ref, want in self.desired.sent_to(node).items():
                if self._sent_at.get(ref, 0.0) > asked_at:
                    continue                       # sent after the List was asked: not in it
                report = held.get(_key(ref))
                uid = self._uids.get(ref, "")
                if report is None and ref in self._handed \
                        and self.clock() - self._sent_at.get(ref, 0.0) < HANDOFF_GRACE:
                    continue                       # its CNI ADD is still attaching it
                if report is None or report.hash != want or (uid and report.uid and report.uid != uid):
                    self.desired.forget(ref)
                    self._pending.add(ref)
                    self.counters["repairs"] += 1
            for key, report in held.items():
                ref = f"{key}[Pod]"
                view = self.views.get(ref)
                if view is not None and (not report.uid or report.uid == view.uid):
                    self._observe(ref, report)
            orphans = []
            sent = self.desired.sent_to(node)
            for key, report in sorted(held.items()):
                ref = f"{key}[Pod]"
                pod = self.world.state.pods.get((*key.split("/", 1), "Pod"))
                if pod is None and ref not in sent and self._sent_at.get(ref, 0.0) <= asked_at:
                    # Marked as sent now, so a List asked before the Remove
                    # lands (another round) does not send it again.
                    self._sent_at[ref] = self.clock()
                    namespace, name = key.split("/", 1)
                    orphans.append(Work(REMOVE, desired.Push(desired.REMOVE, ref, node),
                                        namespace, name, report.uid))
            self._wake.notify_all()
            return orphans

    def _observe(self, ref: str, report: Report) -> None:
        """What the agent says it holds: the view follows it."""
        if report.state == LOADED:
            # The agent has the pod: a later change may go as UpdateMaps.
            self._handed.discard(ref)
        self.views.observe(ref, report.state, report.hash, report.message)

    def _drop_views(self, refs: Iterable[str] | None = None) -> None:
        """Pods that left the model (of `refs`, default all): their views and
        PodPrograms go, and so does any hand-off of theirs."""
        for ref in self.views.drop(refs):
            self._forget_handed(ref)

    def _forget_handed(self, ref: str) -> None:
        self._handed.discard(ref)
        self._handed_at.pop(ref, None)

    # -- views (PodProgram status), read under the lock ---------------------------------

    def take_views(self) -> list[tuple[str, views.View | None]]:
        """The views that changed since the last call (None: the pod is gone)."""
        with self._lock:
            self._drop_views()
            return self.views.take()

    def redo_view(self, ref: str) -> None:
        """Writing a view failed: write it again next time."""
        with self._lock:
            self.views.redo(ref)

    def view(self, ref: str) -> views.View | None:
        with self._lock:
            return self.views.get(ref)

    def states(self) -> dict[str, int]:
        """PodPrograms by state."""
        with self._lock:
            return self.views.states()

    def views_pending(self) -> int:
        """Views changed and not yet taken by the writer."""
        with self._lock:
            return self.views.pending()

    # -- cluster-wide policies' status (policystatus.Writer) ------------------------------

    def take_policy_verdicts(self) -> list[events.PolicyVerdict]:
        """The policies whose verdict changed since the last call."""
        with self._lock:
            out = sorted(self.world.changed_verdicts.values(), key=lambda v: (v.kind, v.name))
            self.world.changed_verdicts.clear()
            return out

    def redo_policy_verdict(self, verdict: events.PolicyVerdict) -> None:
        """Writing `verdict` failed: write it again next time, unless newer news came."""
        with self._lock:
            key = (verdict.kind, verdict.name)
            if self.world.verdicts.get(key) == verdict:
                self.world.changed_verdicts.setdefault(key, verdict)

    # -- lookups -----------------------------------------------------------------------

    def agent_address(self, node: str) -> str | None:
        with self._lock:
            return self.world.agent_address(node)

    def cluster_services(self) -> tuple[list, list[str]]:
        """The Service table every node translates (compiler/servicemaps),
        and warnings for what it leaves out."""
        from tailor.operator.compiler import servicemaps

        with self._lock:
            return servicemaps.entries(self.world.state)

    def cluster_nodes(self) -> list:
        """Every Node of the model (objects.Node), by name."""
        with self._lock:
            return [self.world.state.nodes[n] for n in sorted(self.world.state.nodes)]

    def agent_nodes(self) -> set[str]:
        """Nodes with an agent address or with programs sent to them."""
        with self._lock:
            nodes = self.world.agent_nodes()
            nodes |= {p.node for p in self.world.state.pods.values() if p.node}
            return nodes

    def idle(self) -> bool:
        """Nothing pending, nothing waiting for a retry (tests, probes)."""
        with self._lock:
            return self._idle()

    def _idle(self) -> bool:
        return (self.synced and not self._pending and not self._retry and not self._busy
                and not self._reports_wanted and not self._groups)

    def summary(self) -> dict:
        with self._lock:
            return {"synced": self.synced, "pods": len(self.world.state.pods),
                    "pending": len(self._pending), "retrying": len(self._retry),
                    "idle": int(self._idle()),
                    "agents": sorted(self.world.agent_nodes()), **dict(self.counters)}

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            self._wake.notify_all()
