r"""MQTT 3.1.1 packets to bytes and back for a client: pure, bounded, no I/O.

Modelled on AWS coreMQTT's serializer: encoders write into a buffer the caller owns and
return the length (``EncodeError``, a ``ValueError``, when it does not fit, never a silent
cut); the ``Decoder`` takes bytes as a stream hands them over and never asks for more than
the current packet still needs, so a blocking ``read(decoder.need())`` cannot eat into the
next packet. The remaining length is at most 4 bytes and checked against the decoder's
bound before any body byte is taken; the body buffer is allocated once and never grows.
A client receives only CONNACK, PUBLISH (QoS 0/1), PUBACK and PINGRESP here: every other
type, and every malformed packet, is a ``ProtocolError`` that names it. ``PacketIds``
hands out packet ids for several PUBLISHes in flight and tells a duplicate PUBACK (counted,
ignored) from one for an id never sent (a protocol error). Errors carry a code and values;
their sentences are in mqtt_errors, loaded only while one is said (``str(exc)``).

Example::

    >>> buf = bytearray(64)
    >>> n = encode_publish(buf, b"t", b"hi", 1)
    >>> bytes(buf[:n])
    b'2\x07\x00\x01t\x00\x01hi'
    >>> d = Decoder(128)
    >>> d.feed(b"\x40\x02\x00\x01")
    4
    >>> d.take()
    (4, 1)
"""

import sys

from micropython import const

# MQTT 3.1.1 packet types (2.2.1) that a client receives or this module writes; the
# decoder's packets start with them.
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_PINGRESP = const(13)

_MAX_REMAINING = const(268435455)  # what 4 length bytes can say (MQTT 3.1.1 2.2.3)
_MAX_ID = const(65535)

# Error codes: the sentences are in mqtt_errors, loaded only to say one (issue 10).
# 1..13 take the packet's first byte as their first value; _E_FITS a packet type, _E_STR a
# field code (_F_*) as theirs.
_E_LENGTH_5 = const(1)
_E_QOS3 = const(2)
_E_QOS2 = const(3)
_E_DUP_QOS0 = const(4)
_E_FLAGS = const(5)
_E_QOS12 = const(6)
_E_SUB = const(7)
_E_NOT_MQTT = const(8)
_E_CLIENT_ONLY = const(9)
_E_LENGTH_2 = const(10)
_E_LENGTH_0 = const(11)
_E_SHORT = const(12)
_E_BOUND = const(13)
_E_CONNACK_FLAGS = const(14)
_E_PUBACK_ID0 = const(15)
_E_TOPIC = const(16)
_E_PUBLISH_ID0 = const(17)
_E_WINDOW = const(18)
_E_NEVER_SENT = const(19)
_E_REMAINING = const(20)
_E_FITS = const(21)
_E_STR = const(22)
_E_KEEPALIVE = const(23)
_E_PASSWORD = const(24)
_E_WILL_QOS = const(25)
_E_QOS = const(26)
_E_PACKET_ID = const(27)
_E_DUP = const(28)
_E_WILDCARD = const(29)

# Fields _E_STR names (mqtt_errors' _FIELDS); mqtt_connect's are 1..5.
_F_TOPIC = const(0)


def forget(name):
    """Unload securenode.<name> (sys.modules and the package's attribute): the modules used
    for a moment (mqtt_errors to say an error, mqtt_connect per connection) stay no longer.

    >>> forget("mqtt_errors")
    """
    sys.modules.pop("securenode." + name, None)
    package = sys.modules.get("securenode")
    if package is not None and name in package.__dict__:
        delattr(package, name)


class ProtocolError(Exception):
    """The peer broke MQTT 3.1.1; the text names the packet and what was wrong with it."""

    def __str__(self):
        # The sentence for (code, values...), from mqtt_errors; the module is dropped again
        # so a board that recovers keeps none of the words resident.
        from securenode import mqtt_errors

        try:
            return mqtt_errors.text(self.args)
        finally:
            forget("mqtt_errors")


