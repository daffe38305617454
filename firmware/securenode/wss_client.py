"""A WebSocket client over the pinned, host-name-checked TLS stream (RFC 6455, wss://).

What it checks that small MicroPython clients skip: the 101 status, ``Upgrade`` and
``Connection`` headers, ``Sec-WebSocket-Accept`` = base64(SHA-1(key + GUID)) for a key
from ``os.urandom``, a subprotocol only from those offered, no extension we did not ask
for; every frame length against ``max_message_bytes`` before a buffer grows; UTF-8 in
text; a deadline on the upgrade and on every read. Extra headers (``Authorization:
Bearer ...``) are sent but never appear in errors: anything a peer echoes is scrubbed.

Example::

    ws = WssClient("ingest.local", 443, "/ingest/board-1", tls, connect_ms=5000,
                   io_ms=5000, handshake_ms=10000, max_message_bytes=4096,
                   headers=(("Authorization", "Bearer " + token),))
    ws.connect()                       # raises NetError, TlsError or WssError
    ws.send(b'{"seq":1}')              # one text message
    opcode, payload = ws.recv()        # data message, or OP_PONG
    ws.close()
"""

import binascii
import hashlib
import os
import time

from micropython import const

from securenode import net, ws_frame
from securenode.pinned_tls import TlsError
from securenode.ws_frame import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsProtocolError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_LINE = const(1024)        # one response header line
_MAX_RESPONSE = const(8192)    # the whole upgrade response
_MAX_HEADERS = const(64)
_CHUNK = const(512)            # masked payload is written in pieces of this size
_QUOTE_CHARS = const(80)


class WssError(Exception):
    """A wss failure with ``peer``: ``kind`` is a stable name, ``close_code`` the code
    sent or received (None when there was none). The text quotes what came back."""

    def __init__(self, kind, peer, detail, close_code=None):
        self.detail = "%s (peer %s)" % (detail, peer)
        super().__init__("%s: %s" % (kind, self.detail))
        self.kind = kind
        self.peer = peer
        self.close_code = close_code


