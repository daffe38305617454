"""Report what the board does: one JSON object per line on the console.

The host simulator, the test suite and a person on the serial console all read the same
lines, so every state change, success and error goes through ``emit``. Secrets (WiFi key,
private keys, tokens) are never passed here.

Example::

    from securenode.events import emit
    emit("wifi_up", ip="192.168.1.40")
    # {"event": "wifi_up", "t_ms": 5310, "ip": "192.168.1.40"}
"""

import json
import time


def emit(event, **fields):
    fields["event"] = event
    fields["t_ms"] = time.ticks_ms()
    print(json.dumps(fields))


def error(kind, detail):
    """Report a failure by its kind (a stable name tests and dashboards match on)."""
    emit("error", kind=kind, detail=detail)
