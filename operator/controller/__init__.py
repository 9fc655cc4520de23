"""The kopf controller: the only part of tailor.operator that imports kopf,
and the only one that does I/O (the Kubernetes API, gRPC to the agents).

Thin by design: the handlers translate watch events into the pure model
(cluster, policy, compiler, affected, desired), and everything that decides
something is a plain function or a lock-guarded object free of kopf.

Modules, from the API to the agents:
    handlers     kopf registrations (indexes, events, startup/cleanup, probe)
    events       watch events -> model changes + affected pods (pure)
    engine       the shared state behind one lock: model, desired, pending, reports, hand-offs
    views        what each PodProgram says (one View per pod), held by the engine
    source       ProgramSource.ProgramFor: the CNI hand-off (gRPC server)
    pusher       thread: pending pods -> Apply / UpdateMaps / Remove, changed groups -> UpdateGroups
    reconcile    thread: List each agent, repair drift, remove orphans
    resync       task: list the API, drop deletions a dropped watch missed
    agents       node -> agent address -> gRPC stub
    podprograms  PodProgram objects and status, Events on pods
    policystatus status.conditions on ANPs, BANPs and CNPs: accepted, or why not
    kube         a small Kubernetes API client (aiohttp)
    lease        one active operator (coordination.k8s.io Lease)
    metrics      Prometheus /metrics from the engine's counters
    config       the settings; app assembles it all and runs kopf
"""
