"""Provisioning end to end with simulated boards running the unmodified firmware: a board
with only WiFi credentials asks the base station, shows the comparison code, is approved
from the CLI, stores its credentials, publishes over MQTTS with them and confirms; denial,
silence, rogue base stations and rogue beacons leave it without credentials."""

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import Subscriber
from host_sim.servers.mosquitto import free_port
from host_sim.servers.tls_recorder import RecordingTlsServer
from provision_helpers import (cli, cli_list, provisioning_config,
                               start_base_station)


@pytest.fixture
def station(pki, pw_broker, tmp_path):
    bs = start_base_station(pki, pw_broker, tmp_path / "state")
    yield bs
    bs.stop()


def launch_fresh(launch, device_id, config):
    return launch(device_id, 1, config=config, clock="host")


def test_fresh_board_is_approved_by_cli_connects_with_its_credentials_and_confirms(
        pki, pw_broker, station, launch):
    sub = Subscriber(pki, pw_broker.port)
    try:
        board = launch_fresh(launch, "prov-1", provisioning_config(station.port))
        shown = board.wait_for("provision_code")
        listed = [r for r in cli_list(station.store.dir)["requests"]
                  if r["device_id"] == "prov-1"]
        assert [(r["id"], r["code"], r["status"], r["ip"]) for r in listed] == [
            (shown["request_id"], shown["code"], "pending", "127.0.0.1")]
        approved = cli(station.store.dir, "approve", "prov-1")
        assert approved.returncode == 0, approved.stderr
        board.wait_for("provisioned", user="prov-1")
        board.wait_for("mqtt_connected", timeout=30)
        board.wait_for("provision_confirmed")
        board.wait_for("acked", timeout=30)
        deadline = time.monotonic() + 10
        while not sub.readings("prov-1") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sub.readings("prov-1"), "no reading arrived with the issued credentials"
    finally:
        sub.stop()
    devices = {d["device_id"]: d["status"] for d in cli_list(station.store.dir)["devices"]}
    assert devices["prov-1"] == "confirmed"
    # Released once: the request is used up, and no event or log line carries the password.
    statuses = [r["status"] for r in cli_list(station.store.dir)["requests"]
                if r["device_id"] == "prov-1"]
    assert statuses == ["released"]
    stored = json.loads((board_flash(board) / "mqtt_credentials.json").read_text())
    assert stored["user"] == "prov-1" and stored["confirmed"] is True
    assert stored["password"] not in json.dumps(board.events)
    assert board.errors().count("provision_confirm") == 0


def board_flash(board):
    argv = board.proc.args
    return Path(argv[argv.index("--flash") + 1])


