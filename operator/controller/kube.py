"""A small Kubernetes API client (aiohttp) for what kopf does not do for us:
writing PodPrograms and their status, Events on pods, and the Lease.

Called by podprograms.Writer and lease.Lease, from the operator's asyncio
loop. Credentials are kopf's ConnectionInfo fields (app.py logs in once,
with kopf's own login functions, and gives kopf and this client the same).
Errors are ApiError with the status code and the API's message (status 0:
the API could not be reached); callers decide what a 404 or a 409 means.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import tempfile
from typing import Any

import aiohttp

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}")

    @property
    def conflict(self) -> bool:
        """409 Conflict, or a JSON-patch `test` that failed (422 on a real
        server; some test servers answer 500 naming the failed test)."""
        return self.status in (409, 422) or "JsonPatchTestFailed" in self.reason + self.message


class KubeClient:
    def __init__(self, info, *, timeout: float = 30.0):
        """`info`: a kopf.ConnectionInfo (or anything with its fields)."""
        self.server = str(info.server).rstrip("/")
        self.default_namespace = getattr(info, "default_namespace", None)
        self._headers = {"Accept": "application/json", "User-Agent": "tailor-operator"}
        token = getattr(info, "token", None)
        scheme = getattr(info, "scheme", None) or "Bearer"
        if token:
            self._headers["Authorization"] = f"{scheme} {token}"
        elif getattr(info, "username", None):
            pair = f"{info.username}:{info.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        self._ssl = _ssl_context(info) if self.server.startswith("https") else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json") -> dict:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            async with self._session.request(method, self.server + path, data=data, headers=headers,
                                             ssl=self._ssl if self._ssl is not None else True) as resp:
                text = await resp.text()
                status = resp.status
                http_reason = resp.reason or ""
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise ApiError(0, "Unreachable", f"{method} {path}: {type(e).__name__}: {e}") from None
        if status >= 400:
            try:
                answer = json.loads(text)
                reason, message = str(answer.get("reason", "")), str(answer.get("message", text))
            except (ValueError, AttributeError):
                reason, message = http_reason, text
            raise ApiError(status, reason, message[:500])
        return json.loads(text) if text else {}

    async def get(self, path: str) -> dict:
        return await self.request("GET", path)

    async def create(self, path: str, body: dict) -> dict:
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, body: dict) -> dict:
        return await self.request("PATCH", path, body, MERGE)

    async def json_patch(self, path: str, ops: list[dict]) -> dict:
        return await self.request("PATCH", path, ops, JSON_PATCH)

    async def delete(self, path: str) -> dict:
        return await self.request("DELETE", path)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _ssl_context(info) -> ssl.SSLContext:
    if getattr(info, "insecure", False):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif getattr(info, "ca_data", None):
        data = info.ca_data if isinstance(info.ca_data, str) else info.ca_data.decode()
        context = ssl.create_default_context(cadata=_pem(data))
    else:
        context = ssl.create_default_context(cafile=getattr(info, "ca_path", None))
    cert = _file(getattr(info, "certificate_path", None), getattr(info, "certificate_data", None))
    key = _file(getattr(info, "private_key_path", None), getattr(info, "private_key_data", None))
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _pem(data: str) -> str:
    """kubeconfig `*-data` fields are base64 of PEM; accept PEM too."""
    return data if "-----BEGIN" in data else base64.b64decode(data).decode()


def _file(path, data) -> str | None:
    """A file holding `data` (PEM) when only data is given; ssl wants files."""
    if path or not data:
        return path
    text = data if isinstance(data, str) else data.decode()
    handle = tempfile.NamedTemporaryFile("w", prefix="tailor-", suffix=".pem", delete=False)
    with handle:
        handle.write(_pem(text))
    os.chmod(handle.name, 0o600)
    return handle.name
