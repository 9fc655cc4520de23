"""`tailor connectivity` and `tailor programs` on the numbered examples:
the JSON contracts, the three datapaths agreeing, and errors that name the
file and object."""
import json
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9]*"))


def tailor(*args, check=True):
    run = subprocess.run([shutil.which("tailor"), *args], capture_output=True, text=True)
    if check:
        assert run.returncode == 0, run.stderr
    return run


def connectivity(example, datapath):
    out = tailor("connectivity", "-f", str(example), "--datapath", datapath, "--format", "json")
    return json.loads(out.stdout)["connections"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_emulated_equals_model(example):
    model = connectivity(example, "model")
    assert model, "an example that allows nothing shows nothing"
    assert connectivity(example, "emulated") == model


@pytest.mark.kernel
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_kernel_equals_model(example):
    assert connectivity(example, "kernel") == connectivity(example, "model")


def test_connectivity_json_contract():
    conns = connectivity(ROOT / "examples/01-namespaces-and-ports", "model")
    for c in conns:
        assert set(c) == {"src", "dst", "protocol", "ports"}
        assert c["src"] != c["dst"] and c["protocol"] in ("TCP", "UDP", "SCTP")
    by_pair = {(c["src"], c["dst"], c["protocol"]): c["ports"] for c in conns}
    # x/a takes only TCP 80 from namespace y; nothing from x or z.
    assert by_pair[("y/b[Pod]", "x/a[Pod]", "TCP")] == "80"
    assert ("x/b[Pod]", "x/a[Pod]", "TCP") not in by_pair
    assert ("y/b[Pod]", "x/a[Pod]", "UDP") not in by_pair
    # z/c egress: TCP 8000-9000 anywhere, UDP to x/b's serve-81-udp, SCTP 80 into 10.0.0.0/16 minus 10.0.1.0/24.
    assert by_pair[("z/c[Pod]", "y/a[Pod]", "TCP")] == "8000-9000"
    assert by_pair[("z/c[Pod]", "x/b[Pod]", "UDP")] == "81"
    assert by_pair[("z/c[Pod]", "x/b[Pod]", "SCTP")] == "80"
    assert ("z/c[Pod]", "y/b[Pod]", "SCTP") not in by_pair
    assert by_pair[("x/b[Pod]", "y/c[Pod]", "TCP")] == "1-65535"


def test_programs_json_contract_and_disasm():
    out = json.loads(tailor("programs", "-f", str(ROOT / "examples/01-namespaces-and-ports"),
                            "--format", "json", "--generic").stdout)
    rows = {r["pod"]: r for r in out["programs"]}
    assert set(rows["x/b[Pod]"]["features"]) == {"ipv4", "anti-spoof", "redirect", "host-path"}
    assert {"ingress-policy", "conntrack", "selectors", "ports"} <= set(rows["x/a[Pod]"]["features"])
    assert rows["x/a[Pod]"]["maps"]["ids4"]["shared"] is True        # peers: the node's identity map
    assert len(rows["x/a[Pod]"]["groups"]) == 1 and rows["x/b[Pod]"]["groups"] == []
    assert rows["x/a[Pod]"]["maps"]["ct4"]["shared"] is True
    assert rows["x/b[Pod]"]["instructions"] < rows["x/a[Pod]"]["instructions"] < out["generic"]["instructions"]
    assert len(rows["x/a[Pod]"]["hash"]) == 16
    text = tailor("programs", "-f", str(ROOT / "examples/01-namespaces-and-ports"), "--disasm", "x/a").stdout
    assert "# NetworkPolicy x/a-from-y spec.ingress[0]" in text
    assert "r1 = ids4 ll" in text


def test_bad_manifest_names_file_object_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, endPort: 70}]}]
""")
    run = tailor("connectivity", "-f", str(bad), check=False)
    assert run.returncode == 2
    assert str(bad) in run.stderr and "NetworkPolicy x/broken" in run.stderr
    assert "spec.ingress[0].ports[0].endPort" in run.stderr
    run = tailor("programs", "-f", str(tmp_path / "missing.yaml"), check=False)
    assert run.returncode == 2 and "missing.yaml" in run.stderr
    run = tailor("programs", "-f", str(ROOT / "examples/01-namespaces-and-ports"), "--disasm", "x/zz",
                 check=False)
    assert run.returncode == 2 and "no such pod" in run.stderr


SERVICE_CASE = [ROOT / "tests/policy/cases/topology.yaml", ROOT / "tests/lab/policies.yaml",
                ROOT / "tests/lab/services.yaml"]


def services(datapath):
    args = [a for p in SERVICE_CASE for a in ("-f", str(p))]
    return json.loads(tailor("connectivity", *args, "--datapath", datapath, "--format", "json").stdout)["services"]


@pytest.mark.parametrize("datapath", ["emulated", pytest.param("kernel", marks=pytest.mark.kernel)])
def test_service_connectivity_through_the_programs_equals_the_model(datapath):
    model = services("model")
    # x/web's backend x/a takes TCP only from namespace y; y/isolated's denies all; y/nobody has none.
    assert {(c["src"], c["dst"], c["protocol"], c["ports"], c["backends"]) for c in model} == {
        (f"y/{p}[Pod]", "x/web[Service]", "TCP", "8000", "all") for p in "abc"}
    assert services(datapath) == model
