"""`tailor lab`: a cluster on one Linux machine.

Network namespaces play the nodes and the pods, a bridge in a "switch"
namespace plays the network between nodes, the real node agents run in the
node namespaces, the real `tailor-cni` wires each pod, and a controller
process plays the operator (compiles programs, pushes changes). `probe`
opens real TCP and UDP connections between the pods.

Modules: plan (pure: names, addresses, placement), state (the state file),
netns (namespaces, underlay, routes), processes (agents and controller),
controller (the lab's ProgramSource and pusher), cni (calls the plugin),
probe with serve and dial (real connections), emulated (the same without
root), lab (orchestration: up, status, probe, down).
"""
