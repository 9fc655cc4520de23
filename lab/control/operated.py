"""The lab's control plane with `--control operator`: an API server and
`tailor operator`, instead of the lab's own controller.

Called by lab.up, lab.status and tests. The steps:

    api       start the API server (lab/apiserver, kmock; objects in memory),
              create the lab's namespaces, nodes, policies and scheduled pods
              (objects.py), write <run_dir>/kubeconfig
    operator  start `tailor operator --kubeconfig <run_dir>/kubeconfig`; it
              lists the API, then serves ProgramSource on a unix socket
    agents    (lab.py) the agents ask that socket at CNI ADD
    pods      (lab.py) after each pod's ADD, report its addresses in its
              status, as a kubelet does (`report`)
    sync      until every PodProgram is Loaded with the hash its agent holds
              and the operator has nothing pending (`sync`)

Then `KUBECONFIG=<run_dir>/kubeconfig kubectl get pp -A` shows the
PodPrograms, and changes made through the API (kubectl, or a test's Client)
reach the agents through the operator.
"""
from __future__ import annotations

import os
import socket
import time
import urllib.request

from tailor.lab import agents, apiserver
from tailor.lab.control import objects
from tailor.lab import processes
from tailor.lab import state as state_

SYNC_SECONDS = 60.0
STABLE_ROUNDS = 3        # consecutive settled polls before sync returns
POLL_SECONDS = 0.2


class SyncError(Exception):
    """The operator did not bring every pod to Loaded in time; the message lists them."""


def plan(data: dict) -> None:
    """Where the API server writes its kubeconfig (it picks its own port and
    says it there) and the operator's metrics port (in the root namespace)."""
    data["api"] = {"port": 0, "metrics_port": _free_port(), "url": None,
                   "kubeconfig": os.path.join(data["run_dir"], "kubeconfig")}


def client(data: dict) -> apiserver.Client:
    return apiserver.Client(data["api"]["url"])


def start_api(data: dict, echo) -> None:
    processes.start(data, "apiserver", processes.apiserver_argv(data))
    data["api"]["url"] = _served_url(data, "apiserver", data["api"]["kubeconfig"])
    state_.save(data)
    _wait_http(data, "apiserver", data["api"]["url"] + "/version")
    api = client(data)
    made = 0
    for obj in objects.creation_order(data):
        meta = obj["metadata"]
        where = objects.path(obj["kind"], meta.get("namespace"))
        try:
            api.create(where, obj)
        except apiserver.ApiError as e:
            raise RuntimeError(f"creating {obj['kind']} {meta.get('namespace', '')}/{meta['name']}: {e}") from None
        made += 1
    echo(f"  API server {data['api']['url']}: {made} objects; "
         f"KUBECONFIG={data['api']['kubeconfig']} kubectl get pp -A")


def start_operator(data: dict, echo) -> None:
    processes.start(data, "operator", processes.operator_argv(data))
    processes.wait_socket(data, "operator", processes.source_socket(data))


def report(data: dict, pod: dict) -> None:
    """The kubelet's part after CNI ADD: the pod's addresses in its status."""
    client(data).patch(objects.path("Pod", pod["namespace"], pod["name"]) + "/status",
                       objects.pod_status(pod["addresses"]))


def podprograms(data: dict) -> dict[str, dict]:
    """{"ns/name": PodProgram} as the operator wrote them."""
    return {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o
            for o in client(data).items(objects.ALL_PODPROGRAMS)}


def metrics(data: dict) -> dict[str, float]:
    """The operator's /metrics samples, {name with labels: value}."""
    return read_metrics(data["api"]["metrics_port"])


