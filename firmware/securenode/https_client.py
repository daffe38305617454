"""A minimal HTTP/1.1 client over a stream that is already (pinned-)TLS: one request per
connection, a Content-Length body, a bounded response, a deadline on the whole exchange.

MicroPython's image has no ``requests``; the base station's API needs no more than this.
The codec (``encode_request``, ``parse_head``) is pure and tested byte for byte on CPython
and MicroPython; ``exchange`` only reads and writes.

Example::

    status, body = exchange(tls_sock, "POST", "base.local:8443", "/v1/auth/request",
                            b'{"device_id": "board-1"}', max_body=2048, deadline_ms=10000)
"""

import time

from micropython import const

_MAX_HEAD_BYTES = const(1024)
_MAX_STATUS = const(599)


class HttpError(Exception):
    """The peer's HTTP answer was unusable: ``kind`` is protocol, too_large or timeout."""

    def __init__(self, kind, peer, detail):
        super().__init__("http %s from %s: %s" % (kind, peer, detail))
        self.kind = kind
        self.peer = peer


def encode_request(method, host, path, body, content_type="application/json"):
    """The request bytes: HTTP/1.1, Connection: close, Content-Length.

    >>> encode_request("POST", "b:8443", "/x", b"{}")
    b'POST /x HTTP/1.1\\r\\nHost: b:8443\\r\\nConnection: close\\r\\nContent-Type: application/json\\r\\nContent-Length: 2\\r\\n\\r\\n{}'
    """
    if body is None:
        body = b""
    head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, host)
    if body or method == "POST":
        head += "Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body))
    return head.encode() + b"\r\n" + body


def parse_head(head, peer="peer"):
    """Status code and Content-Length from a response head (without the blank line).

    Raises HttpError("protocol") for anything but a plain HTTP/1.x head with a
    Content-Length (chunked bodies are refused: our base station never sends them).

    >>> parse_head(b"HTTP/1.1 200 OK\\r\\nContent-Length: 12")
    (200, 12)
    """
    lines = head.split(b"\r\n")
    first = lines[0].split(b" ", 2)
    if len(first) < 2 or not first[0].startswith(b"HTTP/1.") or not _digits(first[1], 3):
        raise HttpError("protocol", peer, "not an HTTP/1.x status line")
    status = int(first[1])
    if status < 100 or status > _MAX_STATUS:
        raise HttpError("protocol", peer, "status %d out of range" % status)
    length = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HttpError("protocol", peer, "header line without a colon")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not _digits(value, 9) or (length is not None and length != int(value)):
                raise HttpError("protocol", peer, "bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding":
            raise HttpError("protocol", peer, "Transfer-Encoding is not supported")
    if length is None:
        raise HttpError("protocol", peer, "no Content-Length")
    return status, length


def _digits(value, max_len):
    if not 1 <= len(value) <= max_len:
        return False
    for c in value:
        if not 48 <= c <= 57:
            return False
    return True


def exchange(stream, method, host, path, body, max_body, deadline_ms, peer=None):
    """Send one request on stream and return (status, body bytes).

    Each read is bounded by the stream's own timeout; deadline_ms bounds the whole
    exchange. A body longer than max_body is refused before it is read.
    """
    peer = peer or host
    start = time.ticks_ms()
    stream.write(encode_request(method, host, path, body))
    head = bytearray()
    # Byte by byte up to the blank line: the head is small, and reading past it could
    # block on a peer that keeps the connection open.
    while head[-4:] != b"\r\n\r\n":
        if len(head) >= _MAX_HEAD_BYTES:
            raise HttpError("too_large", peer, "response head over %d bytes" % _MAX_HEAD_BYTES)
        if time.ticks_diff(time.ticks_ms(), start) > deadline_ms:
            raise HttpError("timeout", peer, "no complete response within %d ms" % deadline_ms)
        c = stream.read(1)
        if not c:
            raise HttpError("protocol", peer, "connection closed inside the response head")
        head += c
    status, length = parse_head(bytes(head[:-4]), peer)
    if length > max_body:
        raise HttpError("too_large", peer, "body of %d bytes, limit %d" % (length, max_body))
    data = b""
    while len(data) < length:
        if time.ticks_diff(time.ticks_ms(), start) > deadline_ms:
            raise HttpError("timeout", peer, "no complete response within %d ms" % deadline_ms)
        chunk = stream.read(length - len(data))
        if not chunk:
            raise HttpError("protocol", peer, "connection closed after %d of %d body bytes"
                            % (len(data), length))
        data += chunk
    return status, data
