"""WebSocket framing (RFC 6455) for a client: pure encode/decode, no sockets.

The client side of the protocol only: frames we send are masked with a caller-supplied
4-byte mask (from ``os.urandom``: masks must be unpredictable, RFC 6455 10.3), frames we
receive must not be masked. Every length from the peer is checked against the configured
maximum *before* a buffer grows. Violations raise ``WsProtocolError`` carrying the close
code to send: 1002 (protocol), 1007 (bad UTF-8), 1009 (too big); 1006 is never sent, it
reports a stream that ended mid-frame.

Example::

    out = bytearray(14 + 125)
    n = encode_frame(out, OP_TEXT, b"hi", os.urandom(4))
    stream.write(out, n)
    reader = MessageReader(max_message_bytes=4096)
    opcode, payload = reader.read(stream)     # payload: memoryview, valid until next read
"""

import gc

from micropython import const

_OP_CONT = const(0)
OP_TEXT = const(1)
OP_BINARY = const(2)
OP_CLOSE = const(8)
OP_PING = const(9)
OP_PONG = const(10)

_CLOSE_NORMAL = const(1000)
_CLOSE_PROTOCOL = const(1002)
_CLOSE_NO_STATUS = const(1005)
_CLOSE_ABNORMAL = const(1006)
_CLOSE_BAD_DATA = const(1007)
_CLOSE_TOO_BIG = const(1009)

_FIN = const(0x80)
_RSV = const(0x70)
_MASKED = const(0x80)
_MAX_CONTROL = const(125)
_MAX_HEADER = const(14)
_MAX_REASON = const(123)  # a close payload is a 2-byte code plus at most 123 bytes
_SMALL_DATA = const(256)  # first data buffer: acks, commands, status


class WsProtocolError(Exception):
    """The peer broke RFC 6455: ``code`` is the close code to send, the text says how."""

    def __init__(self, code, detail):
        super().__init__("close %d: %s" % (code, detail))
        self.code = code


def header_into(out, opcode, length, mask, fin=True):
    """Write a masked client frame header into ``out``; return its length (6, 8 or 14).

    >>> out = bytearray(14)
    >>> header_into(out, OP_TEXT, 5, b"\\x01\\x02\\x03\\x04")
    6
    """
    out[0] = (_FIN if fin else 0) | opcode
    if length < 126:
        out[1] = _MASKED | length
        i = 2
    elif length < 0x10000:
        out[1] = _MASKED | 126
        out[2] = length >> 8
        out[3] = length & 0xFF
        i = 4
    else:
        out[1] = _MASKED | 127
        for k in range(8):
            out[2 + k] = (length >> (8 * (7 - k))) & 0xFF
        i = 10
    out[i] = mask[0]
    out[i + 1] = mask[1]
    out[i + 2] = mask[2]
    out[i + 3] = mask[3]
    return i + 4


def mask_into(out, start, payload, mask, offset=0, count=None):
    """XOR ``payload[offset:offset + count]`` with ``mask`` into ``out[start:]``.

    ``offset`` also sets the mask phase, so a long payload can be masked in pieces.

    >>> out = bytearray(2)
    >>> mask_into(out, 0, b"ab", b"\\x00\\x01\\x00\\x01")
    >>> bytes(out)
    b'ac'
    """
    if count is None:
        count = len(payload) - offset
    for i in range(count):
        out[start + i] = payload[offset + i] ^ mask[(offset + i) & 3]


def encode_frame(out, opcode, payload, mask, fin=True):
    """Encode one masked client frame into the preallocated ``out``; return its length.

    >>> out = bytearray(20)
    >>> n = encode_frame(out, OP_PING, b"", b"\\x00\\x00\\x00\\x00")
    >>> bytes(out[:n])
    b'\\x89\\x80\\x00\\x00\\x00\\x00'
    """
    n = len(payload)
    if opcode >= OP_CLOSE and n > _MAX_CONTROL:
        raise ValueError("control frame payload over 125 bytes")
    i = header_into(out, opcode, n, mask, fin)
    if i + n > len(out):
        raise ValueError("frame of %d bytes does not fit the %d-byte buffer" % (i + n, len(out)))
    mask_into(out, i, payload, mask)
    return i + n


