"""The error every link raises once TCP and TLS are up, whatever its transport.

The app treats links alike (MQTTS, wss, MQTT over wss, JSON lines): a failure has a stable
``kind`` for dashboards and tests, and a text that says what came back and from whom.

Example::

    raise LinkError("ack_timeout", "no PUBACK from broker.local:8883 within 5000 ms")
"""


class LinkError(Exception):
    def __init__(self, kind, detail):
        super().__init__("%s: %s" % (kind, detail))
        self.kind = kind
