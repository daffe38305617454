"""MQTT over wss: umqtt.simple on a WebSocket stream (subprotocol ``mqtt``, binary frames).

For networks where only 443-style traffic passes: Mosquitto's ``protocol websockets``
listener with TLS. ``WsStream`` gives umqtt the stream it expects (read(n), write(buf,
n), setblocking, close). Writes are gathered and sent as one binary message when umqtt
next reads (an MQTT client always reads after a request that has an answer), when the
buffer fills, or on close: a PUBLISH goes out as one frame, not four.

Example::

    link = MqttWssLink(b"board-1", "broker.local", 443, "/mqtt", tls, keepalive_s=60,
                       connect_ms=5000, io_ms=5000, handshake_ms=10000,
                       max_message_bytes=4096)
    link.connect()
    link.publish(b"devices/board-1/readings", payload)   # returns once PUBACK arrived
"""

import time

from micropython import const

from umqtt import simple as umqtt

from securenode import net, ws_frame
from securenode.events import emit
from securenode.link_error import LinkError
from securenode.mqtt_link import MqttLink
from securenode.pinned_tls import TlsError
from securenode.wss_client import WssClient, WssError
from securenode.wss_link import link_error

_TX_BYTES = const(512)


class WsStream:
    """A byte stream over binary WebSocket messages, in the shape umqtt.simple uses.

    Non-blocking reads (umqtt's check_msg) return None unless a frame has begun to
    arrive. ``last_rx_ms`` / ``last_tx_ms`` feed MqttLink's keepalive and dead-link checks.
    """

    last_rx_ms = 0
    last_tx_ms = 0

    def __init__(self, client):
        self.client = client
        self._msg = b""
        self._pos = 0
        self._tx = bytearray(_TX_BYTES)
        self._tx_len = 0
        self._blocking = True

    # umqtt opens its connection through socket.socket() / connect(addr).
    def connect(self, addr):
        self.client.connect()

    def settimeout(self, value):
        pass  # the wss client keeps its own deadlines

    def setblocking(self, flag):
        self._blocking = flag
        if not flag:
            self.flush()

    def write(self, buf, n=None):
        self.last_tx_ms = time.ticks_ms()
        if isinstance(buf, str):
            buf = buf.encode()  # a str topic: a stream writes its UTF-8 bytes
        if n is None:
            n = len(buf)
        if self._tx_len + n > len(self._tx):
            self.flush()
        if n > len(self._tx):
            self.client.send(memoryview(buf)[:n], ws_frame.OP_BINARY)
            return n
        self._tx[self._tx_len:self._tx_len + n] = memoryview(buf)[:n]
        self._tx_len += n
        return n

    def flush(self):
        if self._tx_len:
            n = self._tx_len
            self._tx_len = 0
            self.client.send(memoryview(self._tx)[:n], ws_frame.OP_BINARY)

    def read(self, n):
        self.flush()
        if self._pos >= len(self._msg) and not self._blocking and not self._poll():
            return None
        out = bytearray(n)
        got = 0
        while got < n:
            if self._pos >= len(self._msg):
                self._next()
            k = min(n - got, len(self._msg) - self._pos)
            out[got:got + k] = self._msg[self._pos:self._pos + k]
            self._pos += k
            got += k
        self.last_rx_ms = time.ticks_ms()
        return bytes(out)

    def _poll(self):
        while True:
            got = self.client.poll()
            if got is None:
                return False
            if self._take(got[0], got[1]):
                return True

    def _next(self):
        while True:
            opcode, payload = self.client.recv()
            if self._take(opcode, payload):
                return

    def _take(self, opcode, payload):
        if opcode == ws_frame.OP_BINARY:
            # Consumed before the next recv() reuses the buffer.
            self._msg = payload
            self._pos = 0
            return len(payload) > 0
        if opcode == ws_frame.OP_TEXT:
            self.client.close(1003, "MQTT needs binary messages")
            raise WssError("ws_protocol", self.client.peer,
                           "text message on an MQTT stream", 1003)
        return False  # ping (answered) or pong

    def close(self):
        try:
            self.flush()  # e.g. umqtt's DISCONNECT
        except WssError:
            pass  # closing either way
        self.client.close()


class _OneStream:
    # Stands in for umqtt's `socket` module: its connect() opens our wss stream.
    def __init__(self, stream):
        self.stream = stream

    def socket(self, *args):
        return self.stream

    def getaddrinfo(self, host, port, *args):
        return [(2, 1, 0, "", (host, port))]


class MqttWssLink(MqttLink):
    def __init__(self, client_id, host, port, path, tls, keepalive_s, connect_ms, io_ms,
                 handshake_ms, max_message_bytes):
        MqttLink.__init__(self, client_id, host, port, tls, keepalive_s, connect_ms, io_ms)
        self.path = path
        self._handshake_ms = handshake_ms
        self._max_message_bytes = max_message_bytes

    def connect(self):
        """Open TCP, pinned TLS, the WebSocket upgrade (subprotocol mqtt), then MQTT."""
        ws = WssClient(self.host, self.port, self.path, self._tls, self._connect_ms,
                       self._io_ms, self._handshake_ms, self._max_message_bytes,
                       subprotocols=("mqtt",))
        stream = WsStream(ws)
        umqtt.socket = _OneStream(stream)
        client = umqtt.MQTTClient(self.client_id, self.host, self.port,
                                  keepalive=self._keepalive_s, ssl=False)
        if self._will is not None:
            client.set_last_will(self._will[0], self._will[1], retain=True, qos=1)
        self.legacy_api = hasattr(client, "ssl_params")
        try:
            client.connect(clean_session=True)
        except Exception as exc:
            ws.close()
            raise self._explain_wss(exc, "CONNACK")
        if ws.subprotocol != "mqtt":
            ws.close(1002, "no subprotocol")
            raise LinkError("ws_handshake", "%s accepted the upgrade without choosing the "
                            "mqtt subprotocol" % self.peer)
        emit("wss_connected", peer=self.peer, path=self.path, subprotocol=ws.subprotocol)
        stream.last_rx_ms = stream.last_tx_ms = time.ticks_ms()
        self._client = client

    def _explain_wss(self, exc, waiting_for):
        if isinstance(exc, (net.NetError, TlsError)):
            return exc
        if isinstance(exc, WssError):
            return link_error(exc, waiting_for)
        if isinstance(exc, umqtt.MQTTException):
            code = exc.args[0] if exc.args else -1
            return LinkError("connack_refused", "CONNACK refused (%s) by %s" % (code, self.peer))
        if isinstance(exc, (AssertionError, IndexError)):
            return LinkError("protocol", "%s sent a malformed packet while we waited for %s"
                             % (self.peer, waiting_for))
        return LinkError("link_lost", "%s: %s" % (self.peer, exc))

    def _explain_io(self, exc, waiting_for):
        return self._explain_wss(exc, waiting_for)

    def _close(self, client):
        if client.sock is not None:
            try:
                client.sock.close()
            except (OSError, WssError):
                pass