def header_length(byte1):
    """Total header bytes announced by a frame's second byte (mask key included)."""
    n = byte1 & 0x7F
    size = 2 if n < 126 else (4 if n == 126 else 10)
    return size + 4 if byte1 & _MASKED else size


def announced_length(buf):
    """The payload length a complete frame header announces, unchecked.

    >>> announced_length(b"\\x82\\x7e\\x01\\x00")
    256
    """
    n = buf[1] & 0x7F
    if n == 126:
        return (buf[2] << 8) | buf[3]
    if n == 127:
        length = 0
        for k in range(2, 10):
            length = (length << 8) | buf[k]
        return length
    return n


def parse_header(buf, max_bytes, in_message=False, gathered=0):
    """Decode a server frame header from ``buf`` (the ``header_length(buf[1])`` bytes of a
    complete header: the caller reads that many before it asks).

    Returns (fin, opcode, masked, length, header_len), or raises WsProtocolError.
    ``in_message``: a fragmented data message is being reassembled, ``gathered`` bytes of
    it so far; ``max_bytes`` is the configured limit for a whole message.

    >>> parse_header(b"\\x81\\x05", 4096)
    (True, 1, False, 5, 2)
    """
    b0 = buf[0]
    b1 = buf[1]
    fin = bool(b0 & _FIN)
    opcode = b0 & 0x0F
    masked = bool(b1 & _MASKED)
    need = header_length(b1)
    if b0 & _RSV:
        # No extension was negotiated, so RSV1-3 must be zero (RFC 6455 5.2).
        raise WsProtocolError(_CLOSE_PROTOCOL, "reserved bits set (0x%02x)" % (b0 & _RSV))
    if masked:
        raise WsProtocolError(_CLOSE_PROTOCOL, "server frame is masked (RFC 6455 5.1)")
    if opcode not in (_OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise WsProtocolError(_CLOSE_PROTOCOL, "unknown opcode 0x%x" % opcode)
    if (b1 & 0x7F) == 127 and buf[2] & 0x80:
        raise WsProtocolError(_CLOSE_PROTOCOL, "64-bit length has its top bit set")
    length = announced_length(buf)
    if opcode >= OP_CLOSE:
        if not fin:
            raise WsProtocolError(_CLOSE_PROTOCOL, "fragmented control frame (opcode 0x%x)"
                                  % opcode)
        if length > _MAX_CONTROL:
            raise WsProtocolError(_CLOSE_PROTOCOL, "control frame of %d bytes (max 125)"
                                  % length)
    elif opcode == _OP_CONT:
        if not in_message:
            raise WsProtocolError(_CLOSE_PROTOCOL, "continuation frame without a message")
    elif in_message:
        raise WsProtocolError(_CLOSE_PROTOCOL, "new data frame inside a fragmented message")
    if opcode < OP_CLOSE and gathered + length > max_bytes:
        # Quote the configured limit, not the room left: that is the number a person can
        # find in config.json (wss.max_message_bytes).
        if gathered:
            raise WsProtocolError(_CLOSE_TOO_BIG, "message of %d bytes so far plus a %d-byte "
                                  "fragment exceeds the limit of %d bytes"
                                  % (gathered, length, max_bytes))
        raise WsProtocolError(_CLOSE_TOO_BIG, "frame announces %d bytes, limit %d"
                              % (length, max_bytes))
    return fin, opcode, masked, length, need


def utf8_step(data, state=0):
    """Check the next piece of a UTF-8 stream: return the state to pass with the next piece
    (0: the piece ended on a character boundary), or -1 as soon as a byte is invalid.

    Lets a fragmented text message be judged fragment by fragment (RFC 6455 8.1: fail
    fast), a character may span fragments. No overlongs, surrogates or > U+10FFFF.

    >>> state = utf8_step(b"\\xf0\\x9f")
    >>> state > 0, utf8_step(b"\\x98\\x80", state), utf8_step(b"\\xc3\\x28")
    (True, 0, -1)
    """
    # state: continuation bytes still due (bits 16+), the range the next one must lie in
    # (lo: bits 8-15, hi: bits 0-7). An int, so the caller keeps no object per message.
    need = state >> 16
    lo = (state >> 8) & 0xFF
    hi = state & 0xFF
    for c in data:
        if need:
            if c < lo or c > hi:
                return -1
            need -= 1
            lo = 0x80
            hi = 0xBF
        elif c < 0x80:
            continue
        elif 0xC2 <= c <= 0xDF:
            need, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            need = 2
            lo = 0xA0 if c == 0xE0 else 0x80
            hi = 0x9F if c == 0xED else 0xBF
        elif 0xF0 <= c <= 0xF4:
            need = 3
            lo = 0x90 if c == 0xF0 else 0x80
            hi = 0x8F if c == 0xF4 else 0xBF
        else:
            return -1
    return (need << 16) | (lo << 8) | hi if need else 0


def utf8_valid(data):
    """True when ``data`` is well-formed UTF-8 (no overlongs, surrogates or > U+10FFFF).

    Checked here, byte by byte, because ports differ in what ``str(b, "utf-8")`` accepts.

    >>> utf8_valid(b"\\xce\\xba"), utf8_valid(b"\\xed\\xa0\\x80")
    (True, False)
    """
    return utf8_step(data) == 0


def close_payload(code, reason=""):
    """The payload of a close frame: 2-byte code and a UTF-8 reason cut to fit 125 bytes.

    >>> close_payload(1000, "bye")
    b'\\x03\\xe8bye'
    """
    text = reason.encode() if isinstance(reason, str) else bytes(reason)
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON]
        while text and not utf8_valid(text):
            text = text[:-1]  # never cut a character in half
    return bytes(((code >> 8) & 0xFF, code & 0xFF)) + text


