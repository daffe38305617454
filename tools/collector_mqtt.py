"""The collector's MQTT consumer: QoS 1, a persistent session, batches, PUBACK after commit.

The broker binds the session to the certificate (``use_username_as_clientid``): whatever
client id is asked for, the session is the CN's, and no other certificate can resume or
wipe it. One thread reads whatever the TLS connection has (tools/collector_mqtt_codec.py
splits it into packets), stores up to ``batch_max`` messages in one transaction (those
that arrived while the previous commit ran, or more if ``batch_wait_ms`` lets it linger),
and only then acknowledges each one, all PUBACKs in one write. A poison message becomes a
reject on its own without losing the rest of its batch (collector_store.handle_batch). If
the store fails, nothing more is acknowledged: the consumer records why in ``failure``,
sets ``failed``, and the collector process exits non-zero (a supervisor restarts it; the
broker resends what was not acknowledged). A lost connection is retried with backoff.

With ``group`` several collectors share ``$share/<group>/devices/+/...``: the broker hands
each message to one of them.

    ingest = MqttIngest(store, "127.0.0.1", 8883, ca, cert, key).start()
    ingest.failed.wait()        # set only if the consumer died
"""

import socket
import ssl
import threading
import time

from tools import collector_mqtt_codec as codec
from tools.collector_store import MAX_PAYLOAD_BYTES, CollectorError, handle_batch

TOPICS = ["devices/+/readings", "devices/+/status"]
# A PUBLISH above this is skipped as it streams in (never buffered) and kept as a reject.
MAX_PACKET_BYTES = 1 << 20
_READ_BYTES = 256 * 1024
_TICK_S = 0.25      # how often an idle consumer looks at stop() and the keepalive


def topics(group=None):
    """The subscription list, shared by a group of collectors if group is given.

    >>> topics("ingest")[0]
    ('$share/ingest/devices/+/readings', 1)
    """
    prefix = "$share/%s/" % group if group else ""
    return [(prefix + topic, 1) for topic in TOPICS]


class _Lost(Exception):
    """The connection ended or the broker misbehaved: reconnect."""


class _Tls:
    """TLS over a plain socket through memory BIOs.

    Mosquitto writes each PUBLISH as its own TLS record, and an ssl.SSLSocket returns one
    record per recv() with two system calls under it: per message, that cost more than all
    the rest. Here one recv() hands OpenSSL everything the kernel holds, and the records
    are decrypted from memory.
    """

    def __init__(self, raw, context, host):
        self.raw = raw
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_hostname=host)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill(10):
                    raise _Lost("no TLS handshake within 10 s") from None
        self._flush()

    def _flush(self):
        data = self._out.read()
        if data:
            self.raw.settimeout(10)
            self.raw.sendall(data)

    def _fill(self, timeout_s):
        self.raw.settimeout(timeout_s)
        try:
            data = self.raw.recv(_READ_BYTES)
        except (socket.timeout, BlockingIOError):
            return False
        if not data:
            raise _Lost("the broker closed the connection")
        self._in.write(data)
        return True

    def recv(self, timeout_s):
        """The plaintext that is there now or comes within timeout_s; b"" if none."""
        chunks = []
        while True:
            try:
                data = self.tls.read(_READ_BYTES)
                if not data:    # close_notify: OpenSSL reports a clean end as no data
                    raise _Lost("the broker ended the TLS session")
                chunks.append(data)
            except ssl.SSLWantReadError:
                if chunks or not self._fill(timeout_s):
                    break
            except ssl.SSLZeroReturnError:
                raise _Lost("the broker ended the TLS session") from None
        self._flush()     # anything TLS itself wants to answer
        return b"".join(chunks)

    def sendall(self, data):
        self.tls.write(data)
        self._flush()


