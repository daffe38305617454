"""A simulated board, the unmodified firmware, and real peers: Mosquitto and rogue TLS servers.

Each test is a specification of what a board does on the wire, read from its events and
from what the peers recorded.
"""

import json
import time

import pytest

from host_sim.servers.mosquitto import Broker, free_port
from host_sim.servers.ntp import NtpServer
from host_sim.servers.tls_recorder import RecordingTlsServer

FAST = {"timeouts_ms.io": 1500, "timeouts_ms.handshake": 3000, "timeouts_ms.connect": 2000,
        "backoff.min_ms": 100, "backoff.max_ms": 400}


def test_every_reading_arrives_exactly_as_sent(launch, broker, subscriber):
    board = launch("board-e2e", broker.port, config={"run.max_readings": 5})
    board.wait_for("halted", timeout=60, reason="done")
    sent = {e["seq"]: e["payload"] for e in board.of("published")}
    acked = [e["seq"] for e in board.of("acked")]
    assert acked == [1, 2, 3, 4, 5]
    deadline = time.monotonic() + 5
    while len(subscriber.readings("board-e2e")) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    received = {json.loads(p)["seq"]: p.decode() for t, p in subscriber.messages
                if t == "devices/board-e2e/readings"}
    assert received == sent
    for reading in map(json.loads, sent.values()):
        assert set(reading) == {"id", "seq", "timestamp", "status", "voltage", "freq"}
        assert reading["id"] == "board-e2e"
        # Within 1% of the simulated mains; a window the host's scheduler kept interrupting
        # is flagged (status 0x10, as a board does after GC/WiFi stalls) and only roughly right.
        tolerance = 0.10 if reading["status"] & 0x10 else 0.01
        assert abs(reading["voltage"] - 230.0) <= 230.0 * tolerance
        assert abs(reading["freq"] - 50.0) <= 50.0 * tolerance
        assert reading["timestamp"] > 1_700_000_000  # NTP set the clock before TLS


def test_board_reports_the_pinned_root_it_verified_against(launch, broker, pki):
    board = launch("board-pin", broker.port, config={"run.max_readings": 1})
    ok = board.wait_for("tls_ok", timeout=30)
    assert ok["verified"] is True
    assert ok["root_sha256"] == pki.ca.sha256
    board.wait_for("halted", timeout=30, reason="done")


def test_rogue_ca_never_sees_connect(launch, pki):
    with RecordingTlsServer(pki.rogue.chain_pem, pki.rogue.key_pem) as rogue:
        board = launch("board-rogue", rogue.port, config=FAST)
        error = board.wait_for("error", timeout=30, kind="unknown_ca")
        assert "127.0.0.1" in error["detail"] or "localhost" in error["detail"]
        assert pki.ca.sha256 in error["detail"]
        board.wait_for("backoff", timeout=10)
        board.stop()
        assert rogue.received == b"", "the rogue server received application data"
        assert not board.of("mqtt_connected")


@pytest.mark.parametrize("error_form", ["oserror", "valueerror"])
@pytest.mark.parametrize("server, kind", [
    ("wrong_host", "hostname_mismatch"),
    ("expired", "cert_expired"),
    ("future", "cert_not_yet_valid"),
    ("rogue", "unknown_ca"),
])
def test_each_certificate_failure_has_its_own_error(launch, pki, server, kind, error_form):
    # Older MicroPython reports every verify failure as OSError(-9984) and the firmware has
    # to find the reason itself; newer firmware raises ValueError with mbedTLS's reason.
    issued = getattr(pki, server)
    with RecordingTlsServer(issued.chain_pem, issued.key_pem) as peer:
        board = launch("board-" + server.replace("_", "-"), peer.port, config=FAST,
                       tls_verify_error=error_form)
        board.wait_for("error", timeout=30, kind=kind)
        board.stop()
        assert peer.received == b""
        assert set(board.errors()) <= {kind}


def test_unset_clock_fails_like_a_board_then_succeeds_after_ntp(launch, broker):
    ntp_port = free_port()  # nothing answers here yet
    board = launch("board-clock", broker.port, ntp="127.0.0.1:%d" % ntp_port,
                   config=dict(FAST, **{"ntp.timeout_ms": 1000, "run.max_readings": 1}))
    board.wait_for("error", timeout=30, kind="time_sync")
    error = board.wait_for("error", timeout=30, kind="clock_unset")
    assert "sync NTP" in error["detail"]
    assert not board.of("mqtt_connected")
    with NtpServer(port=ntp_port):
        board.wait_for("time_synced", timeout=30)
        board.wait_for("mqtt_connected", timeout=30)
        board.wait_for("halted", timeout=30, reason="done")


def test_silent_broker_gives_connack_timeout_within_deadline(launch, pki):
    with RecordingTlsServer(pki.server.chain_pem, pki.server.key_pem) as silent:
        board = launch("board-silent", silent.port, config=FAST)
        started = board.wait_for("state", timeout=30, state="connecting")
        error = board.wait_for("error", timeout=30, kind="connack_timeout")
        elapsed_ms = error["t_ms"] - started["t_ms"]
        assert elapsed_ms < 1500 + 3000 + 2000, "connect+handshake+io deadlines exceeded"
        assert silent.received[:1] == b"\x10", "the board should have sent CONNECT"


