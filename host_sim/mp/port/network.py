# `network` for the MicroPython unix port, which has none (runs under MicroPython): a WLAN
# station that associates through the same virtual air JSON file as the CPython stand-in
# (host_sim/stubs/network.py), re-read at most every 100 ms, with the port's status numbers
# (ports/esp32/network_wlan.c, ports/esp8266/network_wlan.c).
# Sockets are the interpreter's own, so unlike the CPython runtime a lost AP does not cut
# open connections: it shows in status()/isconnected() only.
#
# On a board this module is C: its names are static. Here each name it holds is interned
# before the firmware's, so the station (one per chip, as on the ports) is a list indexed by
# consts rather than an object with attributes of its own.
import json
import random
import time

from micropython import const

from _simboard import settings

STA_IF = 0
AP_IF = 1

if settings["port"] == "esp8266":
    STAT_IDLE = 0
    STAT_CONNECTING = 1
    STAT_WRONG_PASSWORD = 2
    STAT_NO_AP_FOUND = 3
    STAT_CONNECT_FAIL = 4
    STAT_GOT_IP = 5
else:
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_BEACON_TIMEOUT = 200
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    STAT_ASSOC_FAIL = 203
    STAT_HANDSHAKE_TIMEOUT = 204

_AIR_REREAD_MS = const(100)

# The chip's WiFi state, _sta[...]:
_ACTIVE = const(0)        # the station interface is active
_SSID = const(1)          # the AP it joins (None: none)
_KEY = const(2)
_STATUS = const(3)        # what status() last answered
_DUE_MS = const(4)        # ticks_ms when a connect attempt gets its verdict
_LOST = const(5)          # the status of a station whose AP went away (ports differ)
_AIR = const(6)           # the air last read (dict), None before the first read
_AIR_READ_MS = const(7)   # ticks_ms of that read
_AP_ACTIVE = const(8)     # the access-point interface is active (nothing else of it is)
_sta = [False, None, None, STAT_IDLE, 0,
        STAT_CONNECT_FAIL if settings["port"] == "esp8266" else STAT_BEACON_TIMEOUT,
        None, 0, False]


def _air():
    path = settings["air"]
    if path is None:
        if _sta[_AIR] is None:
            _sta[_AIR] = {"aps": {"simnet": {"key": "simkey", "up": True}}, "link": "up"}
        return _sta[_AIR]
    now = time.ticks_ms()
    if _sta[_AIR] is None or time.ticks_diff(now, _sta[_AIR_READ_MS]) >= _AIR_REREAD_MS:
        try:
            with open(path) as f:
                _sta[_AIR] = json.load(f)
        except (OSError, ValueError):
            # A file being rewritten reads as partial: keep the last good air.
            if _sta[_AIR] is None:
                _sta[_AIR] = {"aps": {}, "link": "up"}
        _sta[_AIR_READ_MS] = now
    return _sta[_AIR]


def _attempt():
    # A connect attempt to _sta[_SSID]: its verdict comes 100-300 ms later.
    _sta[_STATUS] = STAT_CONNECTING
    _sta[_DUE_MS] = time.ticks_add(time.ticks_ms(), 100 + random.getrandbits(8) * 200 // 255)


def _poll():
    # The station's status now: a connect attempt gets its verdict once due, a station with
    # an address loses it when its AP goes, and one that lost its AP tries again when it is
    # back (the ports retry by themselves).
    status = _sta[_STATUS]
    if not _sta[_ACTIVE] or _sta[_SSID] is None:
        return status
    if status == STAT_CONNECTING:
        if time.ticks_diff(time.ticks_ms(), _sta[_DUE_MS]) < 0:
            return status
    elif status != STAT_GOT_IP and status != _sta[_LOST]:
        return status   # a wrong key, no AP: until the next connect()
    air = _air()
    ap = air.get("aps", {}).get(_sta[_SSID])
    if ap is None or not ap.get("up", True) or air.get("link", "up") == "down":
        verdict = STAT_NO_AP_FOUND
    elif ap.get("key") != _sta[_KEY]:
        verdict = STAT_WRONG_PASSWORD
    else:
        verdict = STAT_GOT_IP
    if status == STAT_CONNECTING:
        _sta[_STATUS] = verdict
    elif status == STAT_GOT_IP:
        if verdict != STAT_GOT_IP:
            _sta[_STATUS] = _sta[_LOST]
    elif verdict == STAT_GOT_IP:
        _attempt()
    return _sta[_STATUS]


class WLAN:
    def __init__(self, *args):
        # network_wlan_make_new: at most one argument, positional (STA_IF by default).
        if len(args) > 1:
            raise TypeError("function expected at most 1 arguments, got %d" % len(args))
        self._if = args[0] if args else STA_IF

    def active(self, *args):
        # Positional only, as the ports' active([is_active]).
        if len(args) > 1:
            raise TypeError("function expected at most 2 arguments, got %d" % (1 + len(args)))
        if self._if != STA_IF:
            if args:
                _sta[_AP_ACTIVE] = bool(args[0])
            return _sta[_AP_ACTIVE]
        if not args:
            return _sta[_ACTIVE]
        _sta[_ACTIVE] = bool(args[0])
        if not _sta[_ACTIVE]:
            _sta[_SSID] = None
            _sta[_STATUS] = STAT_IDLE

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self._if != STA_IF:
            raise OSError("STA required")
        if not _sta[_ACTIVE]:
            if settings["port"] != "esp8266":
                raise OSError("Wifi Not Started")
            _sta[_ACTIVE] = True
        _sta[_SSID] = ssid
        _sta[_KEY] = key
        _attempt()

    def disconnect(self):
        _sta[_SSID] = None
        _sta[_STATUS] = STAT_IDLE

    def isconnected(self):
        return self._if == STA_IF and _poll() == STAT_GOT_IP

    def status(self, *args):
        # status() or status("rssi"), positional only as on the ports.
        if len(args) > 1:
            raise TypeError("function expected at most 2 arguments, got %d" % (1 + len(args)))
        if args:
            if args == ("rssi",):
                return -55
            raise ValueError("unknown status param")
        return _poll() if self._if == STA_IF else STAT_IDLE

    def ifconfig(self, config=None):
        if config is not None:
            return None
        if self.isconnected():
            return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")   # the loopback host
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kwargs):
        if kwargs:
            return None
        if args in (("ssid",), ("essid",)):
            return _sta[_SSID] or ""
        if args == ("mac",):
            import hashlib
            mac = hashlib.sha256(b"mac:" + settings["device_seed"].encode()).digest()[:6]
            return bytes([(mac[0] & 0xFC) | 0x02]) + mac[1:]
        raise ValueError("unknown config param")

    def scan(self):
        aps = _air().get("aps", {})
        return [(name.encode(), b"\x00" * 6, 1, -55, 3, False)
                for name, ap in aps.items() if ap.get("up", True)]
