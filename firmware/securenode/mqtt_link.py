"""MQTT over pinned TLS, with micropython-lib's umqtt.simple underneath.

umqtt.simple speaks MQTT; this adapter makes it safe on a board:
- TLS is always pinned and host-name checked, with either umqtt API: 1.3.4 (PyPI) takes
  ``ssl=True, ssl_params={...}`` for ``ussl.wrap_socket``; the current micropython-lib
  version takes ``ssl=<context>`` and calls ``wrap_socket(sock, server_hostname=...)``.
- every blocking step has a deadline (umqtt sets none, and its ``setblocking(True)`` after
  each read would clear one);
- umqtt's ``assert``s and bare ``MQTTException(n)`` become named ``LinkError``s.

Example::

    link = MqttLink("board-1", "broker.local", 8883, tls, keepalive_s=60,
                    connect_ms=5000, io_ms=5000)
    link.connect()                          # raises NetError, TlsError or LinkError
    link.publish(b"devices/board-1/readings", payload)   # returns once PUBACK arrived
"""

import errno
import socket
import time

from umqtt import simple as umqtt

from securenode import net
from securenode.link_error import LinkError
from securenode.pinned_tls import TlsError

from micropython import const

# The fixed header's flag nibble is DUP(8) QoS(6) RETAIN(1). umqtt.simple's publish() ORs its
# `retain` argument into that nibble unchecked (`pkt[0] |= qos << 1 | retain`, in 1.3.4 and
# in the current micropython-lib): passing _DUP there is how a resend carries the DUP flag
# without a copy of publish() here.
_DUP = const(8)
_PID_MAX = const(65535)
_GATHER_BYTES = const(256)  # a reading's whole PUBLISH: header, topic, id, ~90 B JSON

_CONNACK_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


_UNREACHABLE = tuple(getattr(errno, name) for name in ("ECONNREFUSED", "EHOSTUNREACH",
                                                         "ENETUNREACH") if hasattr(errno, name))


class _Sockets:
    # umqtt.simple finds `socket` in its module globals and opens the connection itself,
    # with no timeout: handing it this object puts our deadline on that socket.
    def __init__(self, connect_ms):
        self.connect_s = connect_ms / 1000
        self.raw = None

    def socket(self, *args):
        self.raw = socket.socket(*args)
        self.raw.settimeout(self.connect_s)
        # umqtt writes a PUBLISH in four pieces (header, topic, packet id, payload): with
        # Nagle on, the later pieces wait for the broker's delayed ACK (~40 ms per reading).
        # Feature detection: not every port exposes TCP_NODELAY.
        if hasattr(socket, "TCP_NODELAY") and hasattr(socket, "IPPROTO_TCP"):
            try:
                self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the port's lwIP refused: readings still go, only slower
        return self.raw

    def getaddrinfo(self, host, port, *args):
        return [(socket.AF_INET, socket.SOCK_STREAM, 0, "", net.resolve(host, port))]


class _DeadlineStream:
    # umqtt calls setblocking(True) after every read; on MicroPython that also clears the
    # socket's timeout, so a silent broker would block the board forever. Re-arm it here.
    # umqtt also writes one PUBLISH in five pieces; written as they come, each becomes its
    # own TLS record. Gathered until umqtt next reads (for the PUBACK), a reading leaves in one.
    def __init__(self, tls_sock, raw, io_s):
        self._sock = tls_sock
        self._raw = raw
        self._io_s = io_s
        self._out = bytearray(_GATHER_BYTES)
        self._out_view = memoryview(self._out)
        self._out_len = 0

    # Any byte from the peer proves the connection alive: last_rx_ms feeds the dead-link
    # check, last_tx_ms decides when a PINGREQ is due.
    last_rx_ms = 0
    last_tx_ms = 0

    def read(self, n):
        self.flush()
        data = self._sock.read(n)
        if data:
            self.last_rx_ms = time.ticks_ms()
        return data

    def write(self, buf, n=None):
        self.last_tx_ms = time.ticks_ms()
        if isinstance(buf, str):
            buf = buf.encode()
        if n is None:
            n = len(buf)
        if self._out_len + n > _GATHER_BYTES:
            self.flush()
            if n > _GATHER_BYTES:
                return self._sock.write(memoryview(buf)[:n])
        self._out_view[self._out_len:self._out_len + n] = memoryview(buf)[:n]
        self._out_len += n
        return n

    def flush(self):
        if self._out_len:
            pending = self._out_len
            self._out_len = 0
            self._sock.write(self._out_view[:pending])

    def setblocking(self, flag):
        if not flag:
            self.flush()  # while still blocking, under the io deadline
        self._sock.setblocking(flag)
        if flag:
            self._raw.settimeout(self._io_s)

    def close(self):
        try:
            self.flush()  # umqtt's DISCONNECT
        finally:
            self._sock.close()


