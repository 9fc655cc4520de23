"""A redirect never bypasses a translation someone else made, in the VM and
in the kernel: between two pods of one node, a connection a pod program
redirected is answered by redirect; one the node forwarded (kube-proxy
DNATed a Service address to the backend) is answered through the node,
whose conntrack undoes the translation. The model allows both; the lab's
kernel test (tests/lab/test_lab_kernel.py) runs the real kube-proxy case."""
from __future__ import annotations

import pytest

from tailor.datapath import layout
from tailor.datapath import packets as pk
from tailor.datapath import trace
from tailor.datapath.ebpf.helper_ids import TcAct
from tailor.operator import policy, tracing
from tailor.operator.compiler import build

from test_specialisation import ISOLATE, pod, state_of

VIP = "10.96.0.10"


@pytest.fixture(params=["emulated", pytest.param("kernel", marks=pytest.mark.kernel)])
def node(request):
    # q is isolated for ingress (it records for replies); p is free.
    state = state_of(pod("p", {"role": "web"}), pod("q", {"role": "db"}, ips=("10.1.0.2",)), ISOLATE)
    built = build.build(state)
    n = tracing.Node(trace.engine(request.param), state)
    for b in built.values():
        n.add(b.spec, b.programs)
    yield state, n
    n.close()


def run(n: tracing.Node, ref: str, direction: str, flow: pk.Flow, mark: int = 0, syn=True):
    frame = pk.frame(flow, tcp_flags=pk.TCP_SYN if syn else pk.TCP_SYN | pk.TCP_ACK)
    return n.engine.run(n.pods[ref].loaded[direction], frame, mark)


def test_a_redirected_connection_is_answered_by_redirect(node):
    state, n = node
    flow = pk.Flow("10.1.0.1", "10.1.0.2", "TCP", 40000, 5432)
    assert policy.connection_allowed(state, "10.1.0.1", "10.1.0.2", "TCP", 5432)
    retval, _, mark = run(n, "app/p[Pod]", "egress", flow)
    assert retval == TcAct.REDIRECT and mark & layout.REDIRECT_MARK
    retval, _, mark = run(n, "app/q[Pod]", "ingress", flow, mark)
    assert retval == TcAct.OK and not mark & layout.REDIRECT_MARK      # cleared on arrival
    retval, _, _ = run(n, "app/q[Pod]", "egress", flow.reply(), syn=False)
    assert retval == TcAct.REDIRECT


def test_a_connection_the_node_forwarded_is_answered_through_the_node(node):
    state, n = node
    # p opens VIP:5432; its program sees no pod there and leaves it to the
    # node, which DNATs it to q and forwards it (no mark).
    retval, _, mark = run(n, "app/p[Pod]", "egress", pk.Flow("10.1.0.1", VIP, "TCP", 40001, 5432))
    assert retval == TcAct.OK and not mark & layout.REDIRECT_MARK
    translated = pk.Flow("10.1.0.1", "10.1.0.2", "TCP", 40001, 5432)
    assert run(n, "app/q[Pod]", "ingress", translated)[0] == TcAct.OK
    # q's reply goes back to the node (TC_ACT_OK), not across to p.
    assert run(n, "app/q[Pod]", "egress", translated.reply(), syn=False)[0] == TcAct.OK
    # The pair is remembered by addresses: whatever else q sends p goes
    # through the node from now on (slower, never wrong).
    other = pk.Flow("10.1.0.2", "10.1.0.1", "TCP", 40003, 80)
    assert run(n, "app/q[Pod]", "egress", other)[0] == TcAct.OK
