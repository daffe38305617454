"""Shared fixtures: certificates, a real Mosquitto, SNTP, and simulated boards.

Servers bind 127.0.0.1 on free ports, start once per worker session where tests allow, and
always stop. Boards are real processes running the unmodified firmware (host_sim.board).
"""

import copy
import datetime
import json
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host_sim.fleet import BoardProcess, board_config  # noqa: E402
from host_sim.flash import board_command, prepare_flash  # noqa: E402
from host_sim.servers.mosquitto import Broker  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402
from tools import certs  # noqa: E402

SUBSCRIBER = "test-subscriber"


class Pki:
    """Every certificate the tests need, made once per worker session."""

    def __init__(self, directory):
        self.dir = directory
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca = certs.make_ca(directory)
        self.rogue_ca = certs.make_ca(directory, name="Rogue Root CA", stem="rogue")
        self.server = certs.make_server(directory)
        self.rsa_server = certs.make_server(directory, name="rsa-server", rsa=True)
        self.expired = certs.make_server(directory, name="expired",
                                         not_before=now - datetime.timedelta(days=400),
                                         not_after=now - datetime.timedelta(days=30))
        self.future = certs.make_server(directory, name="future",
                                        not_before=now + datetime.timedelta(days=30),
                                        not_after=now + datetime.timedelta(days=400))
        self.wrong_host = certs.make_server(directory, name="wrong-host",
                                            dns=["broker.elsewhere.example"])
        self.rogue = certs.make_server(directory, name="rogue-server", issuer="rogue")
        self.devices = {}
        self.subscriber = certs.make_device(directory, SUBSCRIBER)

    def device(self, device_id, rsa=False):
        key = (device_id, rsa)
        if key not in self.devices:
            self.devices[key] = certs.make_device(self.dir, device_id, rsa=rsa)
        return self.devices[key]


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def broker(pki):
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER]) as running:
        yield running


@pytest.fixture(scope="session")
def ntp():
    with NtpServer() as server:
        yield server


class Subscriber:
    def __init__(self, pki, port):
        self.messages = []
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id="%s-%d" % (SUBSCRIBER, id(self)),
                                  protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(pki.subscriber.cert_pem),
                            keyfile=str(pki.subscriber.key_pem))
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe("devices/+/readings", qos=1), self._ready.set())
        self.client.on_message = lambda c, u, msg: self.messages.append((msg.topic, msg.payload))
        self.client.connect("localhost", port)
        self.client.loop_start()
        assert self._ready.wait(10), "test subscriber could not connect to the broker"
        time.sleep(0.2)  # let the SUBACK land before boards publish

    def readings(self, device_id):
        return [json.loads(p) for t, p in self.messages if t == "devices/%s/readings" % device_id]

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber(pki, broker):
    sub = Subscriber(pki, broker.port)
    yield sub
    sub.stop()


class Board(BoardProcess):
    def wait_for(self, event, timeout=20, **fields):
        """Wait for an ``event`` whose fields match; return it or fail the test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for seen in list(self.events):
                if seen.get("event") == event and all(seen.get(k) == v for k, v in fields.items()):
                    return seen
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        pytest.fail("board %s: no %s %s within %ss; events:\n%s" % (
            self.device_id, event, fields or "", timeout,
            "\n".join(json.dumps(e) for e in self.events[-40:])))

    def errors(self):
        return [e["kind"] for e in self.of("error")]


@pytest.fixture
def launch(tmp_path, pki, ntp):
    """Start a simulated board: launch(device_id, port=broker_port, **config overrides)."""
    started = []

    def start(device_id, mqtt_port, config=None, files=None, rsa=False, **options):
        cfg = board_config(device_id, mqtt_port, readings=0, interval_ms=200)
        if options.get("port") == "esp8266":
            cfg["sample"]["adc_pin"] = 0  # its one ADC is channel 0 (the TOUT pin)
        for dotted, value in (config or {}).items():
            section, _, field = dotted.rpartition(".")
            target = cfg
            for part in filter(None, section.split(".")):
                target = target[part]
            target[field] = copy.deepcopy(value)
        device = pki.device(device_id, rsa=rsa)
        flash_files = {"ca.der": pki.ca.cert_der, "device.crt.der": device.cert_der,
                       "device.key.der": device.key_der}
        flash_files.update(files or {})
        flash = tmp_path / ("flash-%s-%d" % (device_id, len(started)))
        prepare_flash(flash, cfg, flash_files)
        options.setdefault("ntp", "127.0.0.1:%d" % ntp.address[1])
        options.setdefault("device_seed", device_id)
        proc = Board(device_id, board_command(flash, **options), verbose=False)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def pw_broker(pki):
    """A broker with the password listener that provisioned devices log in on."""
    from provision_helpers import password_broker

    with password_broker(pki) as running:
        yield running
