"""The lab's Kubernetes API server: kmock's emulator (in memory, real HTTP)
plus what kopf and kubectl read, and a small client for it.

Used by `tailor lab up --control operator` (run as a process:
`python3 -m tailor.lab.apiserver --port N --kubeconfig FILE`) and by the
operator's tests, which serve it in-process. An API server for a lab, never
for a cluster: objects live in memory only.

Modules: server (the Emulator, `declare_all`, the kubeconfig, the runner),
resources (the API resources tailor needs, the PodProgram CRD read from the
chart), tables (the Table rendering and label/field selectors kubectl sees),
client (a plain JSON client for the lab and the tests).
"""
from tailor.lab.apiserver.client import ApiError, Client
from tailor.lab.apiserver.server import Emulator, declare_all, kubeconfig

__all__ = ["ApiError", "Client", "Emulator", "declare_all", "kubeconfig"]
