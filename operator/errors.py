"""The operator's few error classes.

`InvalidSpec` is raised by the pure parsers (selectors, cluster.networkpolicy,
cluster.adminpolicy, cluster.pods) with the field path inside the object;
`cluster.manifests` wraps it into a `ManifestError` that also names the file and
the object, which is what users see:

    policies/deny.yaml: NetworkPolicy x/deny: spec.ingress[0].ports[1].port: ...
"""
from __future__ import annotations


class InvalidSpec(ValueError):
    """A field of an API object is invalid. `path` is the field path inside the
    object (`spec.ingress[0].ports[1].port`), `message` says what is wrong."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ManifestError(ValueError):
    """A manifest could not be read or an object in it is invalid.

    `file` is the path as given, `obj` the object as `Kind ns/name` (or `Kind
    name` for cluster-scoped kinds; None when the file itself is at fault),
    `field` the field path (None when not about one field)."""

    def __init__(self, file: str, obj: str | None, field: str | None, message: str):
        self.file = file
        self.obj = obj
        self.field = field
        self.message = message
        parts = [file] + [p for p in (obj, field) if p] + [message]
        super().__init__(": ".join(parts))
