"""The agent's half of CNI: the unix-socket server the `tailor` plugin talks
to (server), the command handler (handler), host-local style IPAM (ipam) and
the netlink wiring of a pod's veth (wiring). The plugin side and the wire
protocol live in tailor.datapath.cni.

Runs inside the long-lived agent, so it may import pyroute2 (wiring only)."""
