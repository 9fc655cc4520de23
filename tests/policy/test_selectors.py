"""Label selectors: matching, absent vs empty, and fail-closed validation."""
import pytest

from tailor.operator import selectors
from tailor.operator.errors import InvalidSpec

LABELS = {"app": "web", "tier": "front", "kubernetes.io/metadata.name": "x"}


@pytest.mark.parametrize("selector, expected", [
    ({}, True),
    ({"matchLabels": {}}, True),
    ({"matchLabels": {"app": "web"}}, True),
    ({"matchLabels": {"app": "db"}}, False),
    ({"matchLabels": {"app": "web", "tier": "back"}}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, False),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False),
    # NotIn is true when the key is missing.
    ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, True),
    ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
    ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    # matchLabels and matchExpressions are ANDed.
    ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
    ({"matchLabels": {"kubernetes.io/metadata.name": "x"}}, True),
])
def test_matches(selector, expected):
    assert selectors.parse(selector, "sel").matches(LABELS) is expected


def test_empty_selector_matches_everything_and_absent_is_none():
    assert selectors.parse({}, "s").is_empty
    assert selectors.parse({}, "s").matches({})
    assert selectors.parse_optional(None, "s") is None
    assert selectors.parse_optional({}, "s") == selectors.MATCH_ALL


@pytest.mark.parametrize("selector, fragment", [
    (None, "Required value"),
    ("app=web", "must be a label selector object"),
    ({"matchLabels": {"app": 1}}, "quote numbers"),
    ({"matchLabels": {"app": True}}, "not a valid label value"),
    ({"matchLabels": {"-bad": "x"}}, "not a valid label key"),
    ({"matchLabels": {"Bad.Prefix/key": "x"}}, "prefix must be a DNS-1123 subdomain"),
    ({"matchLabels": {"app": "x" * 64}}, "at most 63"),
    ({"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["a"]}]}, "not a valid selector operator"),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}, "must be specified when `operator` is 'In'"),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn"}]}, "must be specified"),
    ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["a"]}]}, "may not be specified"),
    ({"matchExpressions": [{"operator": "Exists"}]}, "key: Required value"),
    ({"matchLabel": {"app": "web"}}, "unknown field"),
])
def test_invalid_selectors_are_errors_never_match_all(selector, fragment):
    with pytest.raises(InvalidSpec) as err:
        selectors.parse(selector, "spec.podSelector")
    assert fragment in str(err.value)
    assert str(err.value).startswith("spec.podSelector")


def test_error_path_points_into_the_selector():
    with pytest.raises(InvalidSpec) as err:
        selectors.parse({"matchExpressions": [{}, {"key": "a", "operator": "In"}]}, "spec.podSelector")
    # The first expression lacks its key.
    assert err.value.path == "spec.podSelector.matchExpressions[0].key"


def test_str_is_readable():
    sel = selectors.parse({"matchLabels": {"app": "web"},
                           "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["b", "a"]}]}, "s")
    assert str(sel) == "app=web,env notin (a,b)"
