"""The collector's MQTT consumer: QoS 1, a persistent session, batches, PUBACK after commit.

The broker binds the session to the certificate (``use_username_as_clientid``): whatever
client id is asked for, the session is the CN's, and no other certificate can resume or
wipe it.

Two threads per connection, so that the socket is read while the database commits:
- the reader owns the TLS connection: it takes whatever the connection has
  (tools/collector_mqtt_codec.py splits it into packets), validates each message
  (collector_store.route) and hands it to the writer; it sends the PUBACKs the writer
  releases, and the PINGREQs. While ``2 x batch_max`` messages wait for the writer it stops
  reading (the broker holds the rest: memory stays bounded however fast they come).
- the writer stores up to ``batch_max`` waiting messages in one transaction (all that
  arrived while the previous commit ran, or more if ``batch_wait_ms`` lets it linger) and
  only after the commit releases their packet ids for the reader to acknowledge, all
  PUBACKs in one write. A lone reading is committed as soon as the writer is free (after
  ``batch_wait_ms``, 0 by default).
A poison message becomes a reject on its own without losing the rest of its batch
(collector_store.store_routed). If the store fails, nothing more is acknowledged: the
consumer records why in ``failure``, sets ``failed``, and the collector process exits
non-zero (a supervisor restarts it; the broker resends what was not acknowledged). A lost
connection is retried with backoff; what its writer had not committed is dropped (the
broker resends it on the next connection) and the acknowledgements it owed die with it
(what was committed comes back as a duplicate, absorbed by UNIQUE (device_id, seq)).

With ``group`` several collectors share ``$share/<group>/devices/+/...``: the broker hands
each message to one of them.

    ingest = MqttIngest(store, "127.0.0.1", 8883, ca, cert, key).start()
    ingest.failed.wait()        # set only if the consumer died
"""

import select
import socket
import ssl
import threading
import time

from tools import collector_mqtt_codec as codec
from tools.collector_store import MAX_PAYLOAD_BYTES, CollectorError, route, store_routed

TOPICS = ["devices/+/readings", "devices/+/status"]
# A PUBLISH above this is skipped as it streams in (never buffered) and kept as a reject.
MAX_PACKET_BYTES = 1 << 20
_READ_BYTES = 256 * 1024
_TICK_S = 0.25      # how often an idle consumer looks at stop() and the keepalive
_PENDING_BATCHES = 2    # the reader stops reading while this many batches wait
_HAND_EVERY = 100       # messages decoded between two looks at the writer's PUBACKs


def topics(group=None):
    """The subscription list, shared by a group of collectors if group is given.

    >>> topics("ingest")[0]
    ('$share/ingest/devices/+/readings', 1)
    """
    prefix = "$share/%s/" % group if group else ""
    return [(prefix + topic, 1) for topic in TOPICS]


class _Lost(Exception):
    """The connection ended or the broker misbehaved: reconnect."""


class _WriterDied(Exception):
    """The writer failed (its failure is already recorded): stop, acknowledge nothing."""


class _Tls:
    """TLS over a plain socket through memory BIOs.

    Mosquitto writes each PUBLISH as its own TLS record, and an ssl.SSLSocket returns one
    record per recv() with two system calls under it: per message, that cost more than all
    the rest. Here one recv() hands OpenSSL everything the kernel holds, and the records
    are decrypted from memory. Only the reader thread touches it.
    """

    def __init__(self, raw, context, host):
        self.raw = raw
        self.raw.settimeout(10)     # bounds sendall; recv only follows poll() saying readable
        self._poll = select.poll()
        self._poll.register(raw, select.POLLIN)
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

    def watch(self, wake):
        """Let bytes on the socket wake end a wait in recv() early."""
        self._wake = wake.fileno()
        self._poll.register(wake, select.POLLIN)

    def _flush(self):
        data = self._out.read()
        if data:
            self.raw.sendall(data)

    def _fill(self, timeout_s):
        ready = [fd for fd, _ in self._poll.poll(max(0, int(timeout_s * 1000)))]
        if self.raw.fileno() not in ready:
            return False        # nothing within timeout_s, or woken
        data = self.raw.recv(_READ_BYTES)
        if not data:
            raise _Lost("the broker closed the connection")
        self._in.write(data)
        return True

    def recv(self, timeout_s):
        """The plaintext that is there now or comes within timeout_s; b"" if none (or if
        woken by the socket given to watch())."""
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


