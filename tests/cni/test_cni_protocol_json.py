"""protocol.loads and protocol.dumps (JSON through `_json`, without the json
package) read and write exactly what json.loads and json.dumps do."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailor.datapath.cni import protocol

scalars = (st.none() | st.booleans() | st.integers() | st.text()
           | st.floats(allow_nan=False) | st.sampled_from([math.inf, -math.inf]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(values)
def test_dumps_writes_what_json_dumps_writes(value):
    assert protocol.dumps(value) == json.dumps(value)
    assert protocol.dumps(value, compact=True) == json.dumps(value, separators=(",", ":"))


@given(values, st.sampled_from(["", " ", "\n", " \t\r\n"]))
def test_loads_reads_what_json_loads_reads(value, space):
    text = space + json.dumps(value) + space
    assert protocol.dumps(protocol.loads(text)) == json.dumps(json.loads(text))
    assert protocol.dumps(protocol.loads(text.encode())) == json.dumps(json.loads(text.encode()))


@pytest.mark.parametrize("bad", [b"", b"  ", b"{not json", b"[1,]", b"{} x", b'"\\x"', b"nul", b"\xff",
                                 b'{"a": 1', b"[1] [2]"])
def test_bad_input_fails_as_json_loads_fails(bad):
    with pytest.raises(ValueError) as ours:
        protocol.loads(bad)
    with pytest.raises(ValueError) as theirs:
        json.loads(bad)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_bad_input_fails_cleanly_where_json_was_never_imported():
    # _json's scanner raises json.decoder's error class and finds it only in
    # sys.modules: the plugin under -IS has not imported json.
    probe = ("import sys; from tailor.datapath.cni import protocol\n"
             "assert 'json' not in sys.modules\n"
             "try:\n    protocol.loads(b'{not json')\nexcept ValueError as e:\n    print(type(e).__name__)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.stdout.strip() == "JSONDecodeError", run.stderr


def test_what_json_cannot_write_is_refused_as_json_refuses_it():
    for value in ({"a": object()}, {(1, 2): 1}):
        with pytest.raises(TypeError) as ours:
            protocol.dumps(value)
        with pytest.raises(TypeError) as theirs:
            json.dumps(value)
        assert str(ours.value) == str(theirs.value)
