"""Readings as JSON lines over pinned TLS: one reading per line, one ack line back.

The plain protocol the collector (tools/collector.py) also serves, for places where MQTT is
not wanted. Board to server, one JSON object per line: a reading (it has "seq"), a status
(no "seq"; "status": "online") or ``{"ping": 1}``. Server to board: ``{"ack": <seq>}``,
``{"ack": "status"}``, ``{"pong": 1}``, or ``{"nack": <seq>, "reason": "..."}`` for a reading
it refused (kept in its rejects table; the board counts it as delivered, as resending the
same bytes would be refused again).

Errors leave as ``LinkError`` with the same kinds as the MQTT link (the app handles every
link's failures as that one class): ack_timeout, link_lost, protocol.

Example::

    link = JsonlLink("collector.local", 8884, tls, connect_ms=5000, io_ms=5000)
    link.connect()                                  # NetError, TlsError
    link.publish(b"devices/b1/readings", payload)   # returns once {"ack": seq} came back
"""

import json
import time

from micropython import const

from securenode import net
from securenode.link_error import LinkError

_MAX_LINE = const(256)  # longest answer line accepted; checked byte by byte


class JsonlLink:
    def __init__(self, host, port, tls, connect_ms, io_ms):
        self.peer = "%s:%d" % (host, port)
        self.host = host
        self.port = port
        self._tls = tls
        self._connect_ms = connect_ms
        self._io_ms = io_ms
        self._sock = None
        self._line = bytearray(_MAX_LINE)
        self._last_tx_ms = time.ticks_ms()

    def connect(self):
        """TCP, then pinned TLS; a port that takes one root at a time tries each in turn."""
        roots = self._tls.root_sets
        for index, cadata in enumerate(roots):
            self._tls.cadata = cadata
            raw = net.open_tcp(self.host, self.port, self._connect_ms)
            try:
                self._sock = self._tls.wrap_socket(raw)
                return
            except Exception as exc:
                raw.close()
                if index + 1 < len(roots) and self._tls.is_verify_failure(exc):
                    continue
                raise self._tls.explain(exc, self.host, self.port)

    def publish(self, topic, payload, dup=False):
        """Send one reading line; return once the server acknowledged its seq (a resend is
        the same line: the server dedupes by seq, so ``dup`` changes nothing on the wire)."""
        self._last_tx_ms = time.ticks_ms()
        seq = json.loads(payload)["seq"]
        answer = self._exchange(payload, "ack for seq %d" % seq)
        if answer.get("ack") != seq and answer.get("nack") != seq:
            raise LinkError("protocol", "%s answered %s to seq %d"
                            % (self.peer, _quote(answer), seq))

    def publish_status(self, payload):
        """Send the board's status line (version, boot count, outbox depth, drops); True."""
        self._last_tx_ms = time.ticks_ms()
        if self._exchange(payload, "status ack").get("ack") != "status":
            raise LinkError("protocol", "%s did not acknowledge the status line" % self.peer)
        return True

    def ping(self):
        self._last_tx_ms = time.ticks_ms()
        if "pong" not in self._exchange(b'{"ping":1}', "pong"):
            raise LinkError("protocol", "%s did not answer the ping" % self.peer)

    def idle_ms(self):
        return time.ticks_diff(time.ticks_ms(), self._last_tx_ms)

    def check(self, dead_after_ms):
        """Nothing to do: this server only ever answers, and a dead link shows as a ping
        that is not answered within the io deadline."""

    def _exchange(self, line, waiting_for):
        try:
            self._sock.write(line)
            self._sock.write(b"\n")
            n = 0
            while True:
                c = self._sock.read(1)
                if not c:
                    raise LinkError("link_lost", "%s closed the connection while we waited "
                                    "for %s" % (self.peer, waiting_for))
                if c == b"\n":
                    break
                if n == _MAX_LINE:
                    raise LinkError("protocol", "%s sent a line longer than %d bytes"
                                    % (self.peer, _MAX_LINE))
                self._line[n] = c[0]
                n += 1
        except OSError as exc:
            if net.is_timeout(exc):
                raise LinkError("ack_timeout", "no %s from %s within %d ms"
                                % (waiting_for, self.peer, self._io_ms))
            raise LinkError("link_lost", "connection to %s lost while waiting for %s (%s)"
                            % (self.peer, waiting_for, exc))
        try:
            answer = json.loads(bytes(self._line[:n]))
        except ValueError:
            answer = None
        if type(answer) is not dict:
            raise LinkError("protocol", "%s sent a line that is not a JSON object" % self.peer)
        return answer

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _quote(answer):
    text = json.dumps(answer)
    return text if len(text) <= 60 else text[:60] + "..."