class _Writer:
    """Commits what the reader hands it, batch by batch, on its own thread (one per
    connection), and releases each batch's packet ids only after its commit.

    pending holds (route result, payload, packet id) in arrival order; acks the packet ids
    committed and not yet sent. The reader is woken through wake whenever there is room
    again or something to acknowledge.
    """

    def __init__(self, ingest, wake):
        self.ingest = ingest
        self.wake = wake
        self.max_pending = _PENDING_BATCHES * ingest.batch_max
        self.cond = threading.Condition()
        self.pending = []
        self.acks = []
        self.closing = False
        self.failed = False
        self.thread = threading.Thread(target=self._run, name="mqtt-writer", daemon=True)
        self.thread.start()

    def room(self):
        """How many more messages the reader may hand over now."""
        return self.max_pending - len(self.pending)

    def hand(self, items):
        with self.cond:
            self.pending += items
            if len(self.pending) > self.ingest.held_max:
                self.ingest.held_max = len(self.pending)
            self.cond.notify()

    def take_acks(self):
        with self.cond:
            acks, self.acks = self.acks, []
        return acks

    def close(self, commit_pending, timeout_s=None):
        """Stop after the batch under way; commit what waits first if commit_pending."""
        with self.cond:
            self.closing = True
            if not commit_pending:
                self.pending.clear()
            self.cond.notify()
        self.thread.join(timeout_s)

    def _wake_reader(self):
        try:
            self.wake.send(b"w")
        except OSError:     # full (a wake is already due) or closed (the reader is gone)
            pass

    def _take(self):
        """The next batch, after waiting for one to begin; [] once closed and empty."""
        ingest = self.ingest
        with self.cond:
            while not self.pending and not self.closing:
                self.cond.wait()
            if ingest.batch_wait_s and not self.closing:
                deadline = time.monotonic() + ingest.batch_wait_s
                while len(self.pending) < ingest.batch_max and not self.closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
            batch = self.pending[:ingest.batch_max]
            del self.pending[:ingest.batch_max]
        return batch

    def _run(self):
        ingest = self.ingest
        try:
            while True:
                batch = self._take()
                if not batch:
                    return
                self._wake_reader()         # room again
                # What escapes store_routed is the store failing: then no PUBACK at all,
                # the broker keeps the batch for the next collector.
                counts = store_routed(ingest.store, "mqtt", [(r, p) for r, p, _ in batch])
                ingest.batches += 1
                for result, n in counts.items():
                    ingest.counts[result] = ingest.counts.get(result, 0) + n
                with self.cond:
                    self.acks += [pid for _, _, pid in batch if pid]
                self._wake_reader()
        except BaseException as exc:  # noqa: BLE001 - the store failed: report, exit
            ingest._fail("MQTT consumer stopped: %s: %s" % (type(exc).__name__, exc))
            self.failed = True
            self._wake_reader()


