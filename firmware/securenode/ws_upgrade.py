"""The WebSocket upgrade (RFC 6455 4.1): loaded by wss_client only while connecting.

A board upgrades once per connection, so this code is imported for the handshake and
dropped right after (wss_client.connect): it never stays resident beside the readings.
The response is read line by line into the client's frame buffer (no allocation per byte),
and only the five headers a client must judge are kept.

Checked: the 101 status, ``Upgrade: websocket``, ``Connection`` holding ``Upgrade``,
``Sec-WebSocket-Accept`` = base64(SHA-1(key + GUID)) for a key from ``os.urandom``, a
subprotocol only from those offered, no extension (none is offered). A deadline holds over
the whole response and each read; the response is bounded in lines, size and line length.

Example::

    ws_upgrade.upgrade(client)   # client: a WssClient with TLS up; raises WssError
"""

import binascii
import hashlib
import os
import time

from micropython import const

from securenode import net
from securenode.wss_client import WssError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_RESPONSE = const(8192)    # the whole upgrade response
_MAX_LINES = const(64)
# The headers we judge, lower case; repeated ones fold into one value (RFC 9110 5.3).
_WANTED = (b"upgrade", b"connection", b"sec-websocket-accept", b"sec-websocket-extensions",
           b"sec-websocket-protocol")


def accept_for(key):
    """The Sec-WebSocket-Accept a server must answer to ``key`` (base64 text, bytes).

    >>> accept_for(b"dGhlIHNhbXBsZSBub25jZQ==")
    b's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    return binascii.b2a_base64(hashlib.sha1(key + _GUID).digest()).strip()


def request(client, key):
    """The upgrade request's bytes (headers such as the bearer token included)."""
    host = client.host if client.port == 443 else client.peer
    text = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            % (client.path, host, key.decode()))
    if client.offered:
        text += "Sec-WebSocket-Protocol: %s\r\n" % ", ".join(client.offered)
    for name, value in client.headers:
        text += "%s: %s\r\n" % (name, value)
    return (text + "\r\n").encode()


def upgrade(client):
    """Send the upgrade request on the client's TLS stream and judge the answer."""
    if not hasattr(hashlib, "sha1"):
        # Without SHA-1 the server's answer cannot be checked: refuse rather than trust.
        raise WssError("ws_handshake", client.peer, "this port's hashlib has no sha1, so "
                       "Sec-WebSocket-Accept cannot be checked; refusing")
    key = binascii.b2a_base64(os.urandom(16)).strip()
    data = request(client, key)
    client.write(data, len(data))
    data = None
    started = time.ticks_ms()
    one = bytearray(1)
    status = _line(client, started, one)
    parts = status.split(" ", 2)
    code = parts[1] if len(parts) > 1 else ""
    if not parts[0].startswith("HTTP/1.") or code != "101":
        raise WssError("ws_refused" if code in ("401", "403") else "ws_handshake", client.peer,
                       "expected HTTP 101, got %s" % client.quote(status))
    got = [None] * len(_WANTED)
    total = len(status)
    lines = 0
    buf = client.out
    while True:
        n = _read_line(client, started, one)
        if not n:
            break
        total += n
        lines += 1
        if total > _MAX_RESPONSE or lines > _MAX_LINES:
            raise WssError("ws_handshake", client.peer, "upgrade response too large")
        line = bytes(buf[:n])
        colon = line.find(b":")
        if colon <= 0:
            raise WssError("ws_handshake", client.peer, "malformed header line %s"
                           % client.quote(_text(line, n)))
        name = line[:colon].strip().lower()
        if name in _WANTED:
            i = _WANTED.index(name)
            value = _text(line, n)[colon + 1:].strip()
            got[i] = value if got[i] is None else got[i] + ", " + value
    _judge(client, got, accept_for(key))


def _judge(client, got, expected):
    upgrade_, connection, accept, extensions, chosen = got
    if (upgrade_ or "").lower() != "websocket":
        raise WssError("ws_handshake", client.peer, "Upgrade header is %s, not websocket"
                       % client.quote(upgrade_ or ""))
    if "upgrade" not in [t.strip().lower() for t in (connection or "").split(",")]:
        raise WssError("ws_handshake", client.peer, "Connection header is %s, not Upgrade"
                       % client.quote(connection or ""))
    if (accept or "").encode() != expected:
        raise WssError("ws_handshake", client.peer, "Sec-WebSocket-Accept is %s, expected %s"
                       % (client.quote(accept or ""), expected.decode()))
    if extensions is not None:
        raise WssError("ws_handshake", client.peer, "server chose extensions %s we did not "
                       "offer" % client.quote(extensions))
    if chosen is not None and chosen not in client.offered:
        raise WssError("ws_handshake", client.peer, "server chose subprotocol %s; we offered "
                       "%s" % (client.quote(chosen), ", ".join(client.offered) or "none"))
    client.subprotocol = chosen


def _line(client, started, one):
    return _text(client.out, _read_line(client, started, one))


def _text(buf, n):
    # Header bytes as printable ASCII; ports differ in what bytes.decode accepts.
    return "".join(chr(b) if 32 <= b < 127 else (" " if b == 9 else "?") for b in buf[:n])


def _read_line(client, started, one):
    # One line into the client's frame buffer (free until the upgrade is done); its length
    # without CR LF. Byte by byte: nothing past the blank line may be consumed (frames can
    # follow in the same TLS record).
    buf = client.out
    limit = len(buf)
    n = 0
    io_ms = client.io_ms
    set_ms = -1
    while True:
        left = client.handshake_ms - time.ticks_diff(time.ticks_ms(), started)
        if left <= 0:
            raise WssError("ws_handshake_timeout", client.peer, "no complete upgrade "
                           "response within %d ms" % client.handshake_ms)
        if left < set_ms or set_ms < 0:
            # Each read waits at most io_ms and never past the deadline (set only when it
            # shrinks: a float per byte would be garbage on every port).
            set_ms = min(left, io_ms)
            client.raw.settimeout(set_ms / 1000)
        try:
            k = client.sock.readinto(one)
        except OSError as exc:
            if net.is_timeout(exc):
                raise WssError("ws_handshake_timeout", client.peer, "upgrade response "
                               "stalled after %d ms (deadline %d ms, %d ms per read)"
                               % (time.ticks_diff(time.ticks_ms(), started),
                                  client.handshake_ms, io_ms))
            raise WssError("ws_handshake", client.peer, "connection lost during the "
                           "upgrade (%s)" % (exc,))
        if not k:
            raise WssError("ws_handshake", client.peer, "connection closed during the "
                           "upgrade after %s" % client.quote(_text(buf, n) or "nothing"))
        c = one[0]
        if c == 10:
            break
        if n >= limit:
            raise WssError("ws_handshake", client.peer, "upgrade response line over %d "
                           "bytes" % limit)
        buf[n] = c
        n += 1
    client.raw.settimeout(io_ms / 1000)
    if n and buf[n - 1] == 13:
        n -= 1
    return n
