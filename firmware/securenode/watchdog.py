"""The hardware watchdog: resets the board when the main loop stops feeding it.

Every step of the main loop is bounded by a configured timeout except the ones MicroPython
cannot bound (DNS has no deadline on a board; a driver can wedge): the watchdog turns such a
hang into a reset, reported at the next boot as reset_cause "wdt". Its timeout is derived
from the configuration at boot (startup.watchdog_ms), longer than the longest bounded step,
so it never fires on a slow but healthy step.

Example::

    from securenode import watchdog
    watchdog.start(27000)   # -> 27000, or None if the port has none
    watchdog.feed()         # once per loop turn
"""

import sys

_wdt = None  # a board has one hardware watchdog; so does this module


def start(timeout_ms):
    """Start the watchdog; return its timeout, or None where the port has none to start.

    Feature detection: the unix port has no machine.WDT. On the esp8266 the timeout cannot
    be set (MicroPython docs, machine.WDT: "determined by the underlying system"), and a TLS
    handshake there outlasts it, so the board runs without one.
    """
    global _wdt
    try:
        from machine import WDT
    except ImportError:
        return None
    if sys.platform == "esp8266":
        return None
    _wdt = WDT(timeout=timeout_ms)
    return timeout_ms


def feed():
    if _wdt is not None:
        _wdt.feed()
