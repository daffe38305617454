"""Which link carries readings: chosen once from the configuration.

Every link has the same shape: ``connect()``, ``publish(topic, payload)`` (returns only
once the peer acknowledged the reading), ``ping()``, ``close()`` and ``peer``.

Example::

    link = links.open_link(cfg, tls)
    link.connect()
"""

from securenode.mqtt_link import MqttLink


def open_link(cfg, tls):
    m = cfg.mqtt
    to = cfg.timeouts_ms
    return MqttLink(m.client_id.encode(), m.host, m.port, tls, m.keepalive_s, to.connect, to.io)
