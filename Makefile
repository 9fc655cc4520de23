# The two set-up commands of README.md. Python packages live in a virtual
# environment (scripts/install-deps.sh makes it); its bin goes first on PATH.
.PHONY: test install run
VENV ?= $(CURDIR)/.venv
export TAILOR_VENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

# Installs everything the suite needs, then runs it. Kernel tests need root;
# with CI=true they fail instead of skipping.
test:
	scripts/install-deps.sh --test
	$(VENV)/bin/python -P -m pytest -q

install:
	scripts/install-deps.sh

# The main job: each numbered example as a 2-node lab of network namespaces
# (real veths, real eBPF programs attached by the real CNI plugin and node
# agents), probed with real TCP/UDP connections and compared with the model;
# then taken down. Twice: with the lab's controller compiling and pushing,
# then as in a cluster — the objects in an API server, `tailor operator`
# compiling and pushing, `kubectl get pp -A` showing its PodPrograms.
# Without root the lab runs on the emulated backend.
EXAMPLES ?= $(wildcard examples/[0-9]*)
CONTROLS ?= lab operator
run: install
	@set -e; for ex in $(EXAMPLES); do for control in $(CONTROLS); do \
	  echo "== $$ex (control: $$control)"; \
	  tailor lab down --name demo >/dev/null 2>&1 || true; \
	  tailor lab up -f $$ex --nodes 2 --name demo --control $$control; \
	  tailor lab status --name demo; \
	  if [ $$control = operator ] && command -v kubectl >/dev/null; then \
	    kubectl --kubeconfig $$(tailor lab status --name demo --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["api"]["kubeconfig"])') get pp -A || true; \
	  fi; \
	  tailor lab probe --name demo --check || { tailor lab down --name demo; exit 1; }; \
	  tailor lab down --name demo; \
	done; done
