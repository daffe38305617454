"""MQTT over wss: the same MQTT session (mqtt_link, mqtt_codec) on a WebSocket stream.

For networks where only 443-style traffic passes: Mosquitto's ``protocol websockets``
listener with TLS, subprotocol ``mqtt``. Every MQTT packet goes out as one binary message;
the broker's messages are read as one byte stream (MQTT over WebSocket may split or join
packets across messages). TCP connect, TLS handshake and the upgrade have their own
deadlines in wss_client; CONNACK and PUBACK wait for timeouts_ms.io here, as on MQTTS
(a single WebSocket read is bounded by the same io deadline inside wss_client).

Errors: a read that timed out reaches the MQTT session as the timeout it names (no
PUBACK, no CONNACK ...); every other WebSocket failure leaves as the WssError it is (a
LinkError with its ws kind and close code), and the session is not told goodbye.

Example::

    link = MqttWssLink(b"board-1", "broker.local", 443, "/mqtt", tls, keepalive_s=60,
                       connect_ms=5000, io_ms=5000, handshake_ms=10000,
                       max_message_bytes=4096)
    link.connect()
    link.publish(b"devices/board-1/readings", payload)   # returns once PUBACK arrived
"""

from micropython import const

from securenode import ws_frame
from securenode.events import emit
from securenode.link_error import LinkError
from securenode.mqtt_link import MqttLink
from securenode.wss_client import WssClient, WssError

_ETIMEDOUT = const(110)  # what a socket timeout is on a board
_ENOTCONN = const(107)


class WsStream:
    """Binary WebSocket messages as the byte stream the MQTT session reads and writes."""

    def __init__(self, client):
        self.client = client
        self.reset()

    def reset(self):
        """A new connection: nothing of the last one's messages is left to read."""
        self._msg = b""
        self._pos = 0

    def read(self, n, timeout_ms):
        """Up to n bytes of the current message; with timeout_ms 0, None when no frame has
        begun to arrive. Blocking reads are bounded by the wss client's io deadline."""
        client = self.client
        if not client.open:
            # Dropped after a WebSocket error: the session may still try to say goodbye.
            raise OSError(_ENOTCONN)
        while self._pos >= len(self._msg):
            try:
                got = client.poll() if timeout_ms == 0 else client.recv()
            except WssError as exc:
                if exc.kind == "ws_timeout":
                    raise OSError(_ETIMEDOUT)  # the session names what it waited for
                raise
            if got is None:
                return None
            opcode, payload = got
            if opcode == ws_frame.OP_BINARY:
                # A view of the client's buffer, not a copy: the next data message is read
                # only once this one is used up, and the decoder copies what it takes.
                self._msg = payload
                self._pos = 0
            elif opcode == ws_frame.OP_TEXT:
                client.close(1003, "MQTT needs binary messages")
                raise WssError("ws_protocol", client.peer, "text message on an MQTT stream",
                               1003)
            # ping (already answered) or pong: nothing for MQTT
        k = min(n, len(self._msg) - self._pos)
        self._pos += k
        return self._msg[self._pos - k:self._pos]

    def write(self, buf, n, timeout_ms):
        """buf[:n] as one binary message (one MQTT packet per message)."""
        try:
            self.client.send(memoryview(buf)[:n], ws_frame.OP_BINARY)
        except WssError as exc:
            if exc.kind == "ws_timeout":
                raise OSError(_ETIMEDOUT)
            raise

    def close(self):
        self.client.close()


class MqttWssLink(MqttLink):
    def __init__(self, client_id, host, port, path, tls, keepalive_s, connect_ms, io_ms,
                 handshake_ms, max_message_bytes):
        MqttLink.__init__(self, client_id, host, port, tls, keepalive_s, connect_ms, io_ms)
        self.path = path
        # Made once, with the link (the app makes it at boot, on a heap not yet fragmented
        # by readings), and reused by every connection: its frame buffers are never looked
        # for again in a fragmented heap.
        self._ws_stream = WsStream(WssClient(host, port, path, tls, connect_ms, io_ms,
                                             handshake_ms, max_message_bytes,
                                             subprotocols=("mqtt",)))

    def _open_stream(self):
        """TCP, pinned TLS, the WebSocket upgrade (subprotocol mqtt)."""
        stream = self._ws_stream
        stream.reset()
        ws = stream.client
        ws.connect()
        if ws.subprotocol != "mqtt":
            ws.close(1002, "no subprotocol")
            raise LinkError("ws_handshake", "%s accepted the upgrade without choosing the "
                            "mqtt subprotocol" % self.peer)
        emit("wss_connected", peer=self.peer, path=self.path, subprotocol=ws.subprotocol)
        return stream
