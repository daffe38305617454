"""MQTTS on the real MicroPython unix port to the real Mosquitto: pinned CA, client
certificate, per-device ACL; the outbox on a LittleFS2 image across a broker crash."""
import json
import os
import signal
import time

from mp_fixtures import mp_launch  # noqa: F401  (fixture)


def test_readings_are_delivered_and_received(mp_launch, broker, subscriber, pki):
    board = mp_launch("mp-mqtts", broker.port, config={"run.max_readings": 5})
    ok = board.wait_for("tls_ok", timeout=30)
    assert ok["verified"] is True and ok["root_sha256"] == pki.ca.sha256
    board.wait_for("halted", timeout=60, reason="done")
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(subscriber.readings("mp-mqtts")) < 5:
        time.sleep(0.1)
    sent = {e["seq"]: json.loads(e["payload"]) for e in board.of("published")}
    got = {r["seq"]: r for r in subscriber.readings("mp-mqtts")}
    assert got == sent
    assert board.errors() == []


class SessionSubscriber:
    """A subscriber with a persistent session (QoS 1): the broker queues for it while it is
    away, so nothing published during its reconnect is missed. Keeps each seq once."""

    def __init__(self, pki, port):
        import threading

        import paho.mqtt.client as mqtt

        from conftest import SUBSCRIBER
        self.seqs = {}
        self.deliveries = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER,
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(pki.subscriber.cert_pem),
                            keyfile=str(pki.subscriber.key_pem))
        self.client.reconnect_delay_set(1, 2)
        self.ready = threading.Event()
        self.connects = 0
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.connect("localhost", port)
        self.client.loop_start()
        assert self.ready.wait(10), "subscriber could not connect"
        # The broker saves sessions every second (autosave_interval 1): wait until this
        # subscription is on disk, or a SIGKILL before the first save forgets it.
        time.sleep(1.5)

    def _connected(self, client, userdata, flags, rc, properties):
        client.subscribe("devices/+/readings", qos=1)
        self.connects += 1
        self.ready.set()

    def wait_reconnected(self, connects, timeout_s=20):
        """Wait until the subscriber has connected more than ``connects`` times."""
        deadline = time.monotonic() + timeout_s
        while self.connects <= connects and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.connects > connects

    def _message(self, client, userdata, msg):
        reading = json.loads(msg.payload)
        with self._lock:
            self.deliveries += 1
            self.seqs.setdefault(reading["seq"], reading)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_broker_killed_and_restarted_mid_run_every_reading_arrives_once(mp_launch, pki):
    from conftest import SUBSCRIBER
    from host_sim.servers.mosquitto import Broker

    readings = 30
    broker = Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                    subscribers=[SUBSCRIBER], persistence=True).start()
    sub = SessionSubscriber(pki, broker.port)
    try:
        board = mp_launch("mp-broker-kill", broker.port, config={
            "run.max_readings": readings, "sample.interval_ms": 150,
            "timeouts_ms.io": 1500, "timeouts_ms.connect": 1500,
            "backoff.min_ms": 100, "backoff.max_ms": 600})
        for target, sig in ((8, signal.SIGKILL), (18, signal.SIGKILL)):
            deadline = time.monotonic() + 60
            while len(board.of("acked")) < target and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(board.of("acked")) >= target, "board stalled before the broker kill"
            # What the broker acknowledged so far has reached the subscriber: a kill now
            # tests the board's outbox, not the broker's own durability.
            while (set(e["seq"] for e in board.of("acked")) - set(sub.seqs)
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            connects = sub.connects
            broker.stop(sig)
            time.sleep(1.0)          # readings pile up in the outbox meanwhile
            broker.start()
            assert sub.wait_reconnected(connects), "the subscriber did not come back"
        board.wait_for("halted", timeout=90, reason="done")
        acked = [e["seq"] for e in board.of("acked")]
        assert sorted(acked) == list(range(1, readings + 1)) and len(set(acked)) == readings
        deadline = time.monotonic() + 15
        while len(sub.seqs) < readings and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = sorted(set(range(1, readings + 1)) - set(sub.seqs))
        assert not missing, "acked by the broker but never delivered: %s (subscriber " \
            "connected %d times); broker log tail:\n%s" % (
                missing, sub.connects, broker.log()[-3000:])
        sent = {e["seq"]: json.loads(e["payload"]) for e in board.of("published")}
        assert all(sub.seqs[s] == sent[s] for s in sub.seqs)
        assert len(board.of("mqtt_connected")) >= 3
        # Readings sampled while the broker was down waited in the outbox on LittleFS.
        assert max(e["depth"] for e in board.of("stored")) >= 3
    finally:
        sub.stop()
        broker.close()
