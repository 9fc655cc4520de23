"""The node's own networking, as the agent keeps it: its addresses (the
HOST group), the routes to other nodes' pods (native or VXLAN) and the
masquerade of traffic leaving the cluster."""
