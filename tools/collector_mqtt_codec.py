r"""The MQTT 3.1.1 packets a subscribing collector sends and receives: pure, bounded, no I/O.

Why not paho's reader: measured on the collector's TLS listener, paho-mqtt acknowledging
each message at once and storing nothing tops out at ~0.4x the rate Mosquitto delivers to
``mosquitto_sub`` (tests/bench/results/collector.md): it makes four TLS reads, a select()
and a TLS write per message. This codec takes whatever a read returned and splits off
every complete packet in one pass, and the consumer answers a whole batch with one write.

``parse`` never allocates more than one packet's worth beyond the buffer it is given and
refuses a remaining length over 4 bytes or a type a subscriber never receives; a PUBLISH
larger than ``max_packet`` is reported as ``OVERSIZE`` with what is needed to acknowledge
it, so the caller can skip its body without buffering it.

    >>> puback_packets([1, 258])
    b'@\x02\x00\x01@\x02\x01\x02'
    >>> packets, end = parse(b"\x32\x09\x00\x03a/b\x00\x07hi\xd0", 0, 1024)
    >>> packets, end
    ([(3, 'a/b', b'hi', 7, 1)], 11)
"""

import struct

CONNACK, PUBLISH, SUBACK, PINGRESP, OVERSIZE = 2, 3, 9, 13, -1
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
CONNACK_REFUSALS = {1: "unacceptable protocol version", 2: "client identifier rejected",
                    3: "server unavailable", 4: "bad user name or password",
                    5: "not authorised"}
_PUBACK = struct.Struct(">BBH")


class ProtocolError(Exception):
    """The broker broke MQTT 3.1.1; the text names the packet and what was wrong."""


def _remaining_length(n):
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text):
    data = text.encode()
    if len(data) > 0xFFFF:
        raise ValueError("%.40r... is longer than an MQTT string (65535 bytes)" % text)
    return struct.pack(">H", len(data)) + data


def connect_packet(client_id, keepalive_s, clean_session=False):
    r"""CONNECT for MQTT 3.1.1 (no will, no password: the certificate is the login).

    >>> connect_packet("c", 30)
    b'\x10\r\x00\x04MQTT\x04\x00\x00\x1e\x00\x01c'
    """
    body = _utf8("MQTT") + bytes((4, 0x02 if clean_session else 0)) \
        + struct.pack(">H", keepalive_s) + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(packet_id, topics):
    r"""SUBSCRIBE to [(filter, qos)].

    >>> subscribe_packet(1, [("a/+", 1)])
    b'\x82\x08\x00\x01\x00\x03a/+\x01'
    """
    body = struct.pack(">H", packet_id) + b"".join(_utf8(t) + bytes((q,)) for t, q in topics)
    return b"\x82" + _remaining_length(len(body)) + body


def puback_packets(packet_ids):
    """One PUBACK per id, as one string for one write."""
    return b"".join(_PUBACK.pack(0x40, 2, pid) for pid in packet_ids)


def parse(buf, pos, max_packet, max_packets=None):
    """Every complete packet in buf from pos, or the first max_packets of them: ([packet,
    ...], position after the last one).

    Packets: (CONNACK, session_present, return_code), (PUBLISH, topic, payload, packet_id,
    qos) with packet_id 0 at QoS 0, (SUBACK, packet_id, [return codes]), (PINGRESP,), and
    (OVERSIZE, topic, packet_id, qos, body_bytes, skip) for a PUBLISH whose remaining
    length exceeds max_packet: the caller drops ``skip`` bytes from the returned position.

    >>> parse(b"\\xd0\\x00\\xd0\\x00", 0, 1024, max_packets=1)
    ([(13,)], 2)
    """
    out = []
    end = len(buf)
    if max_packets is None:
        max_packets = end      # every packet takes at least 2 bytes
    while pos + 2 <= end and len(out) < max_packets:
        first = buf[pos]
        kind = first >> 4
        length, shift, at = 0, 0, pos + 1
        while True:
            if at >= end:
                return out, pos
            byte = buf[at]
            length |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length longer than 4 bytes (first byte 0x%02x)"
                                    % first)
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            if qos > 1:
                raise ProtocolError("PUBLISH with QoS %d on a QoS 1 subscription" % qos)
            if length > max_packet:
                head = 2 + (2 if qos else 0)
                if at + 2 > end or at + head + ((buf[at] << 8) | buf[at + 1]) > end:
                    return out, pos     # wait for the topic and packet id
                topic_len = (buf[at] << 8) | buf[at + 1]
                topic = _topic(buf, at + 2, topic_len)
                pid = (buf[at + 2 + topic_len] << 8) | buf[at + 3 + topic_len] if qos else 0
                out.append((OVERSIZE, topic, pid, qos, length, length))
                return out, at
        elif length > 64:
            raise ProtocolError("%d-byte body for packet type %d" % (length, kind))
        if at + length > end:
            return out, pos
        body_end = at + length
        if kind == PUBLISH:
            topic_len = (buf[at] << 8) | buf[at + 1] if length >= 2 else length
            start = at + 2 + topic_len + (2 if qos else 0)
            if start > body_end:
                raise ProtocolError("PUBLISH: topic of %d bytes in a %d-byte body"
                                    % (topic_len, length))
            pid = (buf[start - 2] << 8) | buf[start - 1] if qos else 0
            out.append((PUBLISH, _topic(buf, at + 2, topic_len), bytes(buf[start:body_end]),
                        pid, qos))
        elif kind == CONNACK and length == 2:
            out.append((CONNACK, buf[at] & 1, buf[at + 1]))
        elif kind == SUBACK and length >= 3:
            out.append((SUBACK, (buf[at] << 8) | buf[at + 1], list(buf[at + 2:body_end])))
        elif kind == PINGRESP and length == 0:
            out.append((PINGRESP,))
        else:
            raise ProtocolError("unexpected packet type %d with a %d-byte body (first byte "
                                "0x%02x)" % (kind, length, first))
        pos = body_end
    return out, pos


def _topic(buf, at, n):
    try:
        return bytes(buf[at:at + n]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("PUBLISH: topic is not UTF-8") from None