class MqttIngest:
    """The consumer: a reader and a writer thread, watched: it never dies silently."""

    def __init__(self, store, host, port, ca, cert, key, client_id="collector",
                 batch_max=500, batch_wait_ms=0, group=None, keepalive_s=10):
        self.store = store
        self.ready = threading.Event()      # connected and subscribed (SUBACK seen)
        self.failed = threading.Event()
        self.failure = None
        self.last_error = None
        self.counts = {}
        self.batches = 0
        self.held_max = 0       # most messages waiting for the writer at once (<= 2 batches)
        self.bytes_in = 0       # MQTT bytes taken from the connection
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
        while not self._stopping and not self.failed.is_set():
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
            if not self._stopping and not self.failed.is_set():
                time.sleep(delay_s)
                delay_s = min(2.0, delay_s * 2)

    def _session(self):
        raw = socket.create_connection((self.host, self.port), timeout=10)
        wake_in, wake_out = socket.socketpair()
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            wake_in.setblocking(False)
            wake_out.setblocking(False)
            sock = _Tls(raw, self.context, self.host)
            sock.watch(wake_in)
            writer = _Writer(self, wake_out)
            clean = False
            try:
                self._read(sock, writer, wake_in)
                clean = True
            finally:
                # A clean stop commits what was handed over; a lost connection drops it
                # (the broker resends it). Either way the batch under way ends first.
                writer.close(commit_pending=clean)
            if clean and not writer.failed:
                acks = writer.take_acks()
                if acks:
                    sock.sendall(codec.puback_packets(acks))
                sock.sendall(codec.DISCONNECT)
        finally:
            raw.close()
            wake_in.close()
            wake_out.close()

    def _read(self, sock, writer, wake):
        sock.sendall(codec.connect_packet(self.client_id, self.keepalive_s))
        sock.sendall(codec.subscribe_packet(1, self.topics))
        buf = bytearray()
        skip = 0                        # bytes of an oversized PUBLISH still to drop
        last_out = time.monotonic()
        ping_sent = None
        while not self._stopping:
            if writer.failed:
                raise _WriterDied(self.failure)
            acks = writer.take_acks()
            if acks:
                sock.sendall(codec.puback_packets(acks))
                last_out = time.monotonic()
            now = time.monotonic()
            if ping_sent is not None and now - ping_sent > self.keepalive_s:
                raise _Lost("no PINGRESP within %d s" % self.keepalive_s)
            if ping_sent is None and now - last_out > self.keepalive_s / 2:
                # Nothing of ours for half the keepalive (idle, only QoS 0, or waiting on
                # the database): show the broker we are alive, and learn whether it is.
                sock.sendall(codec.PINGREQ)
                ping_sent = last_out = now
            room = writer.room()
            if room <= 0:
                # Backpressure: read nothing until the writer takes a batch; the broker
                # keeps the rest. A PINGRESP may wait unread meanwhile: not a dead link.
                ping_sent = None
                _drain(wake, _TICK_S)
                continue
            # A few at a time: the writer may start on them, and the PUBACKs it releases
            # go out within a fraction of a millisecond.
            packets, used = codec.parse(buf, 0, MAX_PACKET_BYTES, min(room, _HAND_EVERY))
            del buf[:used]
            if not packets:     # no complete packet buffered: read
                data = sock.recv(_TICK_S)
                _drain(wake, 0)
                self.bytes_in += len(data)
                if skip:
                    dropped = min(skip, len(data))
                    skip -= dropped
                    data = data[dropped:]
                buf += data
                continue
            items = []
            for packet in packets:
                kind = packet[0]
                if kind == codec.PUBLISH:
                    _, topic, payload, pid, _ = packet
                    # All a reject keeps of a payload: what waits stays bounded.
                    items.append((route(topic, payload), payload[:MAX_PAYLOAD_BYTES], pid))
                elif kind == codec.OVERSIZE:
                    _, topic, pid, qos, length, skip = packet
                    dropped = min(skip, len(buf))
                    skip -= dropped
                    del buf[:dropped]
                    items.append((self._oversize(topic, length), b"", pid if qos else 0))
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
            if items:
                writer.hand(items)

    @staticmethod
    def _oversize(topic, length):
        """The route result that keeps an oversized PUBLISH as a reject."""
        parts = topic.split("/")
        device_id = parts[1] if len(parts) == 3 and parts[0] == "devices" else None
        return ("reject", device_id, "PUBLISH of %d bytes exceeds %d (payloads are at most %d)"
                % (length, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES))

    def stop(self, timeout_s=10):
        """Stop reading, commit what was handed over, and end; True if it ended within
        ``timeout_s`` (False: its writer is still inside a store that does not answer)."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True


def _drain(wake, timeout_s):
    """Wait up to timeout_s for the writer's wake-up, and clear it."""
    if timeout_s and not select.select([wake], [], [], timeout_s)[0]:
        return
    try:
        while wake.recv(4096):
            pass
    except BlockingIOError:
        pass
