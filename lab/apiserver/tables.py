"""The API server's Table rendering and list selectors, as kubectl sees
them: printer-column cells and ages, label- and fieldSelector matching.

Used by the API emulator (server.py) that the operator lab and the
operator's tests serve. Pure: no I/O.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tailor.lab.apiserver import resources


def age(timestamp: str | None, now: datetime.datetime) -> str | None:
    """A timestamp as an age the way the API server prints it: "42s",
    "3m10s", "5h", "12d", "2y30d" — coarser as it gets older."""
    if not timestamp:
        return None
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    seconds = int((now - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 2 * 365:
        return f"{days}d"
    years = days // 365
    return f"{years}y{days % 365}d" if years < 8 and days % 365 else f"{years}y"


_PATH_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def lookup(obj: Any, json_path: str) -> Any:
    """The value at a printer column's jsonPath (`.status.node`,
    `.spec.ports[0].port`), or None when any step is missing."""
    position = 0
    path = json_path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while position < len(path):
        step = _PATH_STEP.match(path, position)
        if step is None:
            raise ValueError(f"unsupported jsonPath {json_path!r}")
        position = step.end()
        key, index = step.groups()
        if key is not None:
            obj = obj.get(key) if isinstance(obj, Mapping) else None
        else:
            obj = obj[int(index)] if isinstance(obj, list) and int(index) < len(obj) else None
        if obj is None:
            return None
    return obj


def cell(value: Any, column: resources.PrinterColumn, now: datetime.datetime) -> Any:
    """One table cell: typed as the column says, None when absent."""
    if value is None:
        return None
    if column.type == "date":
        return age(str(value), now)
    if column.type == "integer":
        return int(value) if isinstance(value, (int, float, str)) and str(value).lstrip("-").isdigit() else None
    if column.type == "number":
        return value if isinstance(value, (int, float)) else None
    if column.type == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return str(dict(value))
    return str(value)


def table(objects: Iterable[Mapping[str, Any]], columns: Iterable[resources.PrinterColumn],
          include: str, now: datetime.datetime) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table: NAME then the columns; each row carries the
    object as `include` asks (None, Metadata — the default — or Object)."""
    columns = tuple(columns)
    definitions = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name must be unique within a namespace."}]
    definitions += [{"name": c.name, "type": c.type, "format": c.format, "priority": c.priority,
                     "description": c.description} for c in columns]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {
            "cells": [obj.get("metadata", {}).get("name")]
                     + [cell(lookup(obj, c.json_path), c, now) for c in columns]}
        if include == "Object":
            row["object"] = dict(obj)
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata", {})}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": "1"},
            "columnDefinitions": definitions, "rows": rows}


_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=,()]+)\s*"
    r"(?:(?P<op>==|!=|=)\s*(?P<value>[^\s,()]*)"
    r"|(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$")


def _split_requirements(selector: str) -> list[str]:
    """Split on the commas that are not inside `in (...)` value lists."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def matches(selector: str, values: Mapping[str, str]) -> bool:
    """Whether `values` (labels, or flattened fields) satisfy a label- or
    fieldSelector. A selector this cannot parse matches nothing (fail closed)."""
    for requirement in _split_requirements(selector):
        m = _REQUIREMENT.match(requirement)
        if m is None:
            return False
        key, present = m["key"], m["key"] in values
        if m["neg"]:
            if present or m["op"] or m["setop"]:
                return False
        elif m["op"] in ("=", "=="):
            if values.get(key) != m["value"]:
                return False
        elif m["op"] == "!=":
            if values.get(key) == m["value"]:
                return False
        elif m["setop"]:
            choices = {v.strip() for v in m["values"].split(",")}
            if (m["setop"] == "in") != (values.get(key) in choices):
                return False
        elif not present:
            return False
    return True


def fields(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """An object flattened to `a.b.c: value` pairs, as fieldSelectors name them."""
    flat: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            flat.update(fields(value, f"{prefix}{key}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[f"{prefix}{key}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return flat