def close_code_valid(code):
    """True for codes a peer may send (RFC 6455 7.4, and the IANA registry's 1012-1014)."""
    return (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


def parse_close(payload):
    """(code, reason) from a received close payload; an empty one means 1005 (no status).

    >>> parse_close(b"\\x03\\xe8bye")
    (1000, 'bye')
    """
    n = len(payload)
    if n == 0:
        return _CLOSE_NO_STATUS, ""
    if n == 1:
        raise WsProtocolError(_CLOSE_PROTOCOL, "close payload of 1 byte")
    code = (payload[0] << 8) | payload[1]
    if not close_code_valid(code):
        raise WsProtocolError(_CLOSE_PROTOCOL, "invalid close code %d" % code)
    reason = payload[2:]
    if not utf8_valid(reason):
        raise WsProtocolError(_CLOSE_BAD_DATA, "close reason is not valid UTF-8")
    return code, str(bytes(reason), "utf-8")


def _read_exact(stream, view):
    # A stream may return fewer bytes than asked (non-blocking, or a CPython TLS socket).
    got = 0
    n = len(view)
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise WsProtocolError(_CLOSE_ABNORMAL, "stream ended mid-frame (%d of %d bytes)"
                                  % (got, n))
        got += k


class MessageReader:
    """Reads whole messages from a stream: reassembles fragments, bounds every length.

    ``read(stream)`` returns (opcode, payload) for each complete data message (OP_TEXT,
    OP_BINARY, UTF-8 checked fragment by fragment) and for each control frame (OP_PING,
    OP_PONG, OP_CLOSE) as it arrives, also between fragments. ``payload`` is a memoryview
    into a buffer reused by the next read. The data buffer is small (256 bytes) from the
    start and grows at most once, to the configured maximum, only after the announced
    length has been checked; a heap too fragmented for it is a 1009, not a crash.

    >>> import io
    >>> MessageReader(64).read(io.BytesIO(b"\\x82\\x02hi"))[0] == OP_BINARY
    True
    """

    def __init__(self, max_message_bytes):
        self.max_message_bytes = max_message_bytes
        # One buffer for a frame header (``hdr``: wss_client skips frames with it while
        # closing) and a control frame's payload.
        buf = memoryview(bytearray(_MAX_HEADER + _MAX_CONTROL))
        self.hdr = buf[:_MAX_HEADER]
        self._ctl = buf[_MAX_HEADER:]
        # The small data buffer now, with the reader (a link is made at boot, before the
        # readings fragment the heap); the configured maximum only if a message needs it.
        self._data = memoryview(bytearray(min(_SMALL_DATA, max_message_bytes)))
        self.reset()

    def reset(self):
        """Forget any half-read message (a new connection); the buffer is kept."""
        self._opcode = None   # opcode of the message being reassembled, or None
        self._size = 0        # bytes of it gathered so far
        self._utf8 = 0        # utf8_step state of a text message being reassembled
        self._first = -1      # first header byte, when a poll already read it
        self.unread = 0       # payload bytes of the current frame not read yet

    def push_first(self, byte):
        """The next frame's first byte was read already (a non-blocking poll)."""
        self._first = byte

    def _ensure(self, size):
        if size <= len(self._data):
            return
        # Acks and commands fit a small buffer; past that, take the configured maximum at
        # once: a message then needs no second copy (old and new side by side), and the
        # buffer is reused by every later message on this connection. A heap that cannot
        # spare the maximum in one block gets just what this message needs so far.
        want = self.max_message_bytes
        if size <= _SMALL_DATA < want:
            want = _SMALL_DATA
        fresh = None
        for attempt in (want, want, size):
            try:
                fresh = bytearray(attempt)
                break
            except MemoryError:
                gc.collect()
        if fresh is None:
            # A board must survive this: refuse the message (1009), keep running.
            raise WsProtocolError(_CLOSE_TOO_BIG, "no memory for a message of %d bytes so "
                                  "far (limit %d bytes)" % (size, self.max_message_bytes))
        fresh[:self._size] = self._data[:self._size]
        self._data = memoryview(fresh)

    def read(self, stream):
        while True:
            hv = self.hdr
            if self._first >= 0:
                hv[0] = self._first
                self._first = -1
                _read_exact(stream, hv[1:2])
            else:
                _read_exact(stream, hv[:2])
            need = header_length(hv[1])
            if need > 2:
                _read_exact(stream, hv[2:need])
            # Until the payload is in, a closing client must skip this many bytes to reach
            # the next frame (wss_client's close handshake after a protocol error).
            self.unread = announced_length(hv)
            fin, opcode, _, length, _ = parse_header(hv[:need], self.max_message_bytes,
                                                     self._opcode is not None, self._size)
            if opcode >= OP_CLOSE:
                view = self._ctl[:length]
                _read_exact(stream, view)
                self.unread = 0
                return opcode, view
            if self._opcode is None:
                self._opcode = opcode
                self._size = 0
                self._utf8 = 0
            start = self._size
            self._ensure(start + length)
            piece = self._data[start:start + length]
            _read_exact(stream, piece)
            self.unread = 0
            self._size += length
            if self._opcode == OP_TEXT:
                # Judged as each fragment arrives: bad UTF-8 in the first fragment that
                # carries it closes the connection there, not after the whole message.
                self._utf8 = utf8_step(piece, self._utf8)
                if self._utf8 < 0:
                    self.reset()
                    raise WsProtocolError(_CLOSE_BAD_DATA, "text message is not valid UTF-8 "
                                          "(in bytes %d..%d)" % (start, start + length))
            if not fin:
                continue
            opcode = self._opcode
            size = self._size
            truncated = self._utf8 != 0
            self.reset()
            if truncated:
                raise WsProtocolError(_CLOSE_BAD_DATA, "text message ends inside a UTF-8 "
                                      "character")
            return opcode, self._data[:size]
