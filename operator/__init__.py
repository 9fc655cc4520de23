"""tailor's brain: cluster model (cluster/, selectors), policy semantics
(policy/: the reference model), the per-pod program compiler (compiler/),
incremental planning (affected, desired), the tracer of compiled clusters
(tracing) and the kopf controller (controller/). It builds to the
datapath's contract (tailor.datapath.layout, agent.wire) and sits below the
lab and the cli. Imported as `tailor.operator`, never as `operator`."""
