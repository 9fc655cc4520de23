"""The node agent: one per node, serving the gRPC API (api/agent.proto) to
the operator or the lab and a unix socket to the CNI plugin, with a kernel
backend (programs, maps and links pinned under bpffs) or an emulated one
(the same programs in the userspace VM)."""
