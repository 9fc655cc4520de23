"""Which connections the lab lets through, found by trying them.

probe (called by lab.probe and tests) starts serve in every pod's namespace
and dial from every other pod, or asks the emulated agents' Trace, and
compares the result with the reference model. serve and dial run as
processes inside the pods' namespaces (`python3 -m tailor.lab.probing.serve`
/ `.dial`): standard library only, so they start fast.
"""
