# SecureNode: every install step lives here, so a fresh Debian machine needs only `make`.
#   make sim    a simulated fleet end to end against a local Mosquitto over MQTTS
#   make test   the test suite (pytest, parallel) against real servers
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UMQTT := firmware/lib/umqtt/simple.py
WASM := tests/micropython_wasm/node_modules/.package-lock.json
SIM_BOARDS ?= 3
SIM_READINGS ?= 10

.PHONY: all deps sim test bench certs mosquitto clean

all: deps

deps: $(STAMP) $(UMQTT) $(WASM) mosquitto

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(UMQTT): $(STAMP) tools/vendor_umqtt.py
	$(PY) tools/vendor_umqtt.py

$(WASM): tests/micropython_wasm/package.json tests/micropython_wasm/package-lock.json
	npm ci --prefix tests/micropython_wasm --no-audit --no-fund --loglevel=error

# Debian's package; the broker is started by the tests and the sim, never as a service here.
mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }

# Idempotent: makes only what is missing (a CA is never replaced behind your back).
certs: $(STAMP)
	@[ -f certs/ca.der ] || $(PY) tools/certs.py init-ca
	@[ -f certs/server.pem ] || $(PY) tools/certs.py server --host 127.0.0.1 --dns localhost
	@for b in $$(seq 1 $(SIM_BOARDS)); do \
	  [ -f certs/board-$$b.crt.der ] || $(PY) tools/certs.py device board-$$b; done
	@[ -f certs/sim-subscriber.crt.pem ] || $(PY) tools/certs.py device sim-subscriber

sim: deps certs
	$(PY) -m host_sim.fleet --boards $(SIM_BOARDS) --readings $(SIM_READINGS)

test: deps
	$(PY) -m pytest

# Speed and size targets: each tests/bench/bench_*.py prints a table and writes it to
# tests/bench/results/ (committed), so a change in the numbers shows in review.
bench: deps
	@set -e; for b in tests/bench/bench_*.py; do $(PY) $$b; done

clean:
	rm -rf .sim .pytest_cache
