"""tailor's hands: the eBPF toolkit (ebpf/), the contract programs are built
to (layout: directions, maps, key and value formats, stats slots), packets
and the trace engines (packets, trace), the node agent with its wire format
and its kernel and emulated backends (agent/), and the CNI plugin (cni/).

The hands never import the brain (tailor.operator) nor anything above it:
they run whatever programs they are given, in the layout written here."""