def test_server_that_never_finishes_the_handshake_times_out(launch, pki):
    with RecordingTlsServer(pki.server.chain_pem, pki.server.key_pem, speak_tls=False) as mute:
        board = launch("board-mute", mute.port, config=FAST)
        board.wait_for("error", timeout=30, kind="handshake_timeout")


def test_esp8266_without_allow_unverified_refuses_to_connect(launch, pki):
    with RecordingTlsServer(pki.rsa_server.chain_pem, pki.rsa_server.key_pem) as peer:
        board = launch("board-8266", peer.port, rsa=True, port="esp8266",
                       config=dict(FAST, **{"sample.adc_pin": 0}))
        board.wait_for("error", timeout=30, kind="unverifiable_port")
        board.wait_for("halted", timeout=10, reason="unverifiable_port")
        assert peer.connections == 0


@pytest.fixture(scope="module")
def rsa_broker(pki):
    # axTLS (ESP8266) has no ECDHE and no ECDSA: it needs an RSA server certificate.
    with Broker(pki.ca.cert_pem, pki.rsa_server.chain_pem, pki.rsa_server.key_pem,
                subscribers=["test-subscriber"]) as running:
        yield running


def test_esp8266_with_allow_unverified_says_so_on_every_connection(launch, rsa_broker):
    board = launch("board-8266-ok", rsa_broker.port, rsa=True, port="esp8266",
                   config={"tls.allow_unverified": True, "run.max_readings": 2,
                           "sample.adc_pin": 0})
    ok = board.wait_for("tls_ok", timeout=30)
    assert ok["verified"] is False and ok["root_sha256"] is None
    board.wait_for("halted", timeout=30, reason="done")


def test_board_whose_certificate_names_another_device_is_refused_by_the_acl(
        launch, broker, pki, subscriber):
    thief = pki.device("board-thief")
    board = launch("board-victim", broker.port, config={"run.max_readings": 2},
                   files={"device.crt.der": thief.cert_der, "device.key.der": thief.key_der})
    # MQTT 3.1.1 cannot refuse a publish: Mosquitto acknowledges it and drops it.
    board.wait_for("halted", timeout=30, reason="done")
    honest = launch("board-honest", broker.port, config={"run.max_readings": 1})
    honest.wait_for("halted", timeout=30, reason="done")
    deadline = time.monotonic() + 3
    while not subscriber.readings("board-honest") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscriber.readings("board-honest"), "control reading did not arrive"
    assert subscriber.readings("board-victim") == []
    # The broker binds the client id to the certificate (use_username_as_clientid).
    assert "as board-thief (p2, c1, k60, u'board-thief')" in broker.log()


def test_second_pinned_root_is_tried_when_the_port_takes_one_root_at_a_time(launch, broker, pki):
    # MicroPython before 1.29 takes one certificate in cadata: the rogue root (first) fails,
    # the real root (second) is tried next on a fresh connection.
    board = launch("board-tworoots", broker.port, mpy="1.24",
                   config={"tls.ca": ["rogue.der", "ca.der"], "run.max_readings": 1},
                   files={"rogue.der": pki.rogue_ca.cert_der})
    ok = board.wait_for("tls_ok", timeout=30)
    assert ok["root_sha256"] == "%s,%s" % (pki.rogue_ca.sha256, pki.ca.sha256)
    board.wait_for("halted", timeout=30, reason="done")
    assert board.errors() == []


def test_several_pinned_roots_load_at_once_on_micropython_1_29(launch, broker, pki):
    board = launch("board-bundle", broker.port, mpy="1.29",
                   config={"tls.ca": ["rogue.der", "ca.der"], "run.max_readings": 1},
                   files={"rogue.der": pki.rogue_ca.cert_der})
    board.wait_for("halted", timeout=30, reason="done")
    assert board.errors() == []


def test_invalid_config_field_is_named_and_the_board_halts(launch, broker):
    board = launch("board-badcfg", broker.port, config={"mqtt.port": "88x3"})
    error = board.wait_for("error", timeout=20, kind="config")
    assert error["detail"] == 'config.json: mqtt.port must be an integer 1..65535, got "88x3"'
    board.wait_for("halted", timeout=10, reason="config")


@pytest.mark.parametrize("wifi, kind", [
    ({"wifi.key": "not-the-key"}, "wifi_wrong_key"),
    ({"wifi.ssid": "nosuchnet"}, "wifi_no_ap"),
])
def test_wifi_failures_are_named_and_retried(launch, broker, wifi, kind):
    board = launch("board-wifi", broker.port, config=dict(FAST, **wifi))
    error = board.wait_for("error", timeout=30, kind=kind)
    assert "not-the-key" not in error["detail"], "the WiFi key leaked into an event"
    board.wait_for("backoff", timeout=10)
    board.wait_for("state", timeout=10, state="joining", previous="backoff")
