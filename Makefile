# Mixhouse: `make demo` runs the main job on embedded defaults; `make test` runs every check.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: install demo demo-bitcoin demo-otc test lint typecheck unit bench bench-tools clean contracts

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	command -v apt-get >/dev/null || { echo "install Chromium at $(CHROMIUM) for the browser tests"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# promtool (Debian's prometheus package) checks deploy/prometheus/alerts.yml in the tests.
PROMTOOL := /usr/bin/promtool

$(PROMTOOL):
	command -v apt-get >/dev/null || { echo "install promtool at $(PROMTOOL) to check the alert rules"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus

# SoftHSM2 (Debian's softhsm2): the PKCS#11 token of the HSM signer's tests (tests/fixtures/softhsm.py).
SOFTHSM := /usr/lib/softhsm/libsofthsm2.so

$(SOFTHSM):
	command -v apt-get >/dev/null || { echo "install SoftHSM2 ($(SOFTHSM)) for the HSM signer tests"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends softhsm2

# wrk (Debian's package) generates the HTTP load of benchmarks/api.py; without it the benchmark
# falls back to a slower Python generator and says so.
WRK := /usr/bin/wrk

$(WRK):
	command -v apt-get >/dev/null || { echo "install wrk at $(WRK) for benchmarks/api.py"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

bench-tools: $(WRK)

install: $(STAMP) $(NODE_STAMP) $(CHROMIUM) $(PROMTOOL) $(SOFTHSM)

demo: $(STAMP)
	$(VENV)/bin/mixhouse demo

demo-bitcoin: install
	$(VENV)/bin/mixhouse demo --chain bitcoin

# Two grapes, three OTC nodes (embedded PostgreSQL each), crossing orders, books and fills;
# then a BTC/USDT trade settled by an atomic swap on bcoin regtest + anvil.
demo-otc: install
	$(VENV)/bin/mixhouse otc demo
	$(VENV)/bin/python -m mixhouse.otc.swaps.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check mixhouse tests benchmarks
	$(VENV)/bin/ruff format --check mixhouse tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest

test: lint typecheck unit

bench: install $(WRK)
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.privacy
	$(PY) -m benchmarks.privacy gate-cost
	$(PY) -m benchmarks.bitcoin_parse
	$(PY) -m benchmarks.bitcoin_payouts
	$(PY) -m benchmarks.wallets
	$(PY) -m benchmarks.wallets_node
	$(PY) -m benchmarks.scan
	$(PY) -m benchmarks.api
	$(PY) -m benchmarks.otc
	$(PY) -m benchmarks.otc_network
	$(PY) -m benchmarks.grenache

# The Solidity contracts (contracts/HTLC.sol, tests/data/contracts/TestTokens.sol and OzToken.sol,
# the latter importing npm @openzeppelin/contracts from node_modules) compiled offline
# by npm solc 0.8.28 into the ABI + bytecode JSON the package and the tests load; committed, and
# tests/test_htlc_evm.py checks they are what the sources compile to. contracts/TetherToken.sol
# (USDT's verified mainnet source, contracts/SOURCE.md) is compiled by npm solc-0.4 (solc 0.4.18,
# package.json); tests/test_token_adapter.py checks its artifact.
contracts: $(NODE_STAMP)
	node contracts/compile.js

clean:
	rm -rf $(VENV) node_modules .mixhouse .pytest_cache .mypy_cache
