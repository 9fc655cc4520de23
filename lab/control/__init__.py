"""The lab's control planes: who compiles the pods' programs, hands them to
the agents at CNI ADD and pushes changes.

- controller: `--control lab` (the default). The operator's own engine,
  ProgramSource, pusher and reconciler (operator/controller), fed once from
  the lab's objects; no API server, no kopf. One implementation of the
  hand-off and the pushes, shared with the operator.
- operated: `--control operator`. An API server (lab/apiserver) holding the
  lab's objects and `tailor operator` watching it, as in a cluster.
- objects: the lab as Kubernetes objects (namespaces, nodes annotated with
  their agent's socket, policies, pods bound to their nodes), which the
  controller loads and operated creates in the API server. Pure.
"""
