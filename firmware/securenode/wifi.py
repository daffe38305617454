"""Join the configured access point, with a deadline and a reason when it fails.

Example::

    from securenode import wifi
    ip = wifi.join("homenet", key, timeout_ms=10000)   # raises WifiError
"""

import time

from micropython import const

import network

_POLL_MS = const(50)


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
    """Associate with ``ssid`` and wait for an address; return the board's IP.

    A port that names the failure (ESP8266: wrong password, no AP) is believed at once.
    An ESP32 retries in the background and answers STAT_CONNECTING for a wrong key (and
    before MicroPython 1.22 for a missing AP too), so at the deadline a scan tells the two
    apart: the AP not seen means no_ap; seen but no address means most likely wrong_key.

    >>> join("homenet", key, 10000)
    '192.168.1.40'
    """
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
            raise _why_no_address(wlan, ssid, timeout_ms, status)
        time.sleep_ms(_POLL_MS)
    return wlan.ifconfig()[0]


def _why_no_address(wlan, ssid, timeout_ms, status):
    # Only after disconnect(): an ESP32 refuses to scan while it is still connecting
    # (ESP_ERR_WIFI_STATE, "Wifi Internal State Error").
    try:
        seen = [ap[0] for ap in wlan.scan()]
    except OSError as exc:
        return WifiError("timeout", "no address from %r within %d ms (status %d); a scan to "
                         "tell why failed (%s)" % (ssid, timeout_ms, status, exc))
    if ssid.encode() not in seen:
        return WifiError("no_ap", "access point %r not seen by a scan after %d ms without an "
                         "address (switched off, out of range, or hidden)" % (ssid, timeout_ms))
    return WifiError("wrong_key", "access point %r is in range (a scan sees it) but gave no "
                     "address within %d ms: most likely a wrong key (or no DHCP answer); this "
                     "port reports only 'connecting' (status %d)" % (ssid, timeout_ms, status))
