# The two set-up commands of README.md.
.PHONY: test install run

# Installs everything the suite needs, then runs it. Kernel tests need root;
# with CI=true they fail instead of skipping.
test:
	scripts/install-deps.sh --test
	python3 -m pytest -q

install:
	scripts/install-deps.sh

# The main job until the lab exists: the examples, three datapaths, compared.
run: install
	@for ex in examples/[0-9]*/; do \
	  echo "== $$ex"; \
	  tailor programs -f $$ex; \
	  for dp in model emulated kernel; do \
	    tailor connectivity -f $$ex --datapath $$dp --format json > /tmp/tailor-$$dp.json || exit 1; \
	  done; \
	  cmp -s /tmp/tailor-model.json /tmp/tailor-emulated.json && cmp -s /tmp/tailor-model.json /tmp/tailor-kernel.json \
	    && echo "model, emulated and kernel agree: $$(grep -c '"src"' /tmp/tailor-model.json) allowed connections" \
	    || { echo "datapaths disagree on $$ex"; exit 1; }; \
	done
