"""MQTT over wss: boards running umqtt.simple on the firmware's WebSocket stream against
Mosquitto's `protocol websockets` listener (TLS, client certificates, the same ACL), bound
to 127.0.0.1 only."""

import json
import subprocess
import time

import pytest

from conftest import SUBSCRIBER, Subscriber
from host_sim.servers.mosquitto import Broker


@pytest.fixture(scope="module")
def ws_broker(pki):
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER], websockets=True) as running:
        yield running


@pytest.fixture
def ws_subscriber(pki, ws_broker):
    sub = Subscriber(pki, ws_broker.port)
    yield sub
    sub.stop()


def mqtt_wss(broker, **extra):
    cfg = {"transport": "mqtt_wss", "wss": {"host": "localhost", "port": broker.websockets_port}}
    cfg.update(extra)
    return cfg


def wait_readings(subscriber, device_id, count, timeout=5):
    deadline = time.monotonic() + timeout
    while len(subscriber.readings(device_id)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return subscriber.readings(device_id)


def test_websockets_listener_binds_only_loopback(ws_broker):
    # Every listening socket of this Mosquitto process (ss -p names the owner): without
    # `socket_domain ipv4` the websockets one shows up as "*:port" (all interfaces, v4+v6).
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    owner = "pid=%d," % ws_broker.proc.pid
    ours = sorted(line.split()[3] for line in out.splitlines() if owner in line)
    assert ours == sorted(["127.0.0.1:%d" % ws_broker.port,
                           "127.0.0.1:%d" % ws_broker.websockets_port]), ours
    assert "Opening websockets listen socket on port %d" % ws_broker.websockets_port \
        in ws_broker.log()


def test_readings_over_mqtt_over_wss_arrive_exactly_as_sent(launch, ws_broker, ws_subscriber):
    board = launch("board-mw1", 1, config=mqtt_wss(ws_broker, **{"run.max_readings": 4}))
    board.wait_for("halted", timeout=60, reason="done")
    connected = board.wait_for("wss_connected")
    assert connected["subprotocol"] == "mqtt" and connected["path"] == "/mqtt"
    sent = {e["seq"]: json.loads(e["payload"]) for e in board.of("published")}
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4]
    got = {r["seq"]: r for r in wait_readings(ws_subscriber, "board-mw1", 4)}
    assert got == sent
    assert "as board-mw1 (p2, c1, k60, u'board-mw1')" in ws_broker.log()
    assert board.errors() == []


def test_keepalive_pings_flow_over_the_websocket(launch, ws_broker, ws_subscriber):
    # keepalive 1 s, a reading every 1.6 s: PINGREQ goes out between readings and the
    # PINGRESP must be read (non-blocking) for the dead-link check not to fire.
    board = launch("board-mw2", 1, config=mqtt_wss(ws_broker, **{
        "mqtt.keepalive_s": 1, "sample.interval_ms": 1600, "run.max_readings": 3}))
    board.wait_for("halted", timeout=60, reason="done")
    assert board.errors() == []
    assert len(wait_readings(ws_subscriber, "board-mw2", 3)) == 3


def test_another_devices_topic_is_refused_by_the_acl_over_wss(launch, ws_broker, pki,
                                                              ws_subscriber):
    thief = pki.device("board-mwthief")
    board = launch("board-mwvictim", 1, config=mqtt_wss(ws_broker, **{"run.max_readings": 2}),
                   files={"device.crt.der": thief.cert_der, "device.key.der": thief.key_der})
    # MQTT 3.1.1 cannot refuse a publish: Mosquitto acknowledges it and drops it.
    board.wait_for("halted", timeout=30, reason="done")
    honest = launch("board-mwhonest", 1, config=mqtt_wss(ws_broker, **{"run.max_readings": 1}))
    honest.wait_for("halted", timeout=30, reason="done")
    assert wait_readings(ws_subscriber, "board-mwhonest", 1), "control reading did not arrive"
    assert ws_subscriber.readings("board-mwvictim") == []
    # The broker binds the client id to the certificate (use_username_as_clientid).
    assert "as board-mwthief (p2, c1, k60, u'board-mwthief')" in ws_broker.log()


def test_a_broker_silent_after_the_upgrade_is_a_named_connack_timeout(launch, pki):
    # The WebSocket read times out inside wss_client; the MQTT session must still say what
    # it waited for (CONNACK), as on MQTTS, not a bare WebSocket timeout.
    from test_wss_client import HostileServer

    with HostileServer(pki.server.chain_pem, pki.server.key_pem,
                       "silent_after_upgrade") as server:
        board = launch("board-mw-silent", 1, config={
            "transport": "mqtt_wss", "wss": {"host": "localhost", "port": server.port},
            "timeouts_ms.io": 800})
        error = board.wait_for("error", timeout=30)
    assert error["kind"] == "connack_timeout", error
    assert "CONNACK" in error["detail"]