def read_metrics(port: int) -> dict[str, float]:
    """Prometheus text from 127.0.0.1:`port`/metrics, {sample name with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def unsettled(data: dict, held: dict[str, str]) -> list[str]:
    """Why the lab is not settled yet: pods whose PodProgram is not Loaded
    with the hash their agent holds (`held`: {"ns/name": hash}), and the
    operator's pending or retrying pushes. Empty when settled."""
    found = podprograms(data)
    why = []
    for pod in data["pods"]:
        key = f"{pod['namespace']}/{pod['name']}"
        status = (found.get(key) or {}).get("status") or {}
        if not status:
            why.append(f"{key}: no PodProgram")
        elif status.get("state") != "Loaded":
            why.append(f"{key}: {status.get('state')} {status.get('message', '')}".rstrip())
        elif held.get(key) != status.get("hash"):
            why.append(f"{key}: agent holds {held.get(key)}, PodProgram says {status.get('hash')}")
    try:
        m = metrics(data)
    except OSError as e:            # (re)starting: its metrics are not served yet
        return why + [f"operator: metrics not answering ({e})"]
    for gauge in ("pending", "retrying"):
        if m.get(f"tailor_operator_{gauge}", 0):
            why.append(f"operator: {int(m[f'tailor_operator_{gauge}'])} {gauge}")
    if not m.get("tailor_operator_idle", 0) and not why:
        why.append("operator: pushing")
    return why


def events(data: dict) -> int:
    """How many watch events the operator has handled so far."""
    return int(metrics(data).get("tailor_operator_events_total", 0))


def _handled(data: dict) -> int:
    try:
        return events(data)
    except OSError:
        return -1                   # not answering yet: nothing handled


def sync(data: dict, held, timeout: float = SYNC_SECONDS, events_after: int | None = None,
         wanted: tuple | None = None) -> dict:
    """Until `unsettled` is empty STABLE_ROUNDS polls in a row (`held()`
    reads the agents) — and, with `events_after` (an `events()` count taken
    before a change through the API), once the operator has handled an event
    since; with `wanted` (agents.wanted), once the agents hold what the
    lab's own model compiles to (the operator may not have seen the last
    pod's addresses yet and still look idle). Returns the operator's counters."""
    deadline = time.monotonic() + timeout
    stable, why = 0, ["not polled"]
    while time.monotonic() < deadline:
        if not processes.alive(data["processes"].get("operator")):
            entry = data["processes"].get("operator")
            raise SyncError(f"the operator exited; its log ({entry['log']}) ends:\n"
                            f"{processes.log_tail(entry)}")
        if events_after is not None and _handled(data) <= events_after:
            why, stable = ["the operator has not seen the change yet"], 0
            time.sleep(POLL_SECONDS)
            continue
        why = unsettled(data, held()) or agents.tables_unsettled(data) \
            or (agents.unsettled(data, wanted) if wanted is not None else [])
        stable = 0 if why else stable + 1
        if stable >= STABLE_ROUNDS:
            m = metrics(data)
            return {k: int(m.get(f"tailor_operator_{k}_total", m.get(f"tailor_operator_{k}", 0)))
                    for k in ("applies", "map_updates", "group_updates", "handed", "compiled", "repairs",
                              "push_failures")}
        time.sleep(POLL_SECONDS)
    raise SyncError(f"not settled after {timeout:g}s: " + "; ".join(why[:10])
                    + (f" (+{len(why) - 10} more)" if len(why) > 10 else ""))


def _served_url(data: dict, key: str, kubeconfig: str) -> str:
    """The server URL from the kubeconfig the API server writes once it listens."""
    import yaml

    def read():
        try:
            with open(kubeconfig, encoding="utf-8") as f:
                return yaml.safe_load(f)["clusters"][0]["cluster"]["server"]
        except (OSError, TypeError, KeyError, IndexError, yaml.YAMLError):
            return None        # not written yet

    return processes.wait_until(data, key, read, f"wrote no kubeconfig at {kubeconfig}")


def _wait_http(data: dict, key: str, url: str) -> None:
    def get():
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return True
        except OSError:
            return None

    processes.wait_until(data, key, get, f"did not answer {url}", interval=0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

