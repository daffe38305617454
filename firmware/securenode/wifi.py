"""Join the configured access point, with a deadline and a reason when it fails.

Example::

    from securenode import wifi
    ip = wifi.join("homenet", key, timeout_ms=10000)   # raises WifiError
"""

import time

import network

_POLL_MS = 50


class WifiError(Exception):
    """Joining failed; ``reason`` is a stable name (wrong_key, no_ap, timeout, …)."""

    def __init__(self, reason, detail):
        super().__init__("%s: %s" % (reason, detail))
        self.reason = reason


def _failure_reasons():
    # Status numbers differ per port (ESP32 201.., ESP8266 2..); names are what ports share.
    reasons = {}
    for name, reason in (
        ("STAT_WRONG_PASSWORD", "wrong_key"),
        ("STAT_NO_AP_FOUND", "no_ap"),
        ("STAT_CONNECT_FAIL", "connect_failed"),
        ("STAT_ASSOC_FAIL", "connect_failed"),
        ("STAT_HANDSHAKE_TIMEOUT", "wrong_key"),
        ("STAT_BEACON_TIMEOUT", "no_ap"),
    ):
        status = getattr(network, name, None)
        if status is not None:
            reasons[status] = reason
    return reasons


def station():
    return network.WLAN(network.STA_IF)


def is_up():
    return station().isconnected()


def join(ssid, key, timeout_ms):
    """Associate with ``ssid`` and wait for an address; return the board's IP."""
    wlan = station()
    wlan.active(True)
    if wlan.isconnected():
        return wlan.ifconfig()[0]
    wlan.connect(ssid, key)
    reasons = _failure_reasons()
    started = time.ticks_ms()
    while not wlan.isconnected():
        status = wlan.status()
        if status in reasons:
            wlan.disconnect()
            raise WifiError(reasons[status], "access point %r refused the board (status %d)"
                            % (ssid, status))
        if time.ticks_diff(time.ticks_ms(), started) > timeout_ms:
            wlan.disconnect()
            raise WifiError("timeout", "no address from %r within %d ms" % (ssid, timeout_ms))
        time.sleep_ms(_POLL_MS)
    return wlan.ifconfig()[0]
