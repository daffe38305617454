"""Commands from the ingest endpoint, applied to the node and acknowledged.

Only the wss transport carries commands, so only a board on it loads this module
(links.open_link): an MQTTS board keeps none of it in RAM.

Example::

    from securenode import commands
    commands.apply(node, {"cmd": "set_interval", "interval_ms": 5000})   # -> (True, None)
"""

from securenode.events import emit


def apply(node, message):
    """Apply a command from the peer to node; return (ok, detail) for its ack.

    >>> apply(node, {"cmd": "set_interval", "interval_ms": 5000})
    (True, None)
    >>> apply(node, {"cmd": "reboot"})
    (False, 'unknown command')
    """
    name = message.get("cmd")
    if name == "set_interval":
        value = message.get("interval_ms")
        lo = node.cfg.sample.window_ms  # a reading needs one full sampling window
        if type(value) is not int or not lo <= value <= 86400000:
            detail = "interval_ms must be an integer %d..86400000" % lo
            emit("command", cmd=name, ok=False, detail=detail)
            return False, detail
        node.interval_ms = value
        emit("command", cmd=name, ok=True, interval_ms=value)
        return True, None
    emit("command", cmd=str(name)[:32], ok=False, detail="unknown command")
    return False, "unknown command"
