"""What the node agent needs of the kernel, as Linux capabilities, instead
of running privileged. The chart's agent container (charts/tailor, the
agent's securityContext) and the lab's agent containers (`tailor lab up
--image`) both grant exactly this list; tests/charts checks the chart
against it, and the image lab's probe check proves it is enough.

Measured with the image lab (each capability dropped in turn, the probe
compared with the model): without NET_ADMIN the first veth cannot be made,
without SYS_ADMIN the first setns() into a pod's namespace fails. BPF and
PERFMON are not listed: SYS_ADMIN, which setns() needs anyway, also grants
everything they would (loading, pinning and attaching went through with
either of them dropped).
"""
from __future__ import annotations

CAPABILITIES: dict[str, str] = {
    "NET_ADMIN": "veths, addresses, routes, VXLAN, neighbours and nftables in the node's and "
                 "the pods' namespaces; tcx links and tc filters",
    "SYS_ADMIN": "setns() into a pod's network namespace (CNI ADD/DEL/CHECK); bpf() "
                 "(maps, programs, pins)",
}

# Not a capability: a container's /proc/sys is read-only unless it is
# privileged, so the agent writes the pods' IPv6 sysctls through a writable
# mount of the host's /proc/sys/net (`tailor agent --proc-sys-net`).
PROC_SYS_NET_MOUNT = "/host/proc/sys/net"
