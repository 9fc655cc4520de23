"""tailor's brain: cluster model, policy semantics, the per-pod program compiler
and the kopf controller. Imported as `tailor.operator`, never as `operator`."""
