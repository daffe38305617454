"""The unmodified firmware on the real MicroPython unix port delivers readings end to end.

Real socket, real ssl on Mbed TLS, the flash a LittleFS2 image: what CI proves here is what
the interpreter a board runs does, not what CPython stand-ins do.
"""
import json
import secrets
import time

import pytest

from mp_fixtures import debug_lines, jsonl_server, mp_launch  # noqa: F401  (fixtures)


def test_jsonl_readings_reach_the_collector_listener(mp_launch, jsonl_server):
    board = mp_launch("mp-jsonl", 1, config={
        "transport": "jsonl", "jsonl": {"host": "localhost", "port": jsonl_server.port},
        "run.max_readings": 5})
    board.wait_for("halted", timeout=60, reason="done")
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5]
    got = jsonl_server.store.readings["mp-jsonl"]
    assert sorted(got) == [1, 2, 3, 4, 5]
    published = {e["seq"]: json.loads(e["payload"]) for e in board.of("published")}
    assert all(got[seq] == published[seq] for seq in got)
    assert board.proc.wait(10) == 0
    boot = [d for d in debug_lines(board.flash) if d["kind"] == "boot"][0]
    assert (boot["runtime"], boot["board"], boot["heap_bytes"]) == (
        "micropython", "esp32-spiram", 2 * 1024 * 1024)


@pytest.mark.parametrize("bytecode", ["py", "mpy"])
def test_wss_readings_reach_the_ingest_endpoint(mp_launch, pki, bytecode):
    from tools.ingest import IngestServer

    token = secrets.token_urlsafe(24)
    with IngestServer({"mp-wss": token}, pki.server.chain_pem, pki.server.key_pem) as ingest:
        board = mp_launch("mp-wss", 1, bytecode=bytecode, config={
            "transport": "wss", "wss": {"host": "localhost", "port": ingest.port,
                                        "token": token},
            "run.max_readings": 4})
        board.wait_for("halted", timeout=60, reason="done")
        assert [r["seq"] for r in ingest.readings["mp-wss"]] == [1, 2, 3, 4]
    assert board.proc.wait(10) == 0
    flash = [d for d in debug_lines(board.flash) if d["kind"] == "flash"][0]
    assert flash["bytecode"] == bytecode and (flash["compiled"] > 10) == (bytecode == "mpy")


def test_mqtt_over_wss_readings_reach_a_subscriber(mp_launch, pki):
    from conftest import SUBSCRIBER, Subscriber
    from host_sim.servers.mosquitto import Broker

    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER], websockets=True) as broker:
        sub = Subscriber(pki, broker.port)
        try:
            board = mp_launch("mp-mqtt-wss", broker.port, config={
                "transport": "mqtt_wss",
                "wss": {"host": "localhost", "port": broker.websockets_port},
                "run.max_readings": 4})
            board.wait_for("halted", timeout=60, reason="done")
            deadline = time.monotonic() + 10
            while len(sub.readings("mp-mqtt-wss")) < 4 and time.monotonic() < deadline:
                time.sleep(0.1)
            got = {r["seq"]: r for r in sub.readings("mp-mqtt-wss")}
        finally:
            sub.stop()
    sent = {e["seq"]: json.loads(e["payload"]) for e in board.of("published")}
    assert sorted(got) == [1, 2, 3, 4] and got == sent
    assert board.errors() == []


def test_provisioning_on_a_port_without_getpeercert_is_refused_and_said(mp_launch, pki,
                                                                        pw_broker, tmp_path):
    # This port's TLS socket has no getpeercert(), so the board cannot derive the comparison
    # code from the base station's certificate: it must say so and never ask blind.
    # (Provisioning end to end is proven on the CPython runtime: tests/test_provision_board.py.)
    from provision_helpers import cli_list, provisioning_config, start_base_station

    station = start_base_station(pki, pw_broker, tmp_path / "state")
    try:
        board = mp_launch("mp-prov", 1, config=provisioning_config(station.port))
        error = board.wait_for("error", timeout=30, kind="provision_protocol")
        board.wait_for("state", timeout=10, state="backoff", previous="provisioning")
        assert "cannot read the peer certificate" in error["detail"]
        assert not board.of("provision_code") and not board.of("provisioned")
        assert [r for r in cli_list(station.store.dir)["requests"]
                if r["device_id"] == "mp-prov"] == []
    finally:
        station.stop()
