"""TCP with a deadline on every step a board can bound.

DNS on a board goes through lwIP's resolver, which has its own retry timer and cannot be
given a deadline from Python; everything after it (connect, reads, writes) can.

Every connection has Nagle's algorithm off: our protocols write a packet and wait for its
answer, and with Nagle a packet written while the TLS handshake's last flight is unacked
waits for the peer's delayed ACK (connect + CONNACK 108 ms instead of 31 ms on loopback,
measured on the unix port, shared/PORT_FACTS.md).

Example::

    from securenode import net
    sock = net.open_tcp("broker.local", 8883, connect_ms=5000)   # raises NetError
"""

import errno
import socket

from micropython import const


class NetError(Exception):
    """A network step failed: ``step`` is dns or connect; ``peer`` names who."""

    def __init__(self, step, peer, detail):
        super().__init__("%s %s: %s" % (step, peer, detail))
        self.step = step
        self.peer = peer


# lwIP and Linux agree on these numbers (the unix port's socket module lacks the names, and
# looking them up by name would intern both names on the board for good).
_IPPROTO_TCP = const(6)
_TCP_NODELAY = const(1)


def is_timeout(exc):
    # A socket timeout is ETIMEDOUT on ESP32/ESP8266 and EAGAIN on the unix port; through
    # mbedTLS after the handshake it comes back negated (-ETIMEDOUT).
    if not isinstance(exc, OSError) or not exc.args or not isinstance(exc.args[0], int):
        return False
    code = abs(exc.args[0])
    return code == errno.ETIMEDOUT or code == errno.EAGAIN


def nodelay(sock):
    """Turn Nagle's algorithm off on a TCP socket; True if the port let us.

    By number: lwIP's and Linux's agree (the unix port has no ``IPPROTO_TCP``/``TCP_NODELAY``
    names but takes ``setsockopt(6, 1, 1)``).

    >>> nodelay(socket.socket())
    True
    """
    try:
        sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        return True
    except (OSError, AttributeError):
        return False  # readings still go, only slower


def open_tcp(host, port, connect_ms):
    """A connected TCP socket (Nagle off), or NetError naming the step and the deadline."""
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except OSError as exc:
        raise NetError("dns", host, "cannot resolve (%s)" % (exc,))
    if not infos:
        raise NetError("dns", host, "no address")
    sock = socket.socket()
    sock.settimeout(connect_ms / 1000)
    nodelay(sock)
    try:
        sock.connect(infos[0][-1])
    except OSError as exc:
        sock.close()
        peer = "%s:%d" % (host, port)
        if is_timeout(exc):
            raise NetError("connect", peer, "no answer within %d ms (timeouts_ms.connect)"
                           % connect_ms)
        code = exc.args[0] if exc.args else None
        # lwIP answers a RST to our SYN (nothing listens) with ECONNRESET, Linux with
        # ECONNREFUSED: either way the broker is unreachable, a connect failure, not a TLS one.
        if code == errno.ECONNREFUSED or code == errno.ECONNRESET:
            raise NetError("connect", peer, "refused: nothing listens there (%s)" % (exc,))
        raise NetError("connect", peer, "unreachable (%s)" % (exc,))
    return sock
