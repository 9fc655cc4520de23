"""tailor's hands: the eBPF toolkit, the node agent with its kernel and emulated
backends, the CNI plugin and the lab."""
