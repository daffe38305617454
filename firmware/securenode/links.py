"""Which link carries readings: chosen once from the configuration.

Every link has the same shape: ``connect()``; ``publish(topic, payload, dup=False)``, which
returns only once the peer acknowledged the reading; ``publish_status(payload)`` (True if the
transport carries status); ``ping()``; ``idle_ms()`` since we last sent; ``check(dead_after_ms)``
to handle what arrived unasked without blocking (and, on MQTT, to find a half-open link);
``close()``; and ``peer``.

Example::

    link = links.open_link(cfg, tls, node)
    link.connect()

``cfg.transport`` picks it: "mqtts" (default), "wss" (readings as text messages to an
ingest endpoint, which may send commands: commands.apply carries them out on ``node``) or
"mqtt_wss" (MQTT over a WebSocket, e.g. Mosquitto's websockets listener) or "jsonl" (one
JSON reading per line over pinned TLS, one ack line back: tools/collector.py serves it).
"""

from securenode import reading


def open_link(cfg, tls, node=None):
    m = cfg.mqtt
    to = cfg.timeouts_ms
    transport = getattr(cfg, "transport", "mqtts")
    if transport == "jsonl":
        from securenode.jsonl_link import JsonlLink
        return JsonlLink(cfg.jsonl.host, cfg.jsonl.port, tls, to.connect, to.io)
    if transport == "mqtts":
        from securenode.mqtt_link import MqttLink  # only MQTT boards load the MQTT client

        # user/password exist only once provisioning (credentials.py) has set them;
        # certificate boards have neither and log in with their certificate alone.
        link = MqttLink(m.client_id.encode(), m.host, m.port, tls, m.keepalive_s, to.connect,
                        to.io, getattr(m, "user", None), getattr(m, "password", None),
                        m.inflight)
    else:
        # Imported only when used: a board on MQTTS never loads the WebSocket modules.
        w = cfg.wss
        if transport == "wss":
            from securenode.commands import apply
            from securenode.wss_link import WssLink

            return WssLink(cfg.device_id, w.host, w.port, w.path, w.token, tls, to.connect,
                           to.io, to.handshake, w.max_message_bytes,
                           lambda message: apply(node, message))
        from securenode.mqtt_wss_link import MqttWssLink
        link = MqttWssLink(m.client_id.encode(), w.host, w.port, w.path, tls, m.keepalive_s,
                           to.connect, to.io, to.handshake, w.max_message_bytes)
    # The broker announces an unclean loss on the board's status topic (retained).
    link.will(reading.status_topic(cfg.device_id), b'{"status":"offline"}')
    return link
