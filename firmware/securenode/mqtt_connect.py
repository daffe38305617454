r"""MQTT 3.1.1 CONNECT to bytes: once per connection, so loaded for it and dropped after.

Part of the client codec (mqtt_codec: the same rules, buffers the caller owns, EncodeError
naming what does not fit); kept apart because a board sends one CONNECT per connection and
the checks and field layout of it need not stay resident between them (issue 10). The
session is always the one this firmware opens: clean, and a last will (when there is one)
published with QoS 1 and retained.

Example::

    >>> buf = bytearray(32)
    >>> n = encode_connect(buf, b"b1", 60)
    >>> bytes(buf[:n])
    b'\x10\x0e\x00\x04MQTT\x04\x02\x00<\x00\x02b1'
"""

from micropython import const

from securenode.mqtt_codec import (EncodeError, _b, _check_str, _length_bytes, _put_str,
                                   put_remaining_length)

_CONNECT = const(1)  # the packet type (MQTT 3.1.1 2.2.1)
_MAX_ID = const(65535)
_E_FITS = const(21)
_E_KEEPALIVE = const(23)
_E_PASSWORD = const(24)
# Fields an error names (mqtt_codec's _F_*, mqtt_errors' _FIELDS).
_F_WILL_TOPIC = const(1)
_F_WILL_PAYLOAD = const(2)
_F_USER = const(3)
_F_PASSWORD = const(4)
_F_CLIENT_ID = const(5)


def connect_length(client_id, will=None, user=None, password=None):
    """Bytes a CONNECT with these fields takes on the wire.

    >>> connect_length(b"b1"), connect_length(b"b1", (b"s", b"off"))
    (16, 24)
    """
    body = _connect_body(client_id, will, user, password)
    return 1 + _length_bytes(body) + body


def _connect_body(client_id, will, user, password):
    body = 10 + 2 + len(_b(client_id))
    if will is not None:
        body += 4 + len(_b(will[0])) + len(will[1])
    if user is not None:
        body += 2 + len(_b(user))
    if password is not None:
        body += 2 + len(_b(password))
    return body


def encode_connect(buf, client_id, keepalive_s, will=None, user=None, password=None):
    r"""Write a CONNECT (protocol level 4, clean session) into ``buf``; return its length.
    ``will`` is (topic, payload): what the broker publishes, QoS 1 and retained, when the
    client vanishes without a DISCONNECT.

    >>> buf = bytearray(32)
    >>> n = encode_connect(buf, b"b1", 60, (b"s", b"off"))
    >>> bytes(buf[:n])
    b'\x10\x16\x00\x04MQTT\x04.\x00<\x00\x02b1\x00\x01s\x00\x03off'
    """
    client_id = _b(client_id)
    if not 0 <= keepalive_s <= _MAX_ID:
        raise EncodeError(_E_KEEPALIVE, keepalive_s)
    if password is not None and user is None:
        raise EncodeError(_E_PASSWORD)
    flags = 0x02  # clean session
    if will is not None:
        will_topic = _b(will[0])
        will_payload = will[1]
        _check_str(will_topic, _F_WILL_TOPIC)
        _check_str(will_payload, _F_WILL_PAYLOAD)
        flags |= 0x04 | 1 << 3 | 0x20  # a will, its QoS 1, retained
    if user is not None:
        user = _b(user)
        _check_str(user, _F_USER)
        flags |= 0x80
    if password is not None:
        password = _b(password)
        _check_str(password, _F_PASSWORD)
        flags |= 0x40
    _check_str(client_id, _F_CLIENT_ID)
    body = _connect_body(client_id, will, user, password)
    total = 1 + _length_bytes(body) + body
    if total > len(buf):
        raise EncodeError(_E_FITS, _CONNECT, total, len(buf))
    buf[0] = _CONNECT << 4
    offset = _put_str(buf, put_remaining_length(buf, 1, body), b"MQTT")
    buf[offset] = 4  # protocol level 4 = MQTT 3.1.1
    buf[offset + 1] = flags
    buf[offset + 2] = keepalive_s >> 8
    buf[offset + 3] = keepalive_s & 0xFF
    offset = _put_str(buf, offset + 4, client_id)
    if will is not None:
        offset = _put_str(buf, offset, will_topic)
        offset = _put_str(buf, offset, will_payload)
    if user is not None:
        offset = _put_str(buf, offset, user)
    if password is not None:
        offset = _put_str(buf, offset, password)
    return offset
