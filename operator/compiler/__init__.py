"""The per-pod compiler: cluster state -> ProgramSpec -> eBPF programs.

Purely data-manipulative, no I/O; never imports kopf, kubernetes, grpc or
pyroute2. Modules, in pipeline order:
    resolve    cluster state + policy semantics -> ProgramSpec per pod
    spec       the ProgramSpec data model (the shape; members are node data)
    (the map layouts, stack frame and register plan it builds to are the
     datapath's: tailor.datapath.layout)
    parse, conntrack, rules   emitters of the program's parts
    program    the pipeline: spec -> PodPrograms (two programs, features, hash)
    template   compile once per shape, patch each pod's own constants
    generic    the everything-in-maps baseline program
"""
