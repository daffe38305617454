"""A board loads only what its configuration uses (issue 10), on real MicroPython.

Each transport runs a real board (host_sim.board --runtime micropython, .mpy on LittleFS)
to a clean stop; a main.py of the test's, on the flash in place of the firmware's, then
prints ``sorted(sys.modules)``. Every module a configuration does not use costs heap that a
board does not have: the validator (config), the provisioning client (provision,
https_client, provision_codec), the DER reader (x509_peek, loaded only to explain a TLS
failure) and every other transport's modules must be absent.
"""
import secrets

import pytest

from mp_fixtures import jsonl_server, mp_launch  # noqa: F401  (fixtures)

MODULES_MAIN = b"""# Test main.py: the firmware's boot, then the modules it left loaded.
import json
import sys

from securenode import app

app.main()
print(json.dumps({"event": "modules", "names": sorted(sys.modules)}))
"""

# Every configuration's core: the loop, outbox, sampling, TLS, events, crash containment.
# (wifi.py is loaded to join, ntp.py to sync the clock, then dropped.)
CORE = {"securenode", "securenode.app", "securenode.clock",
        "securenode.crash", "securenode.events", "securenode.link_error", "securenode.links",
        "securenode.mains", "securenode.net", "securenode.outbox", "securenode.pinned_tls",
        "securenode.reading", "securenode.sensor", "securenode.settings", "securenode.states",
        "securenode.watchdog"}
TRANSPORT = {
    "mqtts": {"securenode.mqtt_link", "securenode.mqtt_codec"},
    "jsonl": {"securenode.jsonl_link"},
    # The ingest endpoint may send commands: only a wss board loads their handler.
    "wss": {"securenode.wss_link", "securenode.wss_client", "securenode.ws_frame",
            "securenode.commands"},
    "mqtt_wss": {"securenode.mqtt_wss_link", "securenode.mqtt_link", "securenode.mqtt_codec",
                 "securenode.wss_client", "securenode.ws_frame"},
}
NEVER_AFTER_BOOT = {"securenode.config", "securenode.provision", "securenode.https_client",
                    "securenode.provision_codec", "securenode.credentials",
                    "securenode.startup", "securenode.ntp", "securenode.x509_peek",
                    "securenode.tls_explain", "securenode.wifi", "umqtt",
                    "umqtt.simple",
                    # Loaded only to say an MQTT error, to send a CONNECT, to open the outbox,
                    # for several pinned roots or a failed handshake; then dropped.
                    "securenode.mqtt_errors", "securenode.mqtt_connect",
                    "securenode.outbox_open", "securenode.tls_roots",
                    # The WebSocket upgrade: loaded while connecting, dropped after.
                    "securenode.ws_upgrade"}


def firmware_modules(board):
    board.wait_for("halted", timeout=60, reason="done")
    names = board.wait_for("modules", timeout=20)["names"]
    return {n for n in names if n.startswith(("securenode", "umqtt"))}


def check(loaded, transport):
    assert not loaded & NEVER_AFTER_BOOT, "loaded but unused: %s" % (loaded & NEVER_AFTER_BOOT)
    assert loaded == CORE | TRANSPORT[transport], (
        "unexpected: %s; missing: %s" % (sorted(loaded - CORE - TRANSPORT[transport]),
                                         sorted((CORE | TRANSPORT[transport]) - loaded)))


def test_mqtts_board_loads_only_the_mqtt_link(mp_launch, broker):
    board = mp_launch("mem-mqtts", broker.port, config={"run.max_readings": 2},
                      files={"main.py": MODULES_MAIN}, bytecode="mpy")
    check(firmware_modules(board), "mqtts")


def test_jsonl_board_loads_only_the_jsonl_link(mp_launch, jsonl_server):
    board = mp_launch("mem-jsonl", 1, config={
        "transport": "jsonl", "jsonl": {"host": "localhost", "port": jsonl_server.port},
        "run.max_readings": 2}, files={"main.py": MODULES_MAIN}, bytecode="mpy")
    check(firmware_modules(board), "jsonl")


def test_wss_board_loads_only_the_websocket_link(mp_launch, pki):
    from tools.ingest import IngestServer

    token = secrets.token_urlsafe(24)
    with IngestServer({"mem-wss": token}, pki.server.chain_pem, pki.server.key_pem) as ingest:
        board = mp_launch("mem-wss", 1, config={
            "transport": "wss", "wss": {"host": "localhost", "port": ingest.port,
                                        "token": token},
            "run.max_readings": 2}, files={"main.py": MODULES_MAIN}, bytecode="mpy")
        check(firmware_modules(board), "wss")
