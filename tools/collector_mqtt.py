"""The collector's MQTT consumer: paho-mqtt, QoS 1, a persistent session, PUBACK after commit.

The broker binds the session to the certificate (``use_username_as_clientid``): whatever
client id is asked for, the session is the CN's, and no other certificate can resume or
wipe it. paho's network thread only reads and queues messages; a writer thread takes up to
``batch_max`` of them at a time (whatever arrived while the previous commit ran, or more
if ``batch_wait_ms`` lets it linger), stores them in one transaction, and only then
acknowledges each one (manual_ack). A poison message becomes a reject on its own without
losing the rest of its batch (tools/collector_store.handle_batch). If the store fails, the
consumer acknowledges nothing more, records why in ``failure`` and sets ``failed``, and
the collector process exits non-zero (a supervisor restarts it; the broker resends what
was not acknowledged).

With ``topic_group`` several collectors share ``$share/<group>/devices/+/...``: the broker
hands each message to one of them, and an unacknowledged message of a collector that dies
goes to another.

    ingest = MqttIngest(store, "127.0.0.1", 8883, ca, cert, key).start()
    ingest.failed.wait()        # set only if the consumer died
"""

import queue
import ssl
import threading
import time

from tools.collector_store import CollectorError, handle_batch

TOPICS = ["devices/+/readings", "devices/+/status"]


def topics(group=None):
    """The subscription list, shared by a group of collectors if group is given.

    >>> topics("ingest")[0]
    ('$share/ingest/devices/+/readings', 1)
    """
    prefix = "$share/%s/" % group if group else ""
    return [(prefix + topic, 1) for topic in TOPICS]


class MqttIngest:
    """paho-mqtt client and a batching writer thread, watched: neither dies silently."""

    def __init__(self, store, host, port, ca, cert, key, client_id="collector",
                 batch_max=500, batch_wait_ms=0, group=None):
        import paho.mqtt.client as mqtt
        self.store = store
        self.ready = threading.Event()      # connected and subscribed (SUBACK seen)
        self.failed = threading.Event()
        self.failure = None
        self.counts = {}
        self.batches = 0
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.topics = topics(group)
        self._stopping = False
        # Bounded: when the writer falls behind, paho's thread stops reading and TCP
        # pushes back on the broker (which holds unacknowledged messages anyway).
        self._queue = queue.Queue(maxsize=max(4 * batch_max, 1000))
        # Bumped on every CONNACK: a packet id belongs to one connection, so a message
        # read before a reconnect is stored but not acknowledged on the new connection
        # (the broker resends it there, and the store absorbs the repeat).
        self._connection = 0
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
        self._writer = None

    def start(self, timeout_s=10):
        self.client.connect_async(self.host, self.port, keepalive=10)
        # loop_start: paho's own network thread, so acks queued from the writer thread are
        # written by that thread (paho's documented threaded interface), never concurrently.
        self.client.loop_start()
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer",
                                        daemon=True)
        self._writer.start()
        if not self.ready.wait(timeout_s):
            self.stop()
            raise CollectorError(self.failure or "could not connect to the broker at %s:%d"
                                 % (self.host, self.port))
        return self

    def _fail(self, text):
        if self.failure is None:
            self.failure = text
        self.failed.set()

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason == 0:
            self._connection += 1
            client.subscribe(self.topics)

    def _on_message(self, client, userdata, msg):
        item = (self._connection, msg.mid, msg.qos, msg.topic, msg.payload)
        while not self._stopping:
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _next_batch(self):
        """Up to batch_max queued messages; [] after 0.5 s with none (a chance to check)."""
        try:
            batch = [self._queue.get(timeout=0.5)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_max:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _write_loop(self):
        try:
            while not self._stopping:
                batch = self._next_batch()
                if not batch:
                    # paho's thread ends only on stop() or an exception in a callback.
                    if not self._stopping and self.client._thread is None:
                        self._fail("MQTT consumer stopped: its network loop ended")
                        return
                    continue
                # handle_batch keeps every bad message as a reject; what escapes is the
                # store failing. Then no PUBACK: the broker keeps the batch for later.
                counts = handle_batch(self.store, "mqtt",
                                      [(topic, payload) for _, _, _, topic, payload in batch])
                self.batches += 1
                for result, n in counts.items():
                    self.counts[result] = self.counts.get(result, 0) + n
                for connection, mid, qos, _, _ in batch:
                    if qos and connection == self._connection:
                        self.client.ack(mid, qos)
        except BaseException as exc:  # noqa: BLE001 - reported, then the process exits
            self._fail("MQTT consumer stopped: %s: %s" % (type(exc).__name__, exc))
            # Drop the connection at once: nothing more is read, nothing acknowledged.
            self._stopping = True
            self.client.disconnect()

    def stop(self):
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        if self._writer is not None:
            self._writer.join(10)
