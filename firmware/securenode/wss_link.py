"""Readings to an ingest endpoint over wss: one text message each, delivered when acked.

The endpoint authenticates the board by the bearer token in the upgrade request (the
path names the device, the token must belong to it), answers each reading with
``{"ack": <seq>}``, and may send commands, e.g. ``{"cmd": "set_interval",
"interval_ms": 5000, "id": 7}``. A command is handed to the app's callback and answered
with ``{"cmd_ack": 7, "ok": true}`` (or ``"ok": false, "detail": "..."``).

Errors leave as ``LinkError`` (WssError is one) with the wss kind (the app handles every
link's failures as that one class): ws_refused, ws_handshake, ws_protocol, ws_closed,
ack_timeout, ...

Example::

    link = WssLink("board-1", "ingest.local", 443, "/ingest/board-1", token, tls,
                   connect_ms=5000, io_ms=5000, handshake_ms=10000,
                   max_message_bytes=4096,
                   on_command=lambda message: commands.apply(node, message))
    link.connect()
    link.publish(topic, payload)       # returns once {"ack": seq} arrived
"""

import json
import time

from securenode import ws_frame
from securenode.events import emit
from securenode.link_error import LinkError
from securenode.wss_client import WssClient, WssError


def _named(exc, waiting_for):
    # A read that timed out while we waited for an answer is that answer's timeout.
    if exc.kind == "ws_timeout":
        return LinkError("ack_timeout", "no %s from %s: %s" % (waiting_for, exc.peer, exc))
    return exc


class WssLink:
    def __init__(self, device_id, host, port, path, token, tls, connect_ms, io_ms,
                 handshake_ms, max_message_bytes, on_command=None):
        self.device_id = device_id
        self.peer = "%s:%d" % (host, port)
        self.legacy_api = False
        self._io_ms = io_ms
        self._on_command = on_command
        self._last_tx_ms = time.ticks_ms()
        self._ws = WssClient(host, port, path, tls, connect_ms, io_ms, handshake_ms,
                             max_message_bytes,
                             headers=(("Authorization", "Bearer " + token),))

    def connect(self):
        self._ws.connect()
        emit("wss_connected", peer=self.peer, path=self._ws.path)

    def publish(self, topic, payload, dup=False):
        """Send one reading as a text message; return once its {"ack": seq} arrived (a
        resend is the same message: the endpoint dedupes by seq, ``dup`` changes nothing)."""
        seq = json.loads(payload)["seq"]
        self._last_tx_ms = time.ticks_ms()
        try:
            self._ws.send(payload)
            self._wait(seq)
        except WssError as exc:
            raise _named(exc, "ack for seq %d" % seq)

    def publish_status(self, payload):
        """The ingest protocol carries readings only: nothing is sent; False."""
        return False

    def ping(self):
        """WebSocket ping; returns once the pong came back (commands are handled meanwhile)."""
        self._last_tx_ms = time.ticks_ms()
        try:
            self._ws.send(b"k", ws_frame.OP_PING)
            self._wait(None)
        except WssError as exc:
            raise _named(exc, "pong")

    def idle_ms(self):
        return time.ticks_diff(time.ticks_ms(), self._last_tx_ms)

    def check(self, dead_after_ms):
        """Handle what the endpoint sent between readings (commands) without blocking; a
        dead link shows as a ping without pong within the io deadline."""
        while True:
            got = self._ws.poll()
            if got is None:
                return
            self._handle(got[0], got[1])

    def _wait(self, seq):
        # seq None: wait for a pong. The overall deadline holds even if the peer keeps
        # talking (commands, stale acks) without ever answering what we wait for.
        started = time.ticks_ms()
        while True:
            opcode, payload = self._ws.recv()
            message = self._handle(opcode, payload)
            if opcode == ws_frame.OP_PONG and seq is None:
                return
            if message is not None and seq is not None and message.get("ack") == seq:
                return
            if time.ticks_diff(time.ticks_ms(), started) > self._io_ms:
                raise LinkError("ack_timeout", "%s sent messages for %d ms but no %s"
                                % (self.peer, self._io_ms,
                                   "pong" if seq is None else "ack for seq %d" % seq))

    def _handle(self, opcode, payload):
        # Commands are applied wherever they arrive; a text message is returned for the
        # caller to match against the ack it waits for.
        if opcode == ws_frame.OP_TEXT:
            message = self._parse(payload)
            if "cmd" in message:
                self._command(message)
                return None
            return message
        if opcode == ws_frame.OP_BINARY:
            self._ws.close(1003, "binary not accepted")
            raise LinkError("protocol", "%s sent a binary message" % self.peer)
        return None

    def _parse(self, payload):
        try:
            message = json.loads(bytes(payload))
        except ValueError:
            message = None
        except MemoryError:
            # Within wss.max_message_bytes, but no room on this heap to parse it: refuse
            # the message, keep the board running (the reading is sent again).
            self._ws.close(1009, "no memory to parse")
            raise LinkError("protocol", "%s sent a %d-byte message this board has no memory "
                            "to parse" % (self.peer, len(payload)))
        if type(message) is not dict:
            self._ws.close(1007, "not a JSON object")
            raise LinkError("protocol", "%s sent a text message that is not a JSON object"
                            % self.peer)
        return message

    def _command(self, message):
        ok, detail = False, "unknown command"
        if self._on_command is not None:
            ok, detail = self._on_command(message)
        reply = {"cmd_ack": message.get("id"), "ok": ok}
        if detail:
            reply["detail"] = detail
        self._ws.send(json.dumps(reply).encode())

    def close(self):
        self._ws.close()