def accept_for(key):
    """The Sec-WebSocket-Accept a server must answer to ``key`` (base64 text, bytes).

    >>> accept_for(b"dGhlIHNhbXBsZSBub25jZQ==")
    b's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    sha1 = getattr(hashlib, "sha1", None)
    if sha1 is None:
        # Without SHA-1 the server's answer cannot be checked: refuse rather than trust.
        raise WssError("ws_handshake", "-", "this port's hashlib has no sha1")
    return binascii.b2a_base64(sha1(key + _GUID).digest()).strip()


def _text(line):
    # Header bytes as printable ASCII; ports differ in what bytes.decode accepts.
    return "".join(chr(b) if 32 <= b < 127 else (" " if b == 9 else "?") for b in line)


class WssClient:
    def __init__(self, host, port, path, tls, connect_ms, io_ms, handshake_ms,
                 max_message_bytes, subprotocols=(), headers=()):
        self.host = host
        self.port = port
        self.path = path
        self.peer = "%s:%d" % (host, port)
        self.subprotocol = None
        self._tls = tls
        self._connect_ms = connect_ms
        self._io_s = io_ms / 1000
        self._handshake_ms = handshake_ms
        self._offered = tuple(subprotocols)
        self._headers = tuple(headers)
        # Values a hostile peer might echo back; never let them into error text.
        self._secrets = [v for n, v in self._headers if n.lower() == "authorization"]
        self._reader = ws_frame.MessageReader(max_message_bytes)
        self._out = bytearray(14 + _CHUNK)
        self._raw = None
        self._sock = None
        self.open = False

    # --- connection -------------------------------------------------------------------
    def connect(self):
        """TCP, pinned TLS (trying each root where the port needs it), then the upgrade."""
        self._reader.reset()
        self._reader.reset()
        roots = self._tls.root_sets
        for index, cadata in enumerate(roots):
            self._tls.cadata = cadata
            raw = net.open_tcp(self.host, self.port, self._connect_ms)
            try:
                sock = self._tls.wrap_socket(raw)
            except Exception as exc:
                raw.close()
                if index + 1 < len(roots) and self._tls.is_verify_failure(exc):
                    continue
                if isinstance(exc, TlsError):
                    raise
                raise self._tls.explain(exc, self.host, self.port)
            self._raw = raw
            self._sock = sock
            break
        try:
            self._upgrade()
        except Exception:
            self._drop()
            raise
        self.open = True

    def _request(self, key):
        host = self.host if self.port == 443 else self.peer
        lines = ["GET %s HTTP/1.1" % self.path, "Host: %s" % host, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: %s" % key.decode(),
                 "Sec-WebSocket-Version: 13"]
        if self._offered:
            lines.append("Sec-WebSocket-Protocol: %s" % ", ".join(self._offered))
        for name, value in self._headers:
            lines.append("%s: %s" % (name, value))
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _upgrade(self):
        key = binascii.b2a_base64(os.urandom(16)).strip()
        try:
            expected = accept_for(key)
        except WssError:
            raise WssError("ws_handshake", self.peer, "this port's hashlib has no sha1, so "
                           "Sec-WebSocket-Accept cannot be checked; refusing")
        self._write_all(self._request(key))
        started = time.ticks_ms()
        status = self._line(started)
        headers = {}
        total = len(status)
        while True:
            line = self._line(started)
            total += len(line)
            if not line:
                break
            if total > _MAX_RESPONSE or len(headers) >= _MAX_HEADERS:
                raise WssError("ws_handshake", self.peer, "upgrade response too large")
            colon = line.find(":")
            if colon <= 0:
                raise WssError("ws_handshake", self.peer,
                               "malformed header line %s" % self._quote(line))
            name = line[:colon].strip().lower()
            value = line[colon + 1:].strip()
            # Repeated headers fold into one comma-separated value (RFC 9110 5.3).
            headers[name] = headers[name] + ", " + value if name in headers else value
        self._check_response(status, headers, expected)

    def _check_response(self, status, headers, expected):
        parts = status.split(" ", 2)
        code = parts[1] if len(parts) > 1 else ""
        if not parts[0].startswith("HTTP/1.") or code != "101":
            kind = "ws_refused" if code in ("401", "403") else "ws_handshake"
            raise WssError(kind, self.peer, "expected HTTP 101, got %s" % self._quote(status))
        upgrade = headers.get("upgrade", "")
        if upgrade.lower() != "websocket":
            raise WssError("ws_handshake", self.peer,
                           "Upgrade header is %s, not websocket" % self._quote(upgrade))
        tokens = [t.strip().lower() for t in headers.get("connection", "").split(",")]
        if "upgrade" not in tokens:
            raise WssError("ws_handshake", self.peer, "Connection header is %s, not Upgrade"
                           % self._quote(headers.get("connection", "")))
        accept = headers.get("sec-websocket-accept", "")
        if accept.encode() != expected:
            raise WssError("ws_handshake", self.peer,
                           "Sec-WebSocket-Accept is %s, expected %s"
                           % (self._quote(accept), expected.decode()))
        if "sec-websocket-extensions" in headers:
            raise WssError("ws_handshake", self.peer, "server chose extensions %s we did not "
                           "offer" % self._quote(headers["sec-websocket-extensions"]))
        chosen = headers.get("sec-websocket-protocol")
        if chosen is not None and chosen not in self._offered:
            raise WssError("ws_handshake", self.peer, "server chose subprotocol %s; we offered "
                           "%s" % (self._quote(chosen), ", ".join(self._offered) or "none"))
        self.subprotocol = chosen

    def _line(self, started):
        # Byte by byte: the upgrade is read once per connection, and nothing past the
        # blank line may be consumed (frames can follow in the same TLS record).
        line = bytearray()
        while True:
            left = self._handshake_ms - time.ticks_diff(time.ticks_ms(), started)
            if left <= 0:
                raise WssError("ws_handshake_timeout", self.peer, "no complete upgrade "
                               "response within %d ms" % self._handshake_ms)
            self._raw.settimeout(min(left / 1000, self._io_s))
            try:
                byte = self._sock.read(1)
            except OSError as exc:
                if net.is_timeout(exc):
                    raise WssError("ws_handshake_timeout", self.peer, "upgrade response "
                                   "stalled after %d ms (deadline %d ms, %d ms per read)"
                                   % (time.ticks_diff(time.ticks_ms(), started),
                                      self._handshake_ms, int(self._io_s * 1000)))
                raise WssError("ws_handshake", self.peer, "connection lost during the "
                               "upgrade (%s)" % (exc,))
            if not byte:
                raise WssError("ws_handshake", self.peer, "connection closed during the "
                               "upgrade after %s" % self._quote(_text(line) or "nothing"))
            if byte == b"\n":
                break
            line += byte
            if len(line) > _MAX_LINE:
                raise WssError("ws_handshake", self.peer, "upgrade response line over %d "
                               "bytes" % _MAX_LINE)
        self._raw.settimeout(self._io_s)
        if line and line[-1] == 13:
            line = line[:-1]
        return _text(line)

    def _quote(self, text):
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "<hidden>")
                token = secret.split(" ")[-1]
                if token:
                    text = text.replace(token, "<hidden>")
        out = []
        for ch in text[:_QUOTE_CHARS]:
            out.append(ch if " " <= ch <= "~" else "?")
        return '"%s"%s' % ("".join(out), "..." if len(text) > _QUOTE_CHARS else "")

    # --- messages ---------------------------------------------------------------------
    def send(self, payload, opcode=OP_TEXT):
        """Send one message (one frame) masked with a fresh key from os.urandom."""
        self._require_open()
        self._frame(opcode, payload)

    def _frame(self, opcode, payload):
        mask = os.urandom(4)
        out = self._out
        n = len(payload)
        i = ws_frame.header_into(out, opcode, n, mask)
        done = 0
        while True:
            k = min(n - done, len(out) - i)
            ws_frame.mask_into(out, i, payload, mask, done, k)
            self._write(out, i + k)
            done += k
            i = 0
            if done >= n:
                return

    def ping(self, payload=b""):
        """Send a ping; its pong comes back from recv() as (OP_PONG, payload)."""
        self._require_open()
        self._frame(OP_PING, payload)

    def poll(self):
        """Like recv(), but None at once when no frame has begun to arrive."""
        self._require_open()
        self._raw.settimeout(0)
        try:
            first = self._sock.read(1)
        except OSError as exc:
            if net.is_timeout(exc):
                first = None  # EAGAIN: nothing there
            else:
                self._drop()
                raise WssError("ws_closed", self.peer, "connection lost (%s)" % (exc,),
                               ws_frame.CLOSE_ABNORMAL)
        finally:
            if self._raw is not None:
                self._raw.settimeout(self._io_s)
        if first is None:
            return None
        if not first:
            self._drop()
            raise WssError("ws_closed", self.peer, "connection closed without a close frame",
                           ws_frame.CLOSE_ABNORMAL)
        self._reader.push_first(first[0])
        return self.recv()

    def recv(self):
        """The next message or control frame as (opcode, payload).

        A data message (OP_TEXT, OP_BINARY) comes whole; OP_PING comes after it was
        answered, OP_PONG as received. A close from the server is answered and raised
        as WssError("ws_closed"). The payload is valid until the next recv().
        """
        self._require_open()
        try:
            opcode, payload = self._reader.read(self._sock)
        except WsProtocolError as exc:
            if exc.code == ws_frame.CLOSE_ABNORMAL:
                self._drop()
                raise WssError("ws_closed", self.peer, str(exc), exc.code)
            self._fail(exc.code, str(exc))
        except OSError as exc:
            self._drop()
            if net.is_timeout(exc):
                raise WssError("ws_timeout", self.peer, "nothing within %d ms"
                               % int(self._io_s * 1000))
            raise WssError("ws_closed", self.peer, "connection lost (%s)" % (exc,),
                           ws_frame.CLOSE_ABNORMAL)
        if opcode == OP_PING:
            self._frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            self._closed_by_peer(payload)
        return opcode, payload

    def _closed_by_peer(self, payload):
        try:
            code, reason = ws_frame.parse_close(payload)
        except WsProtocolError as exc:
            self._fail(exc.code, str(exc))
        try:
            echo = code if code != ws_frame.CLOSE_NO_STATUS else ws_frame.CLOSE_NORMAL
            self._frame(OP_CLOSE, ws_frame.close_payload(echo))
        except WssError:
            pass  # the peer may already be gone; it asked to close anyway
        else:
            self._finish_close(True)  # the server ends TCP first (RFC 6455 7.1.1)
        self._drop()
        raise WssError("ws_closed", self.peer, "server closed with %d %s"
                       % (code, self._quote(reason)), code)

    def _fail(self, code, detail):
        # Tell the peer why, finish the close handshake, drop (RFC 6455 7.1.7).
        try:
            self._frame(OP_CLOSE, ws_frame.close_payload(code, detail[:40]))
        except WssError:
            pass
        else:
            self._finish_close(False)
        self._drop()
        raise WssError("ws_protocol", self.peer, detail, code)

    def close(self, code=ws_frame.CLOSE_NORMAL, reason=""):
        """Close handshake: send close, wait (one io deadline) for the server's, drop."""
        if not self.open:
            self._drop()
            return
        try:
            self._frame(OP_CLOSE, ws_frame.close_payload(code, reason))
        except WssError:
            self._drop()
            return
        self._finish_close(False)
        self._drop()

    def _finish_close(self, peer_closed):
        # After our close frame: within one io deadline, discard what the server still
        # sends until its close frame and the end of TCP. Closing a socket with unread bytes
        # in its receive buffer makes the kernel send RST instead of FIN, and a peer that
        # meets the RST may never read the close record we just queued (real TCP showed
        # it; the simulator did not).
        # Frames are skipped by their announced lengths (after a protocol error the reader
        # knows how much of the bad frame is unread) with reads of exact sizes: on the
        # MicroPython ports a read that ends at TLS close_notify returns the bytes before
        # it, and the end of the stream is then never reported again.
        started = time.ticks_ms()
        limit_ms = int(self._io_s * 1000)
        hdr = self._reader._hdr_view
        scratch = memoryview(self._out)  # no frame is sent after a close: it is free
        skip = self._reader.unread
        self._reader.reset()
        try:
            while not peer_closed:
                while skip > 0:
                    k = min(skip, len(scratch))
                    if not self._drain_exact(scratch[:k], started, limit_ms):
                        return
                    skip -= k
                if not self._drain_exact(hdr[:2], started, limit_ms):
                    return
                need = ws_frame.header_length(hdr[1])
                if need > 2 and not self._drain_exact(hdr[2:need], started, limit_ms):
                    return
                skip = ws_frame.announced_length(hdr)
                peer_closed = (hdr[0] & 0x0F) == OP_CLOSE
            while skip > 0:  # the server's close payload
                k = min(skip, len(scratch))
                if not self._drain_exact(scratch[:k], started, limit_ms):
                    return
                skip -= k
            # Nothing follows a close frame but the end of the stream: wait for it.
            while self._drain_exact(scratch, started, limit_ms):
                pass
        except (OSError, WsProtocolError):
            pass  # timeout, reset, TLS alert: closing either way

    def _drain_exact(self, view, started, limit_ms):
        # Fill view within what is left of the close deadline; False at EOF or deadline.
        left = limit_ms - time.ticks_diff(time.ticks_ms(), started)
        if left <= 0:
            return False
        self._raw.settimeout(left / 1000)
        got = 0
        while got < len(view):
            k = self._sock.readinto(view[got:])
            if not k:
                return False
            got += k
        return True

    def _require_open(self):
        if not self.open:
            raise WssError("ws_closed", self.peer, "connection is not open")

    def _write(self, buf, n):
        try:
            self._sock.write(buf, n)
        except OSError as exc:
            self._drop()
            if net.is_timeout(exc):
                raise WssError("ws_timeout", self.peer, "write blocked for %d ms"
                               % int(self._io_s * 1000))
            raise WssError("ws_closed", self.peer, "connection lost (%s)" % (exc,),
                           ws_frame.CLOSE_ABNORMAL)

    def _write_all(self, data):
        self._write(data, len(data))

    def _drop(self):
        self.open = False
        for s in (self._sock, self._raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._sock = None
        self._raw = None
