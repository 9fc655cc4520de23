"""`tailor lab`: a cluster on one Linux machine, made of network namespaces.

Network namespaces play the nodes and the pods, a bridge in a "switch"
namespace plays the network between nodes, the real node agents run in the
node namespaces, the real `tailor-cni` wires each pod, and a control plane
compiles and pushes the programs. Without root, emulated agents (the same
programs in the userspace VM) stand in for the kernel.

The lab sits on top of the other rooms: it drives the agents from outside
(processes, gRPC, the CNI plugin) and runs the operator's parts; nothing
below imports it. Its rooms:

- orchestration (this package): plan (pure: names, addresses, placement),
  state (the state file other tools read), netns (namespaces, underlay,
  routes), processes (agents and control plane), cni (calls the plugin as a
  runtime would), emulated (a node without root), lab (up, status, probe,
  down);
- probing/: real TCP and UDP connections between the pods (probe, with the
  pods' serve and dial processes), compared with the model;
- control/: the two control planes — controller (the operator's engine fed
  from the manifests; the default) and operated (an API server and `tailor
  operator`), and objects (what either holds: the lab as Kubernetes objects);
- apiserver/: the Kubernetes API server emulator (kmock plus what kopf and
  kubectl read) that `--control operator` runs and the operator's tests use.
"""
