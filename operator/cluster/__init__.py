"""The cluster model: namespaces, nodes, pods (and workloads' representative
pods) and the parsed, validated policies, held in a ClusterState with its
indexes.

Purely data-manipulative; the one exception is `manifests`, which reads
manifest files. Never imports kopf, kubernetes, grpc or pyroute2. Called by the
policy evaluator (tailor.operator.policy), the compiler, the CLI and the kopf
handlers.

Modules: objects (Namespace, Pod, Node), ports (protocols, ContainerPort,
PortMatch), networkpolicy and adminpolicy (parsed policies), addresses (default
pod address pools), pods (Pod and workload manifests), state (ClusterState),
manifests (files -> ClusterState).
"""
