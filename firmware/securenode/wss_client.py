"""A WebSocket client over the pinned, host-name-checked TLS stream (RFC 6455, wss://).

What it checks that small MicroPython clients skip: the whole upgrade (ws_upgrade.py,
loaded only while connecting: 101, Upgrade, Connection, Sec-WebSocket-Accept from a key
out of ``os.urandom``, subprotocol, no extension); every frame length against
``max_message_bytes`` before a buffer grows; UTF-8 in text, fragment by fragment; a
deadline on the upgrade and on every read. Extra headers (``Authorization: Bearer ...``)
are sent but never appear in errors: anything a peer echoes is scrubbed.

Example::

    ws = WssClient("ingest.local", 443, "/ingest/board-1", tls, connect_ms=5000,
                   io_ms=5000, handshake_ms=10000, max_message_bytes=4096,
                   headers=(("Authorization", "Bearer " + token),))
    ws.connect()                       # raises NetError, TlsError or WssError
    ws.send(b'{"seq":1}')              # one text message
    opcode, payload = ws.recv()        # data message, or ws_frame.OP_PONG
    ws.close()
"""

import os
import time

from micropython import const

from securenode import net, settings, ws_frame
from securenode.link_error import LinkError
from securenode.pinned_tls import TlsError
from securenode.ws_frame import WsProtocolError

# ws_frame's opcodes and close codes, as constants of this module (no global lookups).
_OP_TEXT = const(1)
_OP_CLOSE = const(8)
_OP_PING = const(9)
_OP_PONG = const(10)
_CLOSE_NORMAL = const(1000)
_CLOSE_NO_STATUS = const(1005)
_CLOSE_ABNORMAL = const(1006)
# Frames go out masked in pieces of 256 bytes (a reading, an MQTT PUBLISH: one TLS record);
# while connecting, the same buffer holds the start of each upgrade response line. Small,
# as it is one block that a fragmented heap must find when a link is made.
_OUT = const(14 + 256)
_QUOTE_CHARS = const(80)


class WssError(LinkError):
    """A wss failure with ``peer``: ``kind`` is a stable name, ``close_code`` the code
    sent or received (None when there was none). The text quotes what came back.

    A LinkError, so the app and the links handle it as every other link failure.
    """

    def __init__(self, kind, peer, detail, close_code=None):
        LinkError.__init__(self, kind, "%s (peer %s)" % (detail, peer))
        self.peer = peer
        self.close_code = close_code


