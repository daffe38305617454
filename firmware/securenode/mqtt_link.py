"""MQTT 3.1.1 over pinned TLS: the pure codec (mqtt_codec) on a socket, a deadline on every step.

Each step has its own deadline, and its error quotes it:

- TCP connect, ``timeouts_ms.connect``: NetError("connect") (net.open_tcp);
- TLS handshake, ``timeouts_ms.handshake``: TlsError("handshake_timeout") (pinned_tls);
- CONNACK, ``timeouts_ms.io``: LinkError("connack_timeout");
- PUBACK, ``timeouts_ms.io``: LinkError("ack_timeout");
- PINGRESP, ``timeouts_ms.io``: LinkError("link_lost") (checked by ``check()``).

Whatever the broker sends is read exactly as far as the decoder asks (never into the next
packet), bounded by 512 bytes; garbage, a wrong packet type, an over-long length
or a PUBACK for an id never sent is LinkError("protocol"); a duplicate PUBACK is counted and
ignored; an unsolicited PUBLISH is parsed, acknowledged if QoS 1, counted and dropped. Each
packet leaves in one write (one TLS record). ``close()`` says DISCONNECT (unless the link
broke) and reads until the broker ends the connection, so no RST overtakes it.

The link keeps the app's interface (links.py) and adds a lower-level one for several
PUBLISHes in flight: ``send_publish`` returns a packet id at once, ``wait_acks()`` and
``poll()`` collect PUBACKs (``window`` ids may be in flight).

Example::

    link = MqttLink(b"board-1", "broker.local", 8883, tls, keepalive_s=60,
                    connect_ms=5000, io_ms=5000)
    link.connect()                          # raises NetError, TlsError or LinkError
    link.publish(b"devices/board-1/readings", payload)   # returns once PUBACK arrived
"""

import select
import time

from micropython import const

from securenode import mqtt_codec
from securenode import net
from securenode.events import emit
from securenode.link_error import LinkError

_TX_BYTES = const(256)      # a reading's whole PUBLISH: header, topic, id, ~90 B JSON
# Largest packet body taken from the broker: it sends a client PUBACK, CONNACK and
# PINGRESP (2 bytes), and a PUBLISH only unasked (a stale session, a bridge); 512 bytes
# takes a reading-sized one and is the one buffer of the link above 256 bytes (issue 10).
_MAX_PACKET = const(512)
_GOODBYE_MS = const(500)    # how long close() waits for the broker to end the connection
_POLL_MAX = const(8)        # packets handled per poll(): a flooding broker cannot stall sampling

# MQTT 3.1.1 packet types (2.2.1) as the decoder's packets carry them; also what a step
# waits for (0: any packet), which an error names.
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_PINGRESP = const(13)
_PINGREQ = const(b"\xc0\x00")     # a whole PINGREQ: type 12, no flags, no body
_DISCONNECT = const(b"\xe0\x00")  # a whole DISCONNECT: type 14, no flags, no body

# Why a session failed; mqtt_errors (loaded only then) turns the reason, the packet waited
# for and a value into the LinkError's kind and words.
_R_TIMEOUT = const(1)         # no answer within timeouts_ms.io
_R_IO = const(2)              # the stream failed (value: the OSError) or ended (None)
_R_REFUSED = const(3)         # value: CONNACK's return code
_R_BEFORE_CONNACK = const(4)  # value: the packet type
_R_EOF = const(5)
_R_NO_PINGRESP = const(6)
_R_QUIET = const(7)           # value: ms since the broker's last byte
_R_FEED = const(8)            # value: the decoder's ProtocolError
_R_PUBACK = const(9)          # value: PacketIds' ProtocolError
_R_UNEXPECTED = const(10)     # value: the packet type


class TlsStream:
    """The pinned TLS socket as the session's stream; timeouts go on the raw socket
    (the ports' TLS sockets have no settimeout of their own)."""

    def __init__(self, raw, tls):
        self.raw = raw  # the TCP socket under the TLS one
        self._tls = tls

    def read(self, n, timeout_ms):
        """Up to n bytes (b"" at EOF); with timeout_ms 0, None when nothing is there."""
        self.raw.settimeout(timeout_ms / 1000)
        return self._tls.read(n)

    def write(self, buf, n, timeout_ms):
        """Write buf[:n] in one call: one TLS record (no slice is allocated)."""
        self.raw.settimeout(timeout_ms / 1000)
        self._tls.write(buf, n)

    def close(self):
        try:
            self._tls.close()
        finally:
            self.raw.close()


