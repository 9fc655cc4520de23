"""The per-pod compiler: cluster state -> ProgramSpec -> eBPF programs.

Purely data-manipulative, no I/O; never imports kopf, kubernetes, grpc or
pyroute2. Modules, in pipeline order:
    resolve    cluster state + policy semantics -> ProgramSpec per pod
    spec       the ProgramSpec data model (shape vs membership)
    (the map layouts, stack frame and register plan it builds to are the
     datapath's: tailor.datapath.layout)
    parse, conntrack, rules   emitters of the program's parts
    program    the pipeline: spec -> PodPrograms (two programs, features, hash)
    mapdata    membership -> map entries
    generic    the everything-in-maps baseline program
"""