def test_denied_board_says_why_and_asks_again_later(pki, station, launch):
    board = launch_fresh(launch, "prov-deny", provisioning_config(station.port))
    first = board.wait_for("provision_code")
    assert cli(station.store.dir, "deny", str(first["request_id"])).returncode == 0
    board.wait_for("error", kind="provision_denied")
    board.wait_for("state", state="backoff", previous="provisioning")
    deadline = time.monotonic() + 20
    while len(board.of("provision_code")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    codes = board.of("provision_code")
    assert len(codes) >= 2 and codes[1]["request_id"] != first["request_id"]
    assert not board.of("provisioned") and not board.of("mqtt_connected")


def test_undecided_request_waits_within_bounds_then_asks_again(pki, station, launch):
    board = launch_fresh(launch, "prov-wait", provisioning_config(station.port, wait_s=2))
    first = board.wait_for("provision_code")
    timed_out = board.wait_for("error", kind="provision_timeout")
    assert timed_out["t_ms"] - first["t_ms"] < 4000
    deadline = time.monotonic() + 20
    while len(board.of("provision_code")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(board.of("provision_code")) >= 2
    # Its earlier request is replaced, not left pending beside the new one.
    pending = [r for r in cli_list(station.store.dir)["requests"]
               if r["device_id"] == "prov-wait" and r["status"] == "pending"]
    assert len(pending) == 1


def test_rogue_base_station_with_another_ca_receives_no_request_body(pki, launch):
    with RecordingTlsServer(pki.rogue.chain_pem, pki.rogue.key_pem) as rogue:
        board = launch_fresh(launch, "prov-rogue", provisioning_config(rogue.port))
        board.wait_for("error", kind="unknown_ca")
        time.sleep(0.5)
        assert rogue.received == b""
        assert not board.of("provision_code")


class RogueBeacon:
    """Answers discovery first: beacons naming our CA's fingerprint but its own server."""

    def __init__(self, target_port, ca_der):
        self.port = free_port()
        self.payload = json.dumps({"service": "securenode-base", "port": target_port,
                                   "ca_sha256": hashlib.sha256(ca_der).hexdigest()}).encode()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while not self._stop.is_set():
                udp.sendto(self.payload, ("127.0.0.1", self.port))
                self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)


def test_rogue_beacon_answerer_gets_nothing(pki, launch):
    with RecordingTlsServer(pki.rogue.chain_pem, pki.rogue.key_pem) as rogue, \
            RogueBeacon(rogue.port, pki.ca.cert_der.read_bytes()) as beacon:
        board = launch_fresh(launch, "prov-beacon-rogue",
                             provisioning_config(host=None, beacon_port=beacon.port))
        board.wait_for("provision_beacon", port=rogue.port)
        board.wait_for("error", kind="unknown_ca")
        time.sleep(0.5)
        assert rogue.received == b""
        assert not board.of("provision_code")


def test_board_finds_the_base_station_by_its_beacon_and_is_provisioned(
        pki, pw_broker, tmp_path, launch):
    beacon_port = free_port()
    bs = start_base_station(pki, pw_broker, tmp_path / "beacon-state",
                            beacon=("127.0.0.1", beacon_port))
    try:
        board = launch_fresh(launch, "prov-beacon",
                             provisioning_config(host=None, beacon_port=beacon_port))
        board.wait_for("provision_beacon", host="127.0.0.1", port=bs.port)
        board.wait_for("provision_code")
        assert cli(bs.store.dir, "approve", "prov-beacon").returncode == 0
        board.wait_for("mqtt_connected", timeout=30)
        board.wait_for("provision_confirmed")
    finally:
        bs.stop()


def write_air(path, link):
    path.write_text(json.dumps({"aps": {"simnet": {"key": "simkey", "up": True}}, "link": link}))


def test_revoked_board_is_refused_forgets_its_credentials_and_asks_again(
        pki, station, launch, tmp_path):
    air = tmp_path / "air.json"
    write_air(air, "up")
    board = launch("prov-revoke", 1, config=provisioning_config(station.port), clock="host",
                   air=air)
    board.wait_for("provision_code")
    assert cli(station.store.dir, "approve", "prov-revoke").returncode == 0
    board.wait_for("provision_confirmed", timeout=30)
    revoked = cli(station.store.dir, "revoke", "prov-revoke")
    assert revoked.returncode == 0, revoked.stderr
    # Drop the WiFi for a moment: the board must log in again, with the revoked password.
    write_air(air, "down")
    board.wait_for("state", state="backoff", previous="online")
    write_air(air, "up")
    board.wait_for("error", kind="connack_refused", timeout=30)
    board.wait_for("provision_forgotten")
    deadline = time.monotonic() + 20
    while len(board.of("provision_code")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(board.of("provision_code")) == 2
    assert not (board_flash(board) / "mqtt_credentials.json").exists()


def test_base_station_restarted_while_the_board_waits_keeps_its_request(
        pki, pw_broker, tmp_path, launch):
    state = tmp_path / "restart-state"
    bs = start_base_station(pki, pw_broker, state)
    port = bs.port
    board = launch_fresh(launch, "prov-restart", provisioning_config(port))
    shown = board.wait_for("provision_code")
    bs.stop()
    board.wait_for("error", kind="provision_poll")
    bs = start_base_station(pki, pw_broker, state, port=port)
    try:
        assert cli(state, "approve", str(shown["request_id"])).returncode == 0
        board.wait_for("provisioned", user="prov-restart")
        board.wait_for("provision_confirmed", timeout=30)
    finally:
        bs.stop()
    assert len(board.of("provision_code")) == 1
