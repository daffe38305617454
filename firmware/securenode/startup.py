"""What runs once at power-on, before the main loop, and is then given back.

Why this boot happened (machine.reset_cause by name), the last run's crash record, the
configuration (validated, the validator unloaded), the node and the hardware watchdog with
a timeout derived from the configuration. app.main() loads this module, takes the node it
builds and forgets the module before the loop starts: none of it stays in RAM.

Example (what app.main does)::

    from securenode import startup
    node = startup.boot("config.json")   # None: a configuration error, said, halted
    node.run()
"""

import sys

from micropython import const

from securenode import VERSION, crash, sensor, settings, watchdog
from securenode.events import emit, error

# Sampling window, flash writes and event output on top of the longest network step.
_MARGIN_MS = const(5000)
# machine.reset_cause() values by name: the numbers differ between ports, the names do not.
_CAUSES = const(("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET"))


def reset_cause():
    """Why this boot happened, by name: "wdt", "hard", "soft", "pwron", … or None."""
    try:
        import machine
        cause = machine.reset_cause()
    except (ImportError, AttributeError):
        return None  # a port without machine.reset_cause (e.g. the bare unix port)
    for name in _CAUSES:
        if getattr(machine, name, None) == cause:
            return name[:-6].lower()
    return "cause_%d" % cause


def watchdog_ms(cfg):
    """The watchdog's timeout: the longest step between two feeds plus a margin.

    Every step of the main loop is bounded by a configured timeout except the ones
    MicroPython cannot bound (DNS has no deadline on a board; a driver can wedge): the
    watchdog turns such a hang into a reset, so it must be longer than the longest bounded
    step, never firing on a slow but healthy one. A connect is DNS + TCP + TLS handshake +
    the first exchange (CONNACK, WebSocket upgrade) and a PUBACK wait; provisioning polls
    sleep up to poll_max_ms, then make one HTTPS exchange (io + handshake), and discovery
    blocks up to beacon_wait_ms.
    """
    t = cfg.timeouts_ms
    net_ms = t.dns + t.connect + 2 * t.handshake + 2 * t.io
    step = max(cfg.wifi.timeout_ms, cfg.ntp.timeout_ms + t.dns, net_ms)
    p = cfg.provisioning
    if p is not None:
        step = max(step, p.poll_max_ms + net_ms, p.beacon_wait_ms)
    return step + cfg.sample.window_ms + _MARGIN_MS


def boot(path):
    """Report the boot, load the configuration, build the node, start the watchdog.

    Returns the node, or None after a configuration error (said, and the halt reported).
    """
    from securenode.app import Node

    cause = reset_cause()
    last_crash = crash.recorded()
    emit("boot", version=VERSION, platform=sys.platform, reset_cause=cause, crash=last_crash)
    try:
        cfg = settings.load(path)  # validates, then unloads the validator
        node = Node(cfg, cause, last_crash)
    except (settings.ConfigError, sensor.SensorError) as exc:
        # SensorError: a sample setting this board cannot honour (e.g. an ADC pin it
        # lacks): a config error, said once, not a crash to reset from (and before the
        # watchdog starts).
        error("config", str(exc))
        emit("halted", reason="config")
        return None
    timeout_ms = watchdog.start(watchdog_ms(cfg))
    emit("watchdog", timeout_ms=timeout_ms)
    return node