class WssClient:
    def __init__(self, host, port, path, tls, connect_ms, io_ms, handshake_ms,
                 max_message_bytes, subprotocols=(), headers=()):
        # Public names: ws_upgrade.py reads them while connecting.
        self.host = host
        self.port = port
        self.path = path
        self.peer = "%s:%d" % (host, port)
        self.subprotocol = None
        self.tls = tls
        self.connect_ms = connect_ms
        self.io_ms = io_ms
        self._io_s = io_ms / 1000  # one float, not one per poll
        self.handshake_ms = handshake_ms
        self.offered = tuple(subprotocols)
        self.headers = tuple(headers)
        self.reader = ws_frame.MessageReader(max_message_bytes)
        self.out = bytearray(_OUT)
        self._one = bytearray(1)
        self.raw = None
        self.sock = None
        self.open = False

    def connect(self):
        """TCP, pinned TLS (trying each root where the port needs it), then the upgrade.

        A client may connect again after it closed or failed: buffers are reused."""
        self._drop()
        self.subprotocol = None
        self.reader.reset()
        roots = self.tls.root_sets
        for index, cadata in enumerate(roots):
            self.tls.cadata = cadata
            raw = net.open_tcp(self.host, self.port, self.connect_ms)
            try:
                sock = self.tls.wrap_socket(raw)
            except Exception as exc:
                raw.close()
                if index + 1 < len(roots) and self.tls.is_verify_failure(exc):
                    continue
                if isinstance(exc, TlsError):
                    raise
                raise self.tls.explain(exc, self.host, self.port)
            self.raw = raw
            self.sock = sock
            break
        # The handshake code is needed once per connection: loaded for it, dropped after.
        from securenode import ws_upgrade
        try:
            ws_upgrade.upgrade(self)
        except Exception:
            self._drop()
            raise
        finally:
            ws_upgrade = None
            settings.forget("securenode.ws_upgrade")
        self.open = True

    def quote(self, text):
        """``text`` for an error message: the token hidden, printable ASCII, cut short."""
        for name, secret in self.headers:
            if name.lower() == "authorization" and secret:
                text = text.replace(secret, "<hidden>")
                token = secret.split(" ")[-1]
                if token:
                    text = text.replace(token, "<hidden>")
        out = "".join(ch if " " <= ch <= "~" else "?" for ch in text[:_QUOTE_CHARS])
        return '"%s"%s' % (out, "..." if len(text) > _QUOTE_CHARS else "")

    # --- messages ---------------------------------------------------------------------
    def send(self, payload, opcode=_OP_TEXT):
        """Send one message (one frame) masked with a fresh key from os.urandom; opcode
        ws_frame.OP_PING sends a ping, whose pong comes from recv() as (OP_PONG, payload)."""
        if not self.open:
            raise WssError("ws_closed", self.peer, "connection is not open")
        self._frame(opcode, payload)

    def _frame(self, opcode, payload):
        mask = os.urandom(4)
        out = self.out
        n = len(payload)
        i = ws_frame.header_into(out, opcode, n, mask)
        done = 0
        while True:
            k = min(n - done, len(out) - i)
            ws_frame.mask_into(out, i, payload, mask, done, k)
            self.write(out, i + k)
            done += k
            i = 0
            if done >= n:
                return

    def poll(self):
        """Like recv(), but None at once when no frame has begun to arrive."""
        if not self.open:
            raise WssError("ws_closed", self.peer, "connection is not open")
        self.raw.settimeout(0)
        try:
            k = self.sock.readinto(self._one)
        except OSError as exc:
            if not net.is_timeout(exc):
                self._drop()
                raise WssError("ws_closed", self.peer, "connection lost (%s)" % (exc,),
                               _CLOSE_ABNORMAL)
            k = None  # EAGAIN: nothing there
        finally:
            if self.raw is not None:
                self.raw.settimeout(self._io_s)
        if k is None:
            return None
        if not k:
            self._drop()
            raise WssError("ws_closed", self.peer, "connection closed without a close frame",
                           _CLOSE_ABNORMAL)
        self.reader.push_first(self._one[0])
        return self.recv()

    def recv(self):
        """The next message or control frame as (opcode, payload).

        A data message (OP_TEXT, OP_BINARY) comes whole; OP_PING comes after it was
        answered, OP_PONG as received. A close from the server is answered and raised
        as WssError("ws_closed"). The payload is valid until the next recv().
        """
        if not self.open:
            raise WssError("ws_closed", self.peer, "connection is not open")
        try:
            opcode, payload = self.reader.read(self.sock)
        except WsProtocolError as exc:
            if exc.code == _CLOSE_ABNORMAL:
                self._drop()
                raise WssError("ws_closed", self.peer, str(exc), exc.code)
            self._fail(exc.code, str(exc))
        except OSError as exc:
            self._drop()
            if net.is_timeout(exc):
                raise WssError("ws_timeout", self.peer, "nothing within %d ms" % self.io_ms)
            raise WssError("ws_closed", self.peer, "connection lost (%s)" % (exc,),
                           _CLOSE_ABNORMAL)
        if opcode == _OP_PING:
            self._frame(_OP_PONG, payload)
        elif opcode == _OP_CLOSE:
            self._closed_by_peer(payload)
        return opcode, payload

    def _closed_by_peer(self, payload):
        try:
            code, reason = ws_frame.parse_close(payload)
        except WsProtocolError as exc:
            self._fail(exc.code, str(exc))
        try:
            echo = code if code != _CLOSE_NO_STATUS else _CLOSE_NORMAL
            self._frame(_OP_CLOSE, ws_frame.close_payload(echo))
        except WssError:
            pass  # the peer may already be gone; it asked to close anyway
        else:
            self._finish_close(True)  # the server ends TCP first (RFC 6455 7.1.1)
        self._drop()
        raise WssError("ws_closed", self.peer, "server closed with %d %s"
                       % (code, self.quote(reason)), code)

    def _fail(self, code, detail):
        # Tell the peer why, finish the close handshake, drop (RFC 6455 7.1.7).
        try:
            self._frame(_OP_CLOSE, ws_frame.close_payload(code, detail[:40]))
        except WssError:
            pass
        else:
            self._finish_close(False)
        self._drop()
        raise WssError("ws_protocol", self.peer, detail, code)

    def close(self, code=_CLOSE_NORMAL, reason=""):
        """Close handshake: send close, wait (one io deadline) for the server's, drop."""
        if self.open:
            try:
                self._frame(_OP_CLOSE, ws_frame.close_payload(code, reason))
            except WssError:
                return  # dropped already
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
        hdr = self.reader.hdr
        scratch = memoryview(self.out)  # no frame is sent after a close: it is free
        skip = self.reader.unread
        self.reader.reset()
        try:
            while True:
                while skip > 0:
                    k = min(skip, len(scratch))
                    if not self._drain_exact(scratch[:k], started):
                        return
                    skip -= k
                if peer_closed:
                    break
                if not self._drain_exact(hdr[:2], started):
                    return
                need = ws_frame.header_length(hdr[1])
                if need > 2 and not self._drain_exact(hdr[2:need], started):
                    return
                skip = ws_frame.announced_length(hdr)
                peer_closed = (hdr[0] & 0x0F) == _OP_CLOSE
            # Nothing follows a close frame but the end of the stream: wait for it.
            while self._drain_exact(scratch, started):
                pass
        except (OSError, WsProtocolError):
            pass  # timeout, reset, TLS alert: closing either way

    def _drain_exact(self, view, started):
        # Fill view within what is left of the close deadline; False at EOF or deadline.
        left = self.io_ms - time.ticks_diff(time.ticks_ms(), started)
        if left <= 0:
            return False
        self.raw.settimeout(left / 1000)
        got = 0
        while got < len(view):
            k = self.sock.readinto(view[got:])
            if not k:
                return False
            got += k
        return True

    def write(self, buf, n):
        try:
            self.sock.write(buf, n)
        except OSError as exc:
            self._drop()
            if net.is_timeout(exc):
                raise WssError("ws_timeout", self.peer, "write blocked for %d ms" % self.io_ms)
            raise WssError("ws_closed", self.peer, "connection lost (%s)" % (exc,),
                           _CLOSE_ABNORMAL)

    def _drop(self):
        self.open = False
        for s in (self.sock, self.raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.sock = None
        self.raw = None