class MqttLink:
    def __init__(self, client_id, host, port, tls, keepalive_s, connect_ms, io_ms,
                 user=None, password=None):
        self.client_id = client_id
        # Provisioned boards log in with a user name + password (from the base station)
        # instead of a client certificate; both travel only inside the pinned TLS.
        self._user = user
        self._password = password
        self.host = host
        self.port = port
        self.peer = "%s:%d" % (host, port)
        self._tls = tls
        self._keepalive_s = keepalive_s
        self._connect_ms = connect_ms
        self._io_ms = io_ms
        self._client = None
        self._will = None
        self.legacy_api = None

    def _new_client(self):
        client = umqtt.MQTTClient(self.client_id, self.host, self.port, user=self._user,
                                  password=self._password, keepalive=self._keepalive_s,
                                  ssl=self._tls)
        if self._will is not None:
            client.set_last_will(self._will[0], self._will[1], retain=True, qos=1)
        # Feature detection: 1.3.4 keeps ssl_params and wraps with ussl itself.
        self.legacy_api = hasattr(client, "ssl_params")
        if self.legacy_api:
            client.ssl = True
            client.ssl_params = self._tls.legacy_params()
        return client

    def connect(self):
        """Open TCP, TLS and the MQTT session; try each pinned root where a port needs to."""
        sockets = _Sockets(self._connect_ms)
        umqtt.socket = sockets
        roots = self._tls.root_sets
        for index, cadata in enumerate(roots):
            self._tls.cadata = cadata
            self._tls.handshake_started = False
            client = self._new_client()
            try:
                client.connect(clean_session=True)
            except Exception as exc:
                self._close(client)
                if index + 1 < len(roots) and self._tls.is_verify_failure(exc):
                    continue
                raise self._explain_connect(exc, client, sockets)
            client.sock = _DeadlineStream(client.sock, sockets.raw, self._io_ms / 1000)
            client.sock.last_rx_ms = client.sock.last_tx_ms = time.ticks_ms()
            self._client = client
            return

    def _explain_connect(self, exc, client, sockets):
        if isinstance(exc, (net.NetError, TlsError)):
            return exc
        if isinstance(exc, umqtt.MQTTException):
            code = exc.args[0] if exc.args else -1
            return LinkError("connack_refused", "CONNACK refused: %s (%s)"
                             % (_CONNACK_REFUSALS.get(code, "unknown reason"), code))
        if isinstance(exc, AssertionError):
            return LinkError("protocol", "%s sent something other than CONNACK" % self.peer)
        if isinstance(exc, IndexError):
            return LinkError("closed", "%s closed the connection before CONNACK (is this "
                             "device's certificate accepted there?)" % self.peer)
        if client.sock is sockets.raw or client.sock is None:
            # umqtt had not finished wrapping: TCP or the TLS handshake failed.
            if net.is_timeout(exc) and self.legacy_api:
                # 1.3.4 wraps inside connect(): TCP and TLS share the connect deadline.
                return TlsError("handshake_timeout", self.peer,
                                "no TCP connection and TLS handshake within %d ms"
                                % self._connect_ms, self._tls.pinned)
            if net.is_timeout(exc) and not self._tls.handshake_started:
                return net.NetError("connect", self.peer,
                                    "no answer within %d ms" % self._connect_ms)
            if isinstance(exc, OSError) and exc.args and exc.args[0] in _UNREACHABLE:
                return net.NetError("connect", self.peer, "refused or unreachable (%s)" % exc)
            return self._tls.explain(exc, self.host, self.port)
        if net.is_timeout(exc):
            return LinkError("connack_timeout", "%s completed TLS but sent no CONNACK within "
                             "%d ms" % (self.peer, self._io_ms))
        return LinkError("connect_failed", "%s: %s" % (self.peer, exc))

    def will(self, topic, payload):
        """Set the last will (QoS 1, retained) the broker publishes if we vanish; call before
        connect(). The same topic then carries publish_status().
        Example: ``link.will(b"devices/b1/status", b'{"status":"offline"}')``"""
        self._will = (topic, payload)

    def publish_status(self, payload):
        """Publish the board's status, retained, where the last will speaks; True if sent."""
        if self._will is None:
            return False
        self.publish(self._will[0], payload, retain=True)
        return True

    def publish(self, topic, payload, dup=False, retain=False):
        """Publish with QoS 1; returns when the broker's PUBACK has arrived.

        The wait is bounded by the io timeout (umqtt waits for PUBACK with no deadline of its
        own): a missing PUBACK raises LinkError("ack_timeout"), and the caller resends the
        reading on a new connection with ``dup=True``. On the ports a read timeout sticks to
        the TLS connection, so resending on the same one is not an option.
        """
        client = self._client
        # umqtt.simple counts pid up without a bound: 65536 goes out as 0 (1.3.4 packs it
        # into 16 bits), and 0 is not a valid packet id (MQTT 3.1.1 2.3.1). Wrap to 1.
        if client.pid >= _PID_MAX:
            client.pid = 0
        try:
            client.publish(topic, payload, retain=(_DUP if dup else 0) | (1 if retain else 0),
                           qos=1)
        except Exception as exc:
            raise self._explain_io(exc, "PUBACK")

    def check(self, dead_after_ms):
        """Handle what arrived (non-blocking) and raise LinkError("link_lost") when nothing
        at all came from the broker for dead_after_ms (1.5 x keepalive: a half-open link).

        Example: ``link.check(90000)`` in the idle loop of a board with keepalive 60 s.
        """
        try:
            self._client.check_msg()
        except Exception as exc:
            raise self._explain_io(exc, "PINGRESP")
        quiet_ms = time.ticks_diff(time.ticks_ms(), self._client.sock.last_rx_ms)
        if dead_after_ms and quiet_ms > dead_after_ms:
            raise LinkError("link_lost", "nothing from %s for %d ms (> 1.5 x keepalive): "
                            "half-open connection" % (self.peer, quiet_ms))

    def idle_ms(self):
        """Milliseconds since we last sent anything (a PINGREQ is due at keepalive / 2)."""
        return time.ticks_diff(time.ticks_ms(), self._client.sock.last_tx_ms)

    def ping(self):
        """Keep the session alive; umqtt.simple never sends PINGREQ on its own."""
        try:
            self._client.ping()
            self._client.check_msg()
        except Exception as exc:
            raise self._explain_io(exc, "PINGRESP")

    def _explain_io(self, exc, waiting_for):
        if net.is_timeout(exc):
            return LinkError("ack_timeout", "no %s from %s within %d ms"
                             % (waiting_for, self.peer, self._io_ms))
        if isinstance(exc, AssertionError):
            return LinkError("protocol", "%s sent a malformed packet while we waited for %s"
                             % (self.peer, waiting_for))
        if isinstance(exc, (IndexError, OSError)):
            return LinkError("link_lost", "connection to %s lost while waiting for %s (%s)"
                             % (self.peer, waiting_for, exc))
        return LinkError("link_lost", "%s: %s" % (self.peer, exc))

    def close(self):
        if self._client is not None:
            try:
                self._client.disconnect()
            except OSError:
                pass  # the link is going away either way; the broker sees EOF
            self._close(self._client)
            self._client = None

    def _close(self, client):
        if client.sock is not None:
            try:
                client.sock.close()
            except OSError:
                pass
