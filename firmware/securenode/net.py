"""TCP with a deadline on every step a board can bound.

DNS on a board goes through lwIP's resolver, which has its own retry timer and cannot be
given a deadline from Python; everything after it (connect, reads, writes) can.

Example::

    from securenode import net
    sock = net.open_tcp("broker.local", 8883, connect_ms=5000)   # raises NetError
"""

import errno
import socket


class NetError(Exception):
    """A network step failed: ``step`` is dns or connect; ``peer`` names who."""

    def __init__(self, step, peer, detail):
        super().__init__("%s %s: %s" % (step, peer, detail))
        self.step = step
        self.peer = peer


_TIMEOUTS = (errno.ETIMEDOUT, errno.EAGAIN)


def is_timeout(exc):
    # A socket timeout is ETIMEDOUT on ESP32/ESP8266 and EAGAIN on the unix port; through
    # mbedTLS after the handshake it comes back negated (-ETIMEDOUT).
    if not isinstance(exc, OSError) or not exc.args or not isinstance(exc.args[0], int):
        return False
    return abs(exc.args[0]) in _TIMEOUTS


def resolve(host, port):
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except OSError as exc:
        raise NetError("dns", host, "cannot resolve (%s)" % (exc,))
    if not infos:
        raise NetError("dns", host, "no address")
    return infos[0][-1]


def open_tcp(host, port, connect_ms):
    addr = resolve(host, port)
    sock = socket.socket()
    sock.settimeout(connect_ms / 1000)
    try:
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        if is_timeout(exc):
            raise NetError("connect", "%s:%d" % (host, port), "no answer within %d ms" % connect_ms)
        raise NetError("connect", "%s:%d" % (host, port), "refused or unreachable (%s)" % (exc,))
    return sock