class EncodeError(ValueError):
    """A value the encoders cannot put on the wire (the caller's mistake), by name."""

    __str__ = ProtocolError.__str__  # the same sentences, by code


def _b(value):
    # Topics, ids, user names may come as str; the wire carries their UTF-8 bytes.
    return value.encode() if isinstance(value, str) else value


def _length_bytes(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def put_remaining_length(buf, offset, n):
    r"""Write ``n`` as MQTT's variable-length integer at ``buf[offset]``; return the next
    offset.

    >>> buf = bytearray(4)
    >>> put_remaining_length(buf, 0, 321), bytes(buf[:2])
    (2, b'\xc1\x02')
    """
    if not 0 <= n <= _MAX_REMAINING:
        raise EncodeError(_E_REMAINING, n)
    while True:
        byte = n & 0x7F
        n >>= 7
        buf[offset] = byte | (0x80 if n else 0)
        offset += 1
        if not n:
            return offset


def _put_str(buf, offset, data):
    n = len(data)
    buf[offset] = n >> 8
    buf[offset + 1] = n & 0xFF
    buf[offset + 2:offset + 2 + n] = data
    return offset + 2 + n


def _check_fits(buf, total, kind):
    # kind: the packet type, which the error names
    if total > len(buf):
        raise EncodeError(_E_FITS, kind, total, len(buf))


def _check_str(data, field):
    # field: an _F_* code, which the error names
    if len(data) > _MAX_ID:
        raise EncodeError(_E_STR, field, len(data))


def publish_length(topic, payload, qos=1):
    """Bytes a PUBLISH of ``payload`` takes on the wire.

    >>> publish_length(b"t", b"hi")
    9
    """
    body = 2 + len(topic) + (2 if qos else 0) + len(payload)
    return 1 + _length_bytes(body) + body


def encode_publish(buf, topic, payload, packet_id, qos=1, dup=False, retain=False):
    r"""Write a PUBLISH into ``buf``; return its length. QoS 0 takes packet_id 0.

    >>> buf = bytearray(16)
    >>> n = encode_publish(buf, b"t", b"x", 7, dup=True, retain=True)
    >>> bytes(buf[:n])
    b';\x06\x00\x01t\x00\x07x'
    """
    topic = _b(topic)
    # Not `qos not in (0, 1)`: a constant tuple is an object built in RAM at import.
    if qos != 0 and qos != 1:
        raise EncodeError(_E_QOS, qos)
    if qos and not 1 <= packet_id <= _MAX_ID:
        raise EncodeError(_E_PACKET_ID, packet_id)
    if not qos and dup:
        raise EncodeError(_E_DUP)
    if not topic or b"+" in topic or b"#" in topic:
        raise EncodeError(_E_WILDCARD, topic)
    _check_str(topic, _F_TOPIC)
    n = len(payload)
    body = 2 + len(topic) + (2 if qos else 0) + n
    _check_fits(buf, 1 + _length_bytes(body) + body, _PUBLISH)
    buf[0] = _PUBLISH << 4 | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    offset = _put_str(buf, put_remaining_length(buf, 1, body), topic)
    if qos:
        buf[offset] = packet_id >> 8
        buf[offset + 1] = packet_id & 0xFF
        offset += 2
    buf[offset:offset + n] = payload
    return offset + n


def encode_puback(buf, packet_id):
    r"""Write the PUBACK for ``packet_id`` into ``buf``; return 4.

    >>> buf = bytearray(4)
    >>> encode_puback(buf, 258), bytes(buf)
    (4, b'@\x02\x01\x02')
    """
    if not 1 <= packet_id <= _MAX_ID:
        raise EncodeError(_E_PACKET_ID, packet_id)
    _check_fits(buf, 4, _PUBACK)
    buf[0] = _PUBACK << 4
    buf[1] = 2
    buf[2] = packet_id >> 8
    buf[3] = packet_id & 0xFF
    return 4


class Decoder:
    r"""Packets a client may receive, from a byte stream, one at a time and bounded.

    ``need()`` says how many bytes to read next (never past the current packet); ``feed``
    takes them (fewer is fine) and returns how many it used, stopping at the end of a
    packet; ``take()`` then returns the packet and readies the next one:

    - ``(2, session_present, return_code)``: CONNACK
    - ``(3, packet_id, qos, dup, retain, topic, payload)``: PUBLISH; topic and payload are
      memoryviews into the decoder's buffer, valid until the next ``feed``; packet_id 0
      for QoS 0
    - ``(4, packet_id)``: PUBACK
    - ``(13,)``: PINGRESP

    The first item is the MQTT packet type (2.2.1).

    >>> d = Decoder(64)
    >>> d.need()
    2
    >>> d.feed(b"\x20\x02\x00\x05"), d.take()
    (4, (2, 0, 5))
    >>> try:
    ...     d.feed(b"\x90\x02")
    ... except ProtocolError as exc:
    ...     print(exc)
    unexpected SUBACK (first byte 0x90): this client subscribes to nothing
    """

    def __init__(self, max_remaining):
        # The body buffer, allocated once: its length is the bound on a packet's remaining
        # length, a view so that a packet hands out slices without copies.
        self._view = memoryview(bytearray(max_remaining))
        self.reset()

    def reset(self):
        """Forget any partial packet (after a new connection)."""
        self._first = -1
        self._length = 0
        self._length_count = 0  # length bytes read; -1 once the length is complete
        self._got = 0
        self._packet = None

    def need(self):
        """Bytes to read next: >= 1, and never beyond the end of the current packet."""
        if self._packet is not None:
            return 0
        if self._first < 0:
            return 2  # every packet has a first byte and at least one length byte
        if self._length_count >= 0:
            return 1
        return self._length - self._got

    def feed(self, data):
        """Take bytes from the stream; return how many were used. Raises ProtocolError."""
        used = 0
        n = len(data)
        while used < n and self._packet is None:
            if self._first < 0:
                self._first = first = data[used]
                used += 1
                _check_type(first)
            elif self._length_count >= 0:
                byte = data[used]
                used += 1
                self._length |= (byte & 0x7F) << (7 * self._length_count)
                self._length_count += 1
                if byte & 0x80:
                    if self._length_count == 4:
                        raise ProtocolError(_E_LENGTH_5, self._first)
                    continue
                self._length_count = -1
                _check_length(self._first, self._length, len(self._view))
                if self._length == 0:
                    self._complete()
            else:
                k = min(n - used, self._length - self._got)
                # A reader that asked for need() bytes hands over exactly the body: copy it
                # without the slice (an allocation per packet on a board).
                self._view[self._got:self._got + k] = data if k == n else data[used:used + k]
                self._got += k
                used += k
                if self._got == self._length:
                    self._complete()
        return used

    def take(self):
        """The packet completed by ``feed``, or None; the decoder moves on to the next."""
        packet = self._packet
        if packet is not None:
            self.reset()
        return packet

    def _complete(self):
        first = self._first
        kind = first >> 4
        body = self._view
        if kind == _CONNACK:
            if body[0] & 0xFE:
                raise ProtocolError(_E_CONNACK_FLAGS, body[0])
            self._packet = (_CONNACK, body[0] & 1, body[1])
            return
        if kind == _PUBACK:
            packet_id = body[0] << 8 | body[1]
            if not packet_id:
                raise ProtocolError(_E_PUBACK_ID0)
            self._packet = (_PUBACK, packet_id)
            return
        if kind == _PINGRESP:
            self._packet = (_PINGRESP,)
            return
        qos = first >> 1 & 3
        n = self._length
        topic_end = 2 + (body[0] << 8 | body[1])
        data_start = topic_end + (2 if qos else 0)
        if topic_end == 2 or data_start > n:
            raise ProtocolError(_E_TOPIC, topic_end - 2, n)
        packet_id = 0
        if qos:
            packet_id = body[topic_end] << 8 | body[topic_end + 1]
            if not packet_id:
                raise ProtocolError(_E_PUBLISH_ID0)
        self._packet = (_PUBLISH, packet_id, qos, first >> 3 & 1, first & 1,
                        body[2:topic_end], body[data_start:n])


def _check_type(head):
    # Only what a client may receive gets past the first byte (head: the fixed header's
    # first byte, the packet type and its flags).
    kind = head >> 4
    flags = head & 15
    if kind == _PUBLISH:
        qos = flags >> 1 & 3
        if qos == 3:
            raise ProtocolError(_E_QOS3, head)
        if qos == 2:
            raise ProtocolError(_E_QOS2, head)
        if qos == 0 and flags & 8:
            raise ProtocolError(_E_DUP_QOS0, head)
        return
    if kind == _CONNACK or kind == _PUBACK or kind == _PINGRESP:
        if flags:
            raise ProtocolError(_E_FLAGS, head)
        return
    if 5 <= kind <= 7:
        raise ProtocolError(_E_QOS12, head)
    if kind == 9 or kind == 11:
        raise ProtocolError(_E_SUB, head)
    if kind == 0 or kind == 15:
        raise ProtocolError(_E_NOT_MQTT, head)
    raise ProtocolError(_E_CLIENT_ONLY, head)


def _check_length(head, n, max_remaining):
    # The remaining length against the packet type and the bound, before any body byte.
    kind = head >> 4
    if kind == _CONNACK or kind == _PUBACK:
        if n != 2:
            raise ProtocolError(_E_LENGTH_2, head, n)
    elif kind == _PINGRESP:
        if n != 0:
            raise ProtocolError(_E_LENGTH_0, head, n)
    elif n < (5 if head & 6 else 3):
        raise ProtocolError(_E_SHORT, head, n)
    if n > max_remaining:
        # Refused before a single body byte is read: the buffer never grows.
        raise ProtocolError(_E_BOUND, head, n, max_remaining)


class PacketIds:
    """Packet ids of one MQTT session, with up to ``window`` PUBLISHes awaiting PUBACK.

    Ids run 1..65535 then 1 again (0 is not a packet id, MQTT 3.1.1 2.3.1), skipping any
    still in flight. ``acked`` matches a PUBACK: True for an id in flight; False for a
    duplicate of one acknowledged before (counted in ``duplicates``); ProtocolError for
    an id this session never sent.

    >>> ids = PacketIds(2)
    >>> ids.next(), ids.next()
    (1, 2)
    >>> ids.acked(1), ids.acked(1), ids.duplicates
    (True, False, 1)
    >>> try:
    ...     ids.acked(9)
    ... except ProtocolError as exc:
    ...     print(exc)
    PUBACK for packet id 9, which this session never sent
    """

    def __init__(self, window=1, last=0):
        self.window = window
        self.inflight = []  # oldest first; a list: `window` is small
        self.last = last    # the id handed out last
        self.wrapped = False
        self.duplicates = 0

    def next(self):
        """A free packet id, now in flight; ValueError when the window is full."""
        if len(self.inflight) >= self.window:
            raise EncodeError(_E_WINDOW, len(self.inflight))
        while True:
            if self.last >= _MAX_ID:
                self.last = 0
                self.wrapped = True
            self.last += 1
            if self.last not in self.inflight:
                self.inflight.append(self.last)
                return self.last

    def acked(self, packet_id):
        """Match a PUBACK: True (was in flight), False (duplicate, counted) or raise."""
        if packet_id in self.inflight:
            self.inflight.remove(packet_id)
            return True
        if self.wrapped or 0 < packet_id <= self.last:
            self.duplicates += 1
            return False
        raise ProtocolError(_E_NEVER_SENT, packet_id)
