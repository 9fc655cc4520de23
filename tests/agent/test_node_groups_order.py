"""Group members that cross on the way: a CNI hand-off's answer and a push
can reach a node in the other order than they were computed. The node keeps
the newer (GroupChange.seq) whatever the order, on the wire and in the maps."""
from __future__ import annotations

from tailor.datapath import groups as G
from tailor.datapath import layout
from tailor.datapath.agent import wire

GROUP = "p:dns"


def test_an_older_replace_arriving_late_changes_nothing():
    node = G.NodeGroups()
    older = G.GroupChange(GROUP, ("10.0.0.2",), replace=True, seq=100)             # computed first
    newer = G.GroupChange(GROUP, ("10.0.0.1", "10.0.0.2"), replace=True, seq=200)  # after 10.0.0.1 joined
    node.update([newer])
    assert node.update([older]) == {}                       # stale: no map write at all
    assert node.members(GROUP) == frozenset({"10.0.0.1", "10.0.0.2"})
    # A newer delta still applies; so does an unordered (seq 0) change.
    writes = node.update([G.GroupChange(GROUP, remove=("10.0.0.2",), seq=300)])
    assert writes[layout.IDS4.name] == {layout.pack_addr("10.0.0.2"): None}
    node.update([G.GroupChange(GROUP, ("10.0.0.3",))])
    assert node.members(GROUP) == frozenset({"10.0.0.1", "10.0.0.3"})


def test_the_order_survives_the_wire():
    change = G.GroupChange(GROUP, ("10.0.0.1",), replace=True, seq=1796281145547520)
    (back,) = wire.group_changes_from_proto(wire.group_changes_to_proto([change]))
    assert back.seq == change.seq and back == change
