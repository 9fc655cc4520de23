# The two set-up commands of README.md.
.PHONY: test install

# Installs everything the suite needs, then runs it. Kernel tests need root;
# with CI=true they fail instead of skipping.
test:
	scripts/install-deps.sh --test
	python3 -m pytest -q

install:
	scripts/install-deps.sh
