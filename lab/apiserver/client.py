"""A synchronous JSON client of the Kubernetes API, for the lab: create,
patch, delete, get and list by path. Plain HTTP, no credentials: it speaks
to the lab's own API server (server.py), never to a cluster.

Used by the operator lab (control/operated.py: objects, pod status, sync),
the benchmarks and the tests. Standard library only.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiError(Exception):
    """The API answered an error: the message has the method, path, status and reason."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Client:
    """A synchronous JSON client for the lab (and benchmarks): create, patch,
    delete, get and list by path. Plain HTTP, no credentials."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read()[:300].decode(errors="replace")
            try:
                text = json.loads(text).get("message", text)
            except ValueError:
                pass
            raise ApiError(f"{method} {path}: {e.code} {text}", e.code) from None

    def create(self, path: str, obj: dict) -> dict:
        return self.request("POST", path, obj)

    def patch(self, path: str, patch: dict) -> dict:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, path: str) -> dict:
        return self.request("DELETE", path)

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def items(self, path: str) -> list[dict]:
        return self.request("GET", path).get("items", [])
