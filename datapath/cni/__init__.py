"""The `tailor` CNI plugin (installed as `tailor` in the CNI bin dir). Kept
thin: it validates input and hands the work to the node agent."""