class MqttLink:
    def __init__(self, client_id, host, port, tls, keepalive_s, connect_ms, io_ms,
                 user=None, password=None, window=1):
        self.client_id = client_id
        # Provisioned boards log in with a user name + password (from the base station)
        # instead of a client certificate; both travel only inside the pinned TLS. One
        # attribute for the two: the 24th would grow the instance's dict by 96 bytes.
        self.credentials = (user, password)
        self.host = host
        self.port = port
        self.peer = "%s:%d" % (host, port)
        self._tls = tls
        self.keepalive_s = keepalive_s
        self.connect_ms = connect_ms
        self.io_ms = io_ms
        self.window = window
        self._will = None
        self._tx = bytearray(_TX_BYTES)
        self._decoder = mqtt_codec.Decoder(_MAX_PACKET)
        self._stream = None
        self._poller = None
        self._broken = False
        self._ping_sent_ms = None
        self.ids = mqtt_codec.PacketIds(window)
        self._sent_ms = []   # when each id in self.ids.inflight was sent, in the same order
        self.srtt_ms = None  # smoothed PUBLISH -> PUBACK time (RFC 6298's 1/8 gain)
        self.unsolicited = 0
        self.last_rx_ms = self.last_tx_ms = time.ticks_ms()

    # --- connection -----------------------------------------------------------------------
    def connect(self):
        """Open TCP, pinned TLS (each pinned root where the port takes one at a time), then
        the MQTT session (CONNECT, CONNACK)."""
        self._stream = self._open_stream()
        # A wait for the broker sleeps in poll() on the raw socket, never in a TLS read with a
        # timeout: on the unix port that timeout is sticky (PORT_FACTS), the session unusable.
        raw = getattr(self._stream, "raw", None)  # a WebSocket stream has none: it polls
        if raw is not None:
            self._poller = select.poll()
            self._poller.register(raw, select.POLLIN)
        self._broken = False
        self._ping_sent_ms = None
        self._decoder.reset()
        self.ids = mqtt_codec.PacketIds(self.window)
        self._sent_ms = []
        try:
            self._start_session()
        except Exception:
            self._drop()
            raise

    def _open_stream(self):
        roots = self._tls.root_sets
        for index, cadata in enumerate(roots):
            self._tls.cadata = cadata
            raw = net.open_tcp(self.host, self.port, self.connect_ms)
            try:
                return TlsStream(raw, self._tls.wrap_socket(raw))
            except Exception as exc:
                raw.close()
                if index + 1 < len(roots) and self._tls.is_verify_failure(exc):
                    continue
                raise self._tls.explain(exc, self.host, self.port)

    def _start_session(self):
        # The CONNECT encoder is needed once per connection: loaded for it, then dropped.
        from securenode import mqtt_connect

        user, password = self.credentials
        try:
            n = mqtt_connect.connect_length(self.client_id, self._will, user, password)
            buf = self._tx if n <= len(self._tx) else bytearray(n)  # once per connection
            mqtt_connect.encode_connect(buf, self.client_id, self.keepalive_s, self._will,
                                        user, password)
        finally:
            mqtt_codec.forget("mqtt_connect")
        self._send(buf, n, _CONNACK)
        packet = self._read_packet(time.ticks_add(time.ticks_ms(), self.io_ms), _CONNACK)
        if packet[0] != _CONNACK:
            raise self._fail(_R_BEFORE_CONNACK, 0, packet[0])
        if packet[2]:
            raise self._fail(_R_REFUSED, 0, packet[2])

    def will(self, topic, payload):
        """Set the last will (QoS 1, retained) the broker publishes if we vanish; call before
        connect(). The same topic then carries publish_status().
        Example: ``link.will(b"devices/b1/status", b'{"status":"offline"}')``"""
        self._will = (topic, payload)

    # --- publishing -----------------------------------------------------------------------
    def publish(self, topic, payload, dup=False, retain=False):
        """Publish with QoS 1; return once the broker's PUBACK for it has arrived.

        The wait is bounded by timeouts_ms.io: a missing PUBACK raises
        LinkError("ack_timeout") and the caller resends the reading on a new connection
        with ``dup=True``. Example: ``link.publish(b"devices/b1/readings", b'{"seq":1}')``
        """
        packet_id = self.send_publish(topic, payload, dup, retain)
        due = time.ticks_add(time.ticks_ms(), self.io_ms)
        while packet_id in self.ids.inflight:
            self._handle(self._read_packet(due, _PUBACK), _PUBACK)

    def publish_status(self, payload):
        """Publish the board's status, retained, where the last will speaks; True if sent."""
        if self._will is None:
            return False
        self.publish(self._will[0], payload, retain=True)
        return True

    def send_publish(self, topic, payload, dup=False, retain=False):
        """Send one QoS 1 PUBLISH (one write) and return its packet id without waiting.

        Example: ``pid = link.send_publish(topic, payload)``, then ``link.wait_acks(50)``
        until pid has left ``link.ids.inflight``.
        """
        packet_id = self.ids.next()
        n = mqtt_codec.publish_length(topic, payload, 1)
        buf = self._tx if n <= len(self._tx) else bytearray(n)
        mqtt_codec.encode_publish(buf, topic, payload, packet_id, 1, dup, retain)
        self._sent_ms.append(time.ticks_ms())
        self._send(buf, n, _PUBACK)
        return packet_id

    def publish_status_async(self, payload):
        """Send the retained status where the last will speaks without waiting for its PUBACK;
        its packet id, or None without a will. The first reading can then fly beside it.

        Example: ``pid = link.publish_status_async(b'{"status":"online"}')``
        """
        if self._will is None:
            return None
        return self.send_publish(self._will[0], payload, retain=True)

    def ack_expected_in_ms(self):
        """Milliseconds until the oldest PUBLISH in flight should be acknowledged (its send
        time plus the smoothed round trip); None with nothing in flight or no estimate yet.

        Example: ``if link.ack_expected_in_ms() > 100: sample_now()``
        """
        if not self._sent_ms or self.srtt_ms is None:
            return None
        return time.ticks_diff(time.ticks_add(self._sent_ms[0], self.srtt_ms), time.ticks_ms())

    def wait_acks(self, timeout_ms):
        """Handle what arrives until a PUBACK did or ``timeout_ms`` passed; return the PUBACKs
        handled. LinkError("ack_timeout") once the oldest PUBLISH in flight has waited
        timeouts_ms.io. A window of sends is acknowledged through this.

        Example: ``while link.ids.inflight: link.wait_acks(50)``
        """
        # A fresh PUBACK takes its id out of ids.inflight: the count that left is the answer.
        inflight = self.ids.inflight
        before = len(inflight)
        until = time.ticks_add(time.ticks_ms(), timeout_ms)
        while True:
            self.poll(_PUBACK)
            if len(inflight) != before:
                return before - len(inflight)
            now = time.ticks_ms()
            left = time.ticks_diff(until, now)
            if self._sent_ms:
                overdue = time.ticks_diff(time.ticks_add(self._sent_ms[0], self.io_ms), now)
                if overdue <= 0:
                    raise self._fail(_R_TIMEOUT, _PUBACK)
                left = min(left, overdue)
            if left <= 0:
                return 0
            if self._poller is None:
                time.sleep_ms(min(left, 5))
            else:
                self._poller.poll(left)  # wakes when bytes arrive (or the peer hangs up)

    # --- idle -----------------------------------------------------------------------------
    def poll(self, waiting_for=0):
        """Handle the packets that have arrived (at most 8), without waiting for one; return
        how many. A packet that has begun to arrive is read to its end within timeouts_ms.io.
        ``waiting_for``: the packet type an error would say was awaited (0: any).
        """
        handled = 0
        while handled < _POLL_MAX:
            try:
                data = self._stream.read(self._decoder.need(), 0)
            except OSError as exc:
                if net.is_timeout(exc):
                    return handled  # EAGAIN: nothing there
                raise self._fail(_R_IO, waiting_for, exc)
            if data is None:
                return handled
            if not data:
                raise self._fail(_R_EOF)
            due = time.ticks_add(time.ticks_ms(), self.io_ms)
            self._handle(self._read_packet(due, waiting_for, data), waiting_for)
            handled += 1
        return handled

    def check(self, dead_after_ms):
        """Handle what arrived (non-blocking); raise LinkError("link_lost") when a PINGREQ
        went unanswered for timeouts_ms.io, or nothing at all came from the broker for
        dead_after_ms (1.5 x keepalive): a half-open link either way.

        Example: ``link.check(90000)`` in the idle loop of a board with keepalive 60 s.
        """
        self.poll(0 if self._ping_sent_ms is None else _PINGRESP)
        now = time.ticks_ms()
        if (self._ping_sent_ms is not None
                and time.ticks_diff(now, self._ping_sent_ms) > self.io_ms):
            # Unanswered keepalive: the broker or the path to it is gone (half-open).
            raise self._fail(_R_NO_PINGRESP)
        quiet_ms = time.ticks_diff(now, self.last_rx_ms)
        if dead_after_ms and quiet_ms > dead_after_ms:
            raise self._fail(_R_QUIET, 0, quiet_ms)

    def idle_ms(self):
        """Milliseconds since we last sent anything (a PINGREQ is due at keepalive / 2)."""
        return time.ticks_diff(time.ticks_ms(), self.last_tx_ms)

    def ping(self):
        """Send PINGREQ; its PINGRESP is awaited by check() within timeouts_ms.io."""
        self._send(_PINGREQ, 2, _PINGRESP)
        if self._ping_sent_ms is None:
            self._ping_sent_ms = self.last_tx_ms
        self.poll(_PINGRESP)

    # --- packets in and out ---------------------------------------------------------------
    def _send(self, buf, n, waiting_for):
        try:
            self._stream.write(buf, n, self.io_ms)
        except OSError as exc:
            raise self._fail(_R_IO, waiting_for, exc)
        self.last_tx_ms = time.ticks_ms()

    def _read_packet(self, due, waiting_for, data=None):
        # The next whole packet, read by the ticks_ms ``due``; ``data``: its first bytes
        # when they have arrived already (poll).
        decoder = self._decoder
        while True:
            if data:
                self.last_rx_ms = time.ticks_ms()
                try:
                    decoder.feed(data)
                except mqtt_codec.ProtocolError as exc:
                    raise self._fail(_R_FEED, waiting_for, exc)
            packet = decoder.take()
            if packet is not None:
                return packet
            left = time.ticks_diff(due, time.ticks_ms())
            if left <= 0:
                raise self._fail(_R_TIMEOUT, waiting_for)
            try:
                data = self._stream.read(decoder.need(), left)
            except OSError as exc:
                raise self._fail(_R_IO, waiting_for, exc)
            if data is not None and not data:
                raise self._fail(_R_IO, waiting_for)  # the broker closed the connection

    def _handle(self, packet, waiting_for):
        kind = packet[0]
        if kind == _PUBACK:
            inflight = self.ids.inflight
            if packet[1] in inflight:
                rtt = time.ticks_diff(time.ticks_ms(), self._sent_ms.pop(inflight.index(packet[1])))
                self.srtt_ms = rtt if self.srtt_ms is None else (7 * self.srtt_ms + rtt) // 8
            try:
                fresh = self.ids.acked(packet[1])
            except mqtt_codec.ProtocolError as exc:
                raise self._fail(_R_PUBACK, 0, exc)
            if not fresh:
                emit("mqtt_duplicate_puback", peer=self.peer, packet_id=packet[1],
                     count=self.ids.duplicates)
        elif kind == _PINGRESP:
            self._ping_sent_ms = None
        elif kind == _PUBLISH:
            # We subscribe to nothing, yet a broker may deliver (a stale session, a bridge):
            # acknowledge QoS 1 so it is not redelivered forever, then drop it.
            self.unsolicited += 1
            if packet[2]:
                self._send(self._tx, mqtt_codec.encode_puback(self._tx, packet[1]), waiting_for)
            # Peer bytes in an event: printable ASCII only, cut short.
            topic = "".join(chr(b) if 32 <= b < 127 else "?" for b in bytes(packet[5][:48]))
            emit("mqtt_unsolicited", peer=self.peer, topic=topic, qos=packet[2],
                 bytes=len(packet[6]), count=self.unsolicited)
        else:
            raise self._fail(_R_UNEXPECTED, waiting_for, kind)

    # --- errors ---------------------------------------------------------------------------
    def _fail(self, reason, waiting_for=0, value=None):
        # The kind and words come from mqtt_errors, loaded for this once: a board keeps none
        # resident.
        self._broken = True  # no DISCONNECT on a broken session: the will should speak
        from securenode import mqtt_errors

        try:
            return mqtt_errors.link_error(self, reason, waiting_for, value)
        finally:
            mqtt_codec.forget("mqtt_errors")

    # --- closing --------------------------------------------------------------------------
    def close(self):
        """End the session: DISCONNECT (unless it broke), then wait up to 500 ms for the
        broker to end the connection, so the kernel never answers unread bytes with a RST
        that could overtake the DISCONNECT (the broker would then publish our will)."""
        stream = self._stream
        if stream is None:
            return
        try:
            if not self._broken:
                for _ in range(_POLL_MAX):
                    if not stream.read(64, 0):
                        break  # discard what arrived unasked; a closing session answers nothing
                stream.write(_DISCONNECT, 2, self.io_ms)
                until = time.ticks_add(time.ticks_ms(), min(self.io_ms, _GOODBYE_MS))
                while True:
                    left = time.ticks_diff(until, time.ticks_ms())
                    if left <= 0 or not stream.read(64, left):
                        break
        except (OSError, LinkError):
            # Closing either way: a timeout, a reset or (on a WebSocket stream) the broker's
            # close here only ends the wait.
            pass
        finally:
            self._drop()

    def _drop(self):
        stream = self._stream
        self._stream = None
        self._poller = None
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
