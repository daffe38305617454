"""Connection caps for the host services: at most N connections, M from one address.

The collector's JSON-lines listener and the ingest endpoint take a place before any TLS work
and give it back when the connection ends, so a flood from one address costs a socket and
never starves the others.

    >>> caps = ConnectionCaps(max_open=2, max_per_address=1)
    >>> caps.take("10.0.0.1"), caps.take("10.0.0.1"), caps.take("10.0.0.2")
    (None, 'max_per_address', None)
    >>> caps.take("10.0.0.3")
    'max_open'
    >>> caps.release("10.0.0.1"); caps.open
    1
"""

import collections


class ConnectionCaps:
    def __init__(self, max_open, max_per_address):
        self.max_open, self.max_per_address = max_open, max_per_address
        self.open = 0
        self.per_address = collections.Counter()

    def take(self, address):
        """Count a new connection from ``address``; None if it fits, else the cap it hit."""
        if self.open >= self.max_open:
            return "max_open"
        if self.per_address[address] >= self.max_per_address:
            return "max_per_address"
        self.open += 1
        self.per_address[address] += 1
        return None

    def release(self, address):
        """Give back the place of a connection from ``address`` that ended."""
        self.open -= 1
        self.per_address[address] -= 1
        if not self.per_address[address]:
            del self.per_address[address]
