"""wss, MQTT over wss, jsonl and provisioning within an ESP32's heap, from `.mpy`, on real
MicroPython (issue 10; the smallest heaps are bisected by tests/bench/bench_memory_wss.py).

Real boards (host_sim.board --runtime micropython, `.mpy` on a LittleFS flash, the `esp32`
profile: a 112K GC heap, the launcher's stand-in allowance on top) against real peers:
the ingest endpoint (wss), the collector's JSON-lines listener, the base station.
Bisected on 2026-11-26 (tree at 12e57f7): wss 94 KB, MQTT over wss 107 KB, jsonl 78 KB,
provisioning to its refusal 88 KB; 112K leaves at least the 2-4 KB a run needs not to depend
on how the heap happens to fragment (MQTT over wss has the least: 5 KB; at 109 KB, bisected
at 5e2c2d0, it failed 1 run in 4 at 112K, loading the upgrade code at connect).
"""
import json
import secrets
import time

from mp_fixtures import jsonl_server, mp_launch  # noqa: F401  (fixtures)

# The firmware's boot, then whether the WebSocket upgrade left the heap after connecting:
# dropped from sys.modules *and* from its package (MicroPython keeps a submodule alive as an
# attribute of the package, so popping sys.modules alone frees nothing).
UPGRADE_GONE_MAIN = b"""import json
import sys

import securenode
from securenode import app

app.main()
print(json.dumps({"event": "upgrade_module", "in_sys_modules": "securenode.ws_upgrade" in
                  sys.modules, "on_package": hasattr(securenode, "ws_upgrade")}))
"""


def test_wss_readings_arrive_from_mpy_at_the_esp32_heap(mp_launch, pki):
    from tools.ingest import IngestServer

    token = secrets.token_urlsafe(24)
    with IngestServer({"mp-wss-112": token}, pki.server.chain_pem,
                      pki.server.key_pem) as ingest:
        board = mp_launch("mp-wss-112", 1, board="esp32", bytecode="mpy",
                          files={"main.py": UPGRADE_GONE_MAIN}, config={
                              "transport": "wss", "wss": {"host": "localhost",
                                                          "port": ingest.port, "token": token},
                              "run.max_readings": 4})
        board.wait_for("halted", timeout=90, reason="done")
        assert [r["seq"] for r in ingest.readings["mp-wss-112"]] == [1, 2, 3, 4]
    gone = board.wait_for("upgrade_module", timeout=10)
    assert (gone["in_sys_modules"], gone["on_package"]) == (False, False)
    assert board.errors() == [] and not board.of("fatal")


def test_jsonl_readings_arrive_from_mpy_at_the_esp32_heap(mp_launch, jsonl_server):
    board = mp_launch("mp-jsonl-112", 1, board="esp32", bytecode="mpy", config={
        "transport": "jsonl", "jsonl": {"host": "localhost", "port": jsonl_server.port},
        "run.max_readings": 4})
    board.wait_for("halted", timeout=90, reason="done")
    assert sorted(jsonl_server.store.readings["mp-jsonl-112"]) == [1, 2, 3, 4]
    assert board.errors() == [] and not board.of("fatal")


def test_provisioning_reaches_its_refusal_from_mpy_at_the_esp32_heap(mp_launch, pki, pw_broker,
                                                                      tmp_path):
    # This port has no getpeercert() (its Mbed TLS keeps no peer certificate), so the board
    # stops before its first request; everything up to there must fit: boot, the
    # provisioning client and HTTP codec from .mpy, the pinned TLS handshake with the base
    # station, and the named refusal, with no MemoryError on the way.
    from provision_helpers import cli_list, provisioning_config, start_base_station

    station = start_base_station(pki, pw_broker, tmp_path / "state")
    try:
        board = mp_launch("mp-prov-112", 1, board="esp32", bytecode="mpy",
                          config=provisioning_config(station.port))
        error = board.wait_for("error", timeout=90, kind="provision_protocol")
        board.wait_for("state", timeout=10, state="backoff", previous="provisioning")
        assert "cannot read the peer certificate" in error["detail"]
        assert not board.of("fatal")
        assert not [e for e in board.of("error") if "memory" in json.dumps(e)]
        assert not board.of("provision_code") and not board.of("provisioned")
        assert [r for r in cli_list(station.store.dir)["requests"]
                if r["device_id"] == "mp-prov-112"] == []
    finally:
        station.stop()



def test_mqtt_over_wss_readings_arrive_from_mpy_at_the_esp32_heap(mp_launch, pki):
    # Every reading reaches a subscriber through Mosquitto's websockets listener, and the
    # board never ran out of heap (a MemoryError is a fatal and a reset, readings survive it).
    from conftest import SUBSCRIBER, Subscriber
    from host_sim.servers.mosquitto import Broker

    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER], websockets=True) as broker:
        sub = Subscriber(pki, broker.port)
        try:
            board = mp_launch("mp-mqttwss-112", broker.port, board="esp32", bytecode="mpy",
                              config={"transport": "mqtt_wss",
                                      "wss": {"host": "localhost",
                                              "port": broker.websockets_port},
                                      "run.max_readings": 4})
            board.wait_for("halted", timeout=90, reason="done")
            deadline = time.monotonic() + 10
            while len(sub.readings("mp-mqttwss-112")) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            got = sorted(r["seq"] for r in sub.readings("mp-mqttwss-112"))
        finally:
            sub.stop()
    assert got == [1, 2, 3, 4]
    assert board.errors() == [] and not board.of("fatal")
