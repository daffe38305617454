"""The WebSocket upgrade (RFC 6455 4.1): loaded by wss_client only while connecting.

A board upgrades once per connection, so this code is imported for the handshake and
dropped right after (wss_client.connect): it never stays resident beside the readings,
and it is kept small because it is loaded at the connection's peak. The response is read
line by line into the client's frame buffer (no allocation per byte), and only the five
headers a client must judge are kept.

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


def upgrade(client):
    """Send the upgrade request on the client's TLS stream and judge the answer."""
    # Small functions on purpose: this module is loaded at the connection's peak, into a
    # heap the readings have fragmented, and each function's bytecode needs one free block
    # (one 700-byte function here cost 13 KB of smallest heap, bisected).
    if not hasattr(hashlib, "sha1"):
        # Without SHA-1 the server's answer cannot be checked: refuse rather than trust.
        raise WssError("ws_handshake", client.peer, "this port's hashlib has no sha1, so "
                       "Sec-WebSocket-Accept cannot be checked; refusing")
    key = binascii.b2a_base64(os.urandom(16)).strip()
    text = _request(client, key)
    client.write(text, len(text))
    text = None
    started = time.ticks_ms()
    one = bytearray(1)
    _status(client, _read_line(client, started, one)[0])
    _judge(client, _headers(client, started, one), accept_for(key).decode())


def _request(client, key):
    text = ("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            % (client.path, client.host if client.port == 443 else client.peer, key.decode()))
    if client.offered:
        text += "Sec-WebSocket-Protocol: %s\r\n" % ", ".join(client.offered)
    for name, value in client.headers:
        text += "%s: %s\r\n" % (name, value)
    return (text + "\r\n").encode()


def _status(client, line):
    # "HTTP/1.1 101 Switching Protocols"; 401/403 mean the token was refused.
    parts = line.split(b" ", 2)
    code = parts[1] if len(parts) > 1 else b""
    if not parts[0].startswith(b"HTTP/1.") or code != b"101":
        raise WssError("ws_refused" if code in (b"401", b"403") else "ws_handshake",
                       client.peer, "expected HTTP 101, got %s" % client.quote(_text(line)))


def _headers(client, started, one):
    # The wanted headers' values (None when absent), up to the blank line.
    got = [None] * len(_WANTED)
    total = lines = 0
    while True:
        line, size = _read_line(client, started, one)
        if not size:
            return got
        total += size
        lines += 1
        if total > _MAX_RESPONSE or lines > _MAX_LINES:
            raise WssError("ws_handshake", client.peer, "upgrade response too large")
        colon = line.find(b":")
        if colon <= 0:
            raise WssError("ws_handshake", client.peer, "malformed header line %s"
                           % client.quote(_text(line)))
        name = line[:colon].strip().lower()
        if name in _WANTED:
            if size > len(line):
                raise WssError("ws_handshake", client.peer, "%s header over %d bytes"
                               % (_text(name), len(line)))
            i = _WANTED.index(name)
            value = _text(line[colon + 1:]).strip()
            got[i] = value if got[i] is None else got[i] + ", " + value


def _judge(client, got, expected):
    upgrade_, connection, accept, extensions, chosen = got
    bad = None
    if (upgrade_ or "").lower() != "websocket":
        bad = "Upgrade header is %s, not websocket" % client.quote(upgrade_ or "")
    elif "upgrade" not in [t.strip().lower() for t in (connection or "").split(",")]:
        bad = "Connection header is %s, not Upgrade" % client.quote(connection or "")
    elif accept != expected:
        bad = "Sec-WebSocket-Accept is %s, expected %s" % (client.quote(accept or ""), expected)
    elif extensions is not None:
        bad = "server chose extensions %s we did not offer" % client.quote(extensions)
    elif chosen is not None and chosen not in client.offered:
        bad = "server chose subprotocol %s; we offered %s" % (
            client.quote(chosen), ", ".join(client.offered) or "none")
    if bad:
        raise WssError("ws_handshake", client.peer, bad)
    client.subprotocol = chosen


def _text(data):
    # Header bytes as printable ASCII; ports differ in what bytes.decode accepts.
    return "".join(chr(b) if 32 <= b < 127 else (" " if b == 9 else "?") for b in data)


def _read_line(client, started, one):
    # One line without CR LF: (its first len(client.out) bytes, its length). Read into the
    # client's frame buffer (free until the upgrade is done); a longer line (a proxy's
    # cookie) is skipped past that, as only five short headers matter. Byte by byte:
    # nothing past the blank line may be consumed (frames can follow in the same record).
    buf = client.out
    n = size = last = 0
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
        if not _read_byte(client, started, one):
            raise WssError("ws_handshake", client.peer, "connection closed during the "
                           "upgrade after %s" % client.quote(_text(buf[:n]) or "nothing"))
        c = one[0]
        if c == 10:
            break
        last = c
        size += 1
        if size > _MAX_RESPONSE:
            raise WssError("ws_handshake", client.peer, "upgrade response too large")
        if n < len(buf):
            buf[n] = c
            n += 1
    client.raw.settimeout(io_ms / 1000)
    if last == 13:  # CR LF
        size -= 1
        n = min(n, size)
    return bytes(buf[:n]), size


def _read_byte(client, started, one):
    try:
        return client.sock.readinto(one)
    except OSError as exc:
        if net.is_timeout(exc):
            raise WssError("ws_handshake_timeout", client.peer, "upgrade response stalled "
                           "after %d ms (deadline %d ms, %d ms per read)"
                           % (time.ticks_diff(time.ticks_ms(), started), client.handshake_ms,
                              client.io_ms))
        raise WssError("ws_handshake", client.peer, "connection lost during the upgrade (%s)"
                       % (exc,))
