"""The `tailor` plugin against CNI spec 1.1.0, run as a runtime runs it: a
subprocess with CNI_* in its environment and the config on stdin. Every test
runs three times: against the console script, the PyInstaller build and the
installed `python3 -IS` script.

The first table needs no agent (input the plugin must refuse itself, and an
agent that isn't there); the kernel tests run a real CniSocketServer +
CniHandler with real IPAM and veths in real network namespaces, and a fake
program hand-off."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import threading
import time

import pytest

import cni_harness
from cni_harness import run_plugin
from tailor.datapath.agent.cni import handler as cni_handler
from tailor.datapath.agent.cni import wiring as cni_wiring

ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
NOWHERE = "/run/tailor-test-no-agent/cni.sock"
DROP = object()   # remove the key from the config


def base_config(**changes) -> dict:
    config = {"cniVersion": "1.1.0", "name": "tailor-test", "type": "tailor",
              "agentSocket": NOWHERE, "timeoutSeconds": 5}
    for key, value in changes.items():
        key = key.replace("__", "/")   # cni.dev__valid-attachments
        if value is DROP:
            config.pop(key, None)
        else:
            config[key] = value
    return config


VALID_ENV = {"CNI_CONTAINERID": "ctr-1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
             "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
PREV = {"cniVersion": "1.1.0", "interfaces": [], "ips": []}

# (id, CNI_COMMAND, env changes, config or raw stdin, expected code)
REFUSED = [
    # CNI_COMMAND and stdin
    ("no-command", None, {}, base_config(), 4),
    ("unknown-command", "ATTACH", {}, base_config(), 4),
    ("stdin-not-json", "ADD", {}, "{not json", 6),
    ("stdin-not-an-object", "ADD", {}, "[1, 2]", 6),
    # versions: the spec's code 1 for a version the plugin does not implement
    ("version-0.3.1", "ADD", {}, base_config(cniVersion="0.3.1"), 1),
    ("version-2.0.0", "ADD", {}, base_config(cniVersion="2.0.0"), 1),
    ("version-missing", "ADD", {}, base_config(cniVersion=DROP), 7),
    # the network config
    ("name-missing", "ADD", {}, base_config(name=DROP), 7),
    ("name-invalid", "ADD", {}, base_config(name="-net"), 7),
    ("type-missing", "ADD", {}, base_config(type=DROP), 7),
    ("timeout-negative", "ADD", {}, base_config(timeoutSeconds=-1), 7),
    ("socket-relative", "ADD", {}, base_config(agentSocket="run/cni.sock"), 7),
    ("ranges-not-lists", "ADD", {}, base_config(ipam={"ranges": ["10.0.0.0/24"]}), 7),
    ("ipam-delegated", "ADD", {}, base_config(ipam={"type": "host-local"}), 2),
    ("add-chained-after-another", "ADD", {}, base_config(prevResult=PREV), 2),
    ("check-without-prevResult", "CHECK", {}, base_config(), 7),
    ("gc-bad-attachments", "GC", {}, base_config(**{"cni.dev__valid-attachments": [{"id": "x"}]}), 7),
    ("gc-without-attachments", "GC", {}, base_config(), 7),
    # the environment: code 4 names the variable
    ("containerid-missing", "ADD", {"CNI_CONTAINERID": None}, base_config(), 4),
    ("containerid-invalid", "ADD", {"CNI_CONTAINERID": "-abc"}, base_config(), 4),
    ("ifname-missing", "DEL", {"CNI_IFNAME": None}, base_config(), 4),
    ("ifname-16-chars", "ADD", {"CNI_IFNAME": "a" * 16}, base_config(), 4),
    ("ifname-slash", "ADD", {"CNI_IFNAME": "eth/0"}, base_config(), 4),
    ("ifname-dotdot", "ADD", {"CNI_IFNAME": ".."}, base_config(), 4),
    ("netns-missing-on-add", "ADD", {"CNI_NETNS": None}, base_config(), 4),
    ("netns-missing-on-check", "CHECK", {"CNI_NETNS": None}, base_config(prevResult=PREV), 4),
    ("netns-path-gone", "ADD", {"CNI_NETNS": "/var/run/netns/tailor-test-never"}, base_config(), 4),
    ("cni-args-malformed", "ADD", {"CNI_ARGS": "K8S_POD_NAME"}, base_config(), 4),
    ("gc-without-cni-path", "GC", {"CNI_PATH": None}, base_config(**{"cni.dev__valid-attachments": []}), 4),
    # valid input, no agent: try again later; STATUS says "not available"
    ("no-agent-add", "ADD", {}, base_config(), 11),
    ("no-agent-del", "DEL", {}, base_config(), 11),
    ("no-agent-del-without-netns", "DEL", {"CNI_NETNS": None}, base_config(), 11),
    ("no-agent-check", "CHECK", {}, base_config(prevResult=PREV), 11),
    ("no-agent-gc", "GC", {}, base_config(**{"cni.dev__valid-attachments": []}), 11),
    ("no-agent-status", "STATUS", {}, base_config(), 50),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_the_spec_error(plugin, case):
    _, command, env_changes, config, code = case
    env = {**VALID_ENV, **env_changes}
    rc, out, raw = run_plugin(plugin, command, config, **env)
    assert rc != 0, raw
    assert out is not None and set(out) == ERROR_KEYS, raw
    assert out["code"] == code, raw
    assert out["msg"] and isinstance(out["details"], str)
    version = config.get("cniVersion") if isinstance(config, dict) else None
    assert out["cniVersion"] == (version if version in ("0.4.0", "1.0.0", "1.1.0") else "1.1.0")


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_error_speaks_the_config_version(plugin, version):
    rc, out, raw = run_plugin(plugin, "ADD", base_config(cniVersion=version), **VALID_ENV)
    assert rc != 0 and out["code"] == 11 and out["cniVersion"] == version, raw


def test_version_is_answered_without_an_agent(plugin):
    rc, out, raw = run_plugin(plugin, "VERSION", {"cniVersion": "1.1.0"})
    assert rc == 0, raw
    assert out == {"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_an_agent_that_never_answers_is_try_again_later(plugin, tmp_path):
    # Accepts the connection, reads the request, then says nothing.
    path = f"/tmp/tl-silent-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        rc, out, raw = run_plugin(plugin, "ADD", base_config(agentSocket=path, timeoutSeconds=1), **VALID_ENV)
        assert rc != 0 and out["code"] == 11, raw
        assert "in time" in out["msg"]
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
        os.unlink(path)


# -- with the agent, in real namespaces ----------------------------------------------

def add(plugin, agent, netns_path, container_id, config=None, ifname="eth0", **env):
    return run_plugin(plugin, "ADD", config or agent.config(), CNI_CONTAINERID=container_id,
                      CNI_NETNS=netns_path, CNI_IFNAME=ifname, CNI_PATH="/opt/cni/bin",
                      CNI_ARGS=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container_id};"
                               f"K8S_POD_UID=uid-{container_id}", **env)


def command(plugin, agent, name, netns_path, container_id, config=None, ifname="eth0"):
    env = {"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin"}
    if netns_path is not None:
        env["CNI_NETNS"] = netns_path
    return run_plugin(plugin, name, config or agent.config(), **env)


def links_in(netns_path: str) -> str:
    return subprocess.run(["ip", "-n", os.path.basename(netns_path), "-o", "addr"],
                          capture_output=True, text=True).stdout


def assert_nothing_left(agent, container_id, ifname="eth0"):
    assert agent.ipam.lookup(container_id, ifname) == []
    assert cni_wiring.host_ifname(container_id, ifname) not in cni_harness.tailor_veths()


@pytest.mark.kernel
@pytest.mark.parametrize("version", ["1.1.0", "1.0.0", "0.4.0"])
def test_add_returns_the_result_in_the_config_version(plugin, agent, netns, version):
    ns, cid = netns.new(), cni_harness.container_id()
    rc, result, raw = add(plugin, agent, ns, cid, agent.config(version))
    assert rc == 0, raw
    assert result["cniVersion"] == version
    host, pod = result["interfaces"]
    assert host == {"name": cni_wiring.host_ifname(cid, "eth0"), "mac": host["mac"]}
    assert pod == {"name": "eth0", "mac": pod["mac"], "sandbox": ns}
    v4, v6 = result["ips"]
    assert ipaddress.ip_interface(v4["address"]) in [ipaddress.ip_interface(f"10.244.1.{n}/32") for n in range(2, 255)]
    assert ipaddress.ip_interface(v6["address"]).network.prefixlen == 128
    assert ipaddress.ip_address(v6["address"].split("/")[0]) in ipaddress.ip_network("fd00:10:244:1::/64")
    assert (v4["gateway"], v6["gateway"]) == ("169.254.1.1", "fe80::1")
    assert v4["interface"] == v6["interface"] == 1
    # 0.4.0's ip entries carry "version"; 1.0.0 removed it.
    if version == "0.4.0":
        assert (v4["version"], v6["version"]) == ("4", "6")
    else:
        assert "version" not in v4 and "version" not in v6
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}]
    assert result["dns"] == {}
    # The kernel agrees, and the program was attached to the host side first.
    assert v4["address"] in links_in(ns) and v6["address"] in links_in(ns)
    (pod_info, endpoint), = [a for a in agent.fake.attached if a[0]["containerID"] == cid]
    assert pod_info == {"namespace": "default", "name": f"pod-{cid}", "uid": f"uid-{cid}", "containerID": cid}
    assert (endpoint.host_ifname, endpoint.host_mac, endpoint.pod_mac) == (host["name"], host["mac"], pod["mac"])
    rc, out, raw = command(plugin, agent, "DEL", ns, cid, agent.config(version, prevResult=result))
    assert (rc, out) == (0, None), raw
    assert_nothing_left(agent, cid)


@pytest.mark.kernel
@pytest.mark.parametrize("version", ["1.1.0", "0.4.0"])
def test_check_passes_after_add_and_fails_when_an_address_is_gone(plugin, agent, netns, version):
    ns, cid = netns.new(), cni_harness.container_id()
    rc, result, raw = add(plugin, agent, ns, cid, agent.config(version))
    assert rc == 0, raw
    rc, out, raw = command(plugin, agent, "CHECK", ns, cid, agent.config(version, prevResult=result))
    assert (rc, out) == (0, None), raw
    subprocess.run(["ip", "-n", os.path.basename(ns), "addr", "del", result["ips"][0]["address"], "dev", "eth0"],
                   check=True)
    rc, out, raw = command(plugin, agent, "CHECK", ns, cid, agent.config(version, prevResult=result))
    assert rc != 0 and out["code"] == 104 and "lacks address" in out["details"], raw
    command(plugin, agent, "DEL", ns, cid)


@pytest.mark.kernel
def test_del_twice_succeeds_silently(plugin, agent, netns):
    ns, cid = netns.new(), cni_harness.container_id()
    rc, result, raw = add(plugin, agent, ns, cid)
    assert rc == 0, raw
    for _ in range(2):
        rc, out, raw = command(plugin, agent, "DEL", ns, cid, agent.config(prevResult=result))
        assert (rc, out) == (0, None), raw
    assert agent.fake.detached.count((cid, "eth0")) == 2
    assert_nothing_left(agent, cid)
    assert "eth0" not in subprocess.run(["ip", "-n", os.path.basename(ns), "link"],
                                        capture_output=True, text=True).stdout


@pytest.mark.kernel
@pytest.mark.parametrize("pass_netns", [True, False], ids=["stale-CNI_NETNS", "no-CNI_NETNS"])
def test_del_after_the_namespace_is_gone_still_cleans_up(plugin, agent, netns, pass_netns):
    ns, cid = netns.new(), cni_harness.container_id()
    rc, result, raw = add(plugin, agent, ns, cid)
    assert rc == 0, raw
    netns.delete(ns)
    rc, out, raw = command(plugin, agent, "DEL", ns if pass_netns else None, cid)
    assert (rc, out) == (0, None), raw
    assert_nothing_left(agent, cid)


ATTACH_FAILURES = [
    # (mode, delay, timeoutSeconds, expected code)
    ("reject", 0, 20, 103),
    ("unavailable", 0, 20, 11),
    ("slow", 4.0, 2, 11),     # the program outlives the plugin's timeout
]


@pytest.mark.kernel
@pytest.mark.parametrize("mode,delay,timeout,code", ATTACH_FAILURES, ids=[f[0] for f in ATTACH_FAILURES])
def test_a_failed_attach_leaves_nothing_behind(plugin, agent, netns, mode, delay, timeout, code):
    ns, cid = netns.new(), cni_harness.container_id()
    agent.fake.mode, agent.fake.delay = mode, delay
    started = time.monotonic()
    rc, out, raw = add(plugin, agent, ns, cid, agent.config(timeoutSeconds=timeout))
    assert rc != 0 and out["code"] == code, raw
    assert time.monotonic() - started < timeout + 1
    assert (cid, "eth0") in agent.fake.detached
    assert_nothing_left(agent, cid)
    assert "eth0" not in subprocess.run(["ip", "-n", os.path.basename(ns), "link"],
                                        capture_output=True, text=True).stdout


@pytest.mark.kernel
def test_a_wiring_failure_while_the_program_attaches_leaves_nothing_behind(plugin, agent, netns):
    # The pod's addresses are set while its program is attached; a pod
    # namespace with IPv6 off refuses the IPv6 one. The ADD fails with the
    # wiring's code only after the (slow) attach ended, and undoes it too.
    ns, cid = netns.new(), cni_harness.container_id()
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "sysctl", "-q", "-w",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"], check=True)
    agent.fake.mode, agent.fake.delay = "slow", 1.0
    rc, out, raw = add(plugin, agent, ns, cid)
    assert rc != 0 and out["code"] == 102 and "fd00:10:244:1::" in out["details"], raw
    assert [p["containerID"] for p, _ in agent.fake.attached].count(cid) == 1
    assert (cid, "eth0") in agent.fake.detached
    assert_nothing_left(agent, cid)
    assert "eth0" not in subprocess.run(["ip", "-n", os.path.basename(ns), "link"],
                                        capture_output=True, text=True).stdout


@pytest.mark.kernel
def test_status_reports_readiness_and_free_addresses(plugin, agent, netns):
    rc, out, raw = command(plugin, agent, "STATUS", None, "")
    assert (rc, out) == (0, None), raw
    agent.fake.ready = cni_handler.Readiness(False, "backend starting")
    rc, out, raw = command(plugin, agent, "STATUS", None, "")
    assert rc != 0 and out["code"] == 50 and out["details"] == "backend starting", raw
    agent.fake.ready = cni_handler.Readiness(False, "programs lost", limited_connectivity=True)
    rc, out, raw = command(plugin, agent, "STATUS", None, "")
    assert rc != 0 and out["code"] == 51, raw
    agent.fake.ready = cni_handler.Readiness.READY
    # A /30 from the netconf: network, gateway, one pod, broadcast.
    tiny = agent.config(ipam={"ranges": [[{"subnet": "10.99.0.0/30"}]]})
    ns, cid = netns.new(), cni_harness.container_id()
    rc, result, raw = add(plugin, agent, ns, cid, tiny)
    assert rc == 0 and [ip["address"] for ip in result["ips"]] == ["10.99.0.2/32"], raw
    rc, out, raw = command(plugin, agent, "STATUS", None, "", tiny)
    assert rc != 0 and out["code"] == 50 and "10.99.0.0/30" in out["details"], raw
    ns2, cid2 = netns.new(), cni_harness.container_id()
    rc, out, raw = add(plugin, agent, ns2, cid2, tiny)
    assert rc != 0 and out["code"] == 101, raw
    assert_nothing_left(agent, cid2)
    command(plugin, agent, "DEL", ns, cid, tiny)
    rc, out, raw = command(plugin, agent, "STATUS", None, "", tiny)
    assert (rc, out) == (0, None), raw


@pytest.mark.kernel
def test_invalid_ranges_are_an_invalid_config(plugin, agent, netns):
    ns, cid = netns.new(), cni_harness.container_id()
    rc, out, raw = add(plugin, agent, ns, cid, agent.config(ipam={"ranges": [[{"subnet": "10.0.0.0/33"}]]}))
    assert rc != 0 and out["code"] == 7, raw
    assert_nothing_left(agent, cid)


@pytest.mark.kernel
def test_gc_removes_what_is_not_a_valid_attachment(plugin, agent, netns):
    keep, drop = cni_harness.container_id(), cni_harness.container_id()
    ns_keep, ns_drop = netns.new(), netns.new()
    rc, kept, raw = add(plugin, agent, ns_keep, keep)
    assert rc == 0, raw
    assert add(plugin, agent, ns_drop, drop)[0] == 0
    valid = [{"containerID": keep, "ifname": "eth0"}]
    rc, out, raw = run_plugin(plugin, "GC", agent.config(**{"cni.dev/valid-attachments": valid}),
                              CNI_PATH="/opt/cni/bin")
    assert (rc, out) == (0, None), raw
    assert_nothing_left(agent, drop)
    assert (drop, "eth0") in agent.fake.detached and (keep, "eth0") not in agent.fake.detached
    rc, out, raw = command(plugin, agent, "CHECK", ns_keep, keep, agent.config(prevResult=kept))
    assert (rc, out) == (0, None), raw
    command(plugin, agent, "DEL", ns_keep, keep)
    assert_nothing_left(agent, keep)
