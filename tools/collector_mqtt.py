"""The collector's MQTT consumer: paho-mqtt, QoS 1, a persistent session, PUBACK after commit.

The broker binds the session to the certificate (``use_username_as_clientid``): whatever
client id is asked for, the session is the CN's, and no other certificate can resume or
wipe it. A message is acknowledged only once it is stored or kept as a reject; if the store
fails, the consumer stops, records why in ``failure`` and sets ``failed``, and the
collector process exits non-zero (a supervisor restarts it; the broker resends what was not
acknowledged).

    ingest = MqttIngest(store, "127.0.0.1", 8883, ca, cert, key).start()
    ingest.failed.wait()        # set only if the consumer died
"""

import ssl
import threading

from tools.collector_store import CollectorError, handle_message

TOPICS = [("devices/+/readings", 1), ("devices/+/status", 1)]


class MqttIngest:
    """paho-mqtt client run by its own loop thread, watched: it never dies silently."""

    def __init__(self, store, host, port, ca, cert, key, client_id="collector"):
        import paho.mqtt.client as mqtt
        self.store = store
        self.ready = threading.Event()      # connected and subscribed (SUBACK seen)
        self.failed = threading.Event()
        self.failure = None
        self.counts = {}
        self._stopping = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        try:
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        except (OSError, ssl.SSLError) as exc:
            raise CollectorError("cannot load the TLS files (--ca %s, --cert %s, --key %s): %s"
                                 % (ca, cert, key, getattr(exc, "strerror", None) or exc)) \
                from None
        self.client.reconnect_delay_set(0.1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_disconnect = lambda *a: self.ready.clear()
        self.client.on_message = self._on_message
        self.host, self.port = host, port
        self._thread = None

    def start(self, timeout_s=10):
        self.client.connect_async(self.host, self.port, keepalive=10)
        self._thread = threading.Thread(target=self._run, name="mqtt-consumer", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s):
            self.stop()
            raise CollectorError(self.failure or "could not connect to the broker at %s:%d"
                                 % (self.host, self.port))
        return self

    def _run(self):
        try:
            self.client.loop_forever(retry_first_connection=True)
        except BaseException as exc:  # noqa: BLE001 - reported, then the process exits
            self._fail("MQTT consumer stopped: %s: %s" % (type(exc).__name__, exc))
        else:
            if not self._stopping:
                self._fail("MQTT consumer stopped: its loop ended")

    def _fail(self, text):
        if self.failure is None:
            self.failure = text
        self.failed.set()

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason == 0:
            client.subscribe(TOPICS)

    def _on_message(self, client, userdata, msg):
        # handle_message keeps every bad message as a reject; what escapes is the store
        # failing. Then no PUBACK: stop the loop, the broker keeps the message for later.
        result = handle_message(self.store, "mqtt", msg.topic, msg.payload)
        self.counts[result] = self.counts.get(result, 0) + 1
        client.ack(msg.mid, msg.qos)

    def stop(self):
        self._stopping = True
        self.client.disconnect()
        if self._thread is not None:
            self._thread.join(10)
