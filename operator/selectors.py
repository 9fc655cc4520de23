"""Kubernetes label selectors: parse (with the API server's validation) and match.

Called by the cluster parsers (cluster.networkpolicy, cluster.adminpolicy) when
they read selectors, and by the policy evaluator through `LabelSelector.matches`.
Purely data-manipulative, no I/O.

Semantics (metav1.LabelSelector): matchLabels and matchExpressions are ANDed;
an empty selector `{}` matches every object. An *absent* selector is not a
selector at all: `parse_optional` returns None for it and the caller decides
what absence means in its field. Parsing fails closed: an invalid selector
raises `InvalidSpec`, it never degrades into match-all or match-none.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from tailor.operator.errors import InvalidSpec

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry (matchLabels entries become `In` with one value)."""
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        # NotIn: also true when the key is missing (Kubernetes semantics).
        return labels.get(self.key) not in self.values


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A parsed, validated label selector. `requirements` are ANDed."""
    requirements: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True for `{}`, which matches everything."""
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        if not self.requirements:
            return "{}"
        shown = []
        for r in self.requirements:
            if r.operator in ("Exists", "DoesNotExist"):
                shown.append(f"{'!' if r.operator == 'DoesNotExist' else ''}{r.key}")
            elif r.operator == "In" and len(r.values) == 1:
                shown.append(f"{r.key}={next(iter(r.values))}")
            else:
                word = "in" if r.operator == "In" else "notin"
                shown.append(f"{r.key} {word} ({','.join(sorted(r.values))})")
        return ",".join(shown)


MATCH_ALL = LabelSelector()


def parse(obj, path: str) -> LabelSelector:
    """Parse a selector that must be present. `path` names the field for errors."""
    if obj is None:
        raise InvalidSpec(path, "Required value: a label selector ({} selects everything)")
    if not isinstance(obj, Mapping):
        raise InvalidSpec(path, f"must be a label selector object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise InvalidSpec(f"{path}.{unknown[0]}", "unknown field in a label selector")
    requirements: list[Requirement] = []
    match_labels = obj.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise InvalidSpec(f"{path}.matchLabels", "must be a map of label keys to values")
    for key, value in match_labels.items():
        where = f"{path}.matchLabels.{key}"
        validate_label_key(key, where)
        validate_label_value(value, where)
        requirements.append(Requirement(key, "In", frozenset([value])))
    expressions = obj.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise InvalidSpec(f"{path}.matchExpressions", "must be a list")
    for i, expr in enumerate(expressions):
        requirements.append(_parse_requirement(expr, f"{path}.matchExpressions[{i}]"))
    return LabelSelector(tuple(requirements))


def parse_optional(obj, path: str) -> LabelSelector | None:
    """Parse a selector that may be absent: None stays None (absent), `{}` is MATCH_ALL."""
    return None if obj is None else parse(obj, path)


def _parse_requirement(expr, path: str) -> Requirement:
    if not isinstance(expr, Mapping):
        raise InvalidSpec(path, "must be an object with key, operator and values")
    key = expr.get("key")
    if key is None:
        raise InvalidSpec(f"{path}.key", "Required value")
    validate_label_key(key, f"{path}.key")
    operator = expr.get("operator")
    if operator not in OPERATORS:
        raise InvalidSpec(f"{path}.operator",
                          f"{operator!r} is not a valid selector operator (one of {', '.join(OPERATORS)})")
    values = expr.get("values")
    values = [] if values is None else values
    if not isinstance(values, list):
        raise InvalidSpec(f"{path}.values", "must be a list of strings")
    if operator in ("In", "NotIn") and not values:
        raise InvalidSpec(f"{path}.values", f"must be specified when `operator` is '{operator}'")
    if operator in ("Exists", "DoesNotExist") and values:
        raise InvalidSpec(f"{path}.values", f"may not be specified when `operator` is '{operator}'")
    for j, value in enumerate(values):
        validate_label_value(value, f"{path}.values[{j}]")
    return Requirement(key, operator, frozenset(values))


def validate_label_key(key, path: str) -> None:
    """A label key is a qualified name: an optional DNS-1123 subdomain prefix
    and '/', then a name of at most 63 characters."""
    if not isinstance(key, str) or not key:
        raise InvalidSpec(path, f"{key!r} is not a valid label key: must be a non-empty string")
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        raise InvalidSpec(path, f"{key!r} is not a valid label key: empty prefix before '/'")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        raise InvalidSpec(path, f"{key!r} is not a valid label key: prefix must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        raise InvalidSpec(path, f"{key!r} is not a valid label key: the name part must be 1-63 "
                                "alphanumeric characters, '-', '_' or '.', starting and ending alphanumeric")


def validate_label_value(value, path: str) -> None:
    """A label value is empty or at most 63 characters, alphanumeric at both ends."""
    if not isinstance(value, str):
        raise InvalidSpec(path, f"{value!r} is not a valid label value: must be a string "
                                "(quote numbers and booleans in YAML)")
    if len(value) > 63 or not _NAME.match(value):
        raise InvalidSpec(path, f"{value!r} is not a valid label value: at most 63 alphanumeric "
                                "characters, '-', '_' or '.', starting and ending alphanumeric")


def parse_labels(obj, path: str) -> dict[str, str]:
    """Validate an object's metadata.labels map; absent means no labels."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise InvalidSpec(path, "must be a map of label keys to values")
    for key, value in obj.items():
        validate_label_key(key, f"{path}.{key}")
        validate_label_value(value, f"{path}.{key}")
    return dict(obj)