class MqttIngest:
    """One consumer thread, watched: it never dies silently."""

    def __init__(self, store, host, port, ca, cert, key, client_id="collector",
                 batch_max=500, batch_wait_ms=0, group=None, keepalive_s=10):
        self.store = store
        self.ready = threading.Event()      # connected and subscribed (SUBACK seen)
        self.failed = threading.Event()
        self.failure = None
        self.last_error = None
        self.counts = {}
        self.batches = 0
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.topics = topics(group)
        self.host, self.port, self.client_id = host, port, client_id
        self.keepalive_s = keepalive_s
        self._stopping = False
        self._thread = None
        try:
            self.context = ssl.create_default_context(cafile=str(ca))
            self.context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise CollectorError("cannot load the TLS files (--ca %s, --cert %s, --key %s): %s"
                                 % (ca, cert, key, getattr(exc, "strerror", None) or exc)) \
                from None

    def start(self, timeout_s=10):
        self._thread = threading.Thread(target=self._run, name="mqtt-consumer", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.05):
            if self.failed.is_set() or time.monotonic() > deadline:
                self.stop()
                raise CollectorError(self.failure or "could not connect to the broker at "
                                     "%s:%d: %s" % (self.host, self.port, self.last_error))
        return self

    def _fail(self, text):
        if self.failure is None:
            self.failure = text
        self.failed.set()

    def _run(self):
        delay_s = 0.1
        while not self._stopping:
            try:
                self._session()
                delay_s = 0.1
            except (OSError, _Lost, codec.ProtocolError) as exc:
                self.last_error = "%s: %s" % (type(exc).__name__, exc)
            except BaseException as exc:  # noqa: BLE001 - the store failed: report, exit
                self._fail("MQTT consumer stopped: %s: %s" % (type(exc).__name__, exc))
                return
            finally:
                self.ready.clear()
            if not self._stopping:
                time.sleep(delay_s)
                delay_s = min(2.0, delay_s * 2)

    def _session(self):
        raw = socket.create_connection((self.host, self.port), timeout=10)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(_Tls(raw, self.context, self.host))
        finally:
            raw.close()

    def _serve(self, sock):
        sock.sendall(codec.connect_packet(self.client_id, self.keepalive_s))
        sock.sendall(codec.subscribe_packet(1, self.topics))
        buf = bytearray()
        skip = 0                        # bytes of an oversized PUBLISH still to drop
        last_in = last_out = time.monotonic()
        ping_sent = None
        while not self._stopping:
            batch, acks = [], []
            # Wait for the first bytes, then take what is already there (and, with
            # batch_wait_ms, what comes within it) up to batch_max messages.
            deadline = None
            while len(batch) < self.batch_max:
                data = sock.recv(_TICK_S if deadline is None
                                 else max(0.0, deadline - time.monotonic()))
                if not data:
                    if batch or deadline is not None:
                        break
                    now = time.monotonic()
                    if ping_sent is not None and now - ping_sent > self.keepalive_s:
                        raise _Lost("no PINGRESP within %d s" % self.keepalive_s)
                    if ping_sent is None and now - max(last_in, last_out) \
                            > self.keepalive_s / 2:
                        sock.sendall(codec.PINGREQ)
                        ping_sent = last_out = now
                    if self._stopping:
                        break
                    continue
                last_in = time.monotonic()
                if skip:
                    dropped = min(skip, len(data))
                    skip -= dropped
                    data = data[dropped:]
                buf += data
                while True:
                    packets, used = codec.parse(buf, 0, MAX_PACKET_BYTES)
                    del buf[:used]
                    for packet in packets:
                        kind = packet[0]
                        if kind == codec.PUBLISH:
                            batch.append(packet[1:4])    # topic, payload, packet id (0: QoS 0)
                        elif kind == codec.OVERSIZE:
                            _, topic, pid, qos, length, skip = packet
                            dropped = min(skip, len(buf))
                            skip -= dropped
                            del buf[:dropped]
                            self._oversize(topic, length)
                            if qos:
                                acks.append(pid)
                        elif kind == codec.CONNACK:
                            if packet[2]:
                                raise CollectorError("the broker refused the connection: %s"
                                                     % codec.CONNACK_REFUSALS.get(
                                                         packet[2], "code %d" % packet[2]))
                        elif kind == codec.SUBACK:
                            refused = [t for (t, _), code in zip(self.topics, packet[2])
                                       if code == 0x80]
                            if refused:
                                raise CollectorError("the broker refused the subscription to "
                                                     "%s (its ACL?)" % ", ".join(refused))
                            self.ready.set()
                        elif kind == codec.PINGRESP:
                            ping_sent = None
                    if not (packets and packets[-1][0] == codec.OVERSIZE and buf):
                        break
                if deadline is None:
                    deadline = time.monotonic() + self.batch_wait_s
            # One read may bring a few hundred messages past batch_max: commit them in
            # transactions of at most batch_max. What escapes handle_batch is the store
            # failing: then no PUBACK at all, the broker keeps them for the next collector.
            for at in range(0, len(batch), self.batch_max):
                part = batch[at:at + self.batch_max]
                counts = handle_batch(self.store, "mqtt", [(t, p) for t, p, _ in part])
                self.batches += 1
                for result, n in counts.items():
                    self.counts[result] = self.counts.get(result, 0) + n
                acks += [pid for _, _, pid in part if pid]
            if acks:
                sock.sendall(codec.puback_packets(acks))
                last_out = time.monotonic()
            elif ping_sent is None and time.monotonic() - last_out > self.keepalive_s / 2:
                # Only QoS 0 coming in: nothing else of ours shows the broker we are alive.
                sock.sendall(codec.PINGREQ)
                ping_sent = last_out = time.monotonic()
        try:
            sock.sendall(codec.DISCONNECT)
        except OSError:
            pass

    def _oversize(self, topic, length):
        parts = topic.split("/")
        device_id = parts[1] if len(parts) == 3 and parts[0] == "devices" else None
        self.store.add_reject("mqtt", device_id, b"",
                              "PUBLISH of %d bytes exceeds %d (payloads are at most %d)"
                              % (length, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES))
        self.counts["rejected"] = self.counts.get("rejected", 0) + 1

    def stop(self):
        self._stopping = True
        if self._thread is not None:
            self._thread.join(10)
