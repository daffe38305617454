# `network` for the MicroPython unix port, which has none (runs under MicroPython): a WLAN
# station that associates through the same virtual air JSON file as the CPython stand-in
# (host_sim/stubs/network.py), re-read at most every 100 ms, with the port's status numbers
# (ports/esp32/network_wlan.c, ports/esp8266/network_wlan.c).
# Sockets are the interpreter's own, so unlike the CPython runtime a lost AP does not cut
# open connections: it shows in status()/isconnected() only.
import json
import random
import time

from _simboard import host_path, settings

STA_IF = 0
AP_IF = 1

if settings["port"] == "esp8266":
    STAT_IDLE = 0
    STAT_CONNECTING = 1
    STAT_WRONG_PASSWORD = 2
    STAT_NO_AP_FOUND = 3
    STAT_CONNECT_FAIL = 4
    STAT_GOT_IP = 5
    _LOST = STAT_CONNECT_FAIL
else:
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_BEACON_TIMEOUT = 200
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    STAT_ASSOC_FAIL = 203
    STAT_HANDSHAKE_TIMEOUT = 204
    _LOST = STAT_BEACON_TIMEOUT

_AIR_REREAD_MS = 100
_DEFAULT_AIR = {"aps": {"simnet": {"key": "simkey", "up": True}}, "link": "up"}
_BOARD_IP = "127.0.0.1"   # the board "is" the loopback host


class _Air:
    def __init__(self):
        self.cache = None
        self.read_at = 0

    def get(self):
        path = settings["air"]
        if path is None:
            return _DEFAULT_AIR
        now = time.ticks_ms()
        if self.cache is None or time.ticks_diff(now, self.read_at) >= _AIR_REREAD_MS:
            try:
                with open(host_path(path)) as f:
                    self.cache = json.load(f)
            except (OSError, ValueError):
                # A file being rewritten reads as partial: keep the last good air.
                if self.cache is None:
                    self.cache = {"aps": {}, "link": "up"}
            self.read_at = now
        return self.cache


class _Station:
    def __init__(self):
        self.active = False
        self.ssid = None
        self.key = None
        self.status = STAT_IDLE
        self.due = 0

    def connect(self, ssid, key):
        self.ssid, self.key = ssid, key
        self.status = STAT_CONNECTING
        self.due = time.ticks_add(time.ticks_ms(), 100 + random.getrandbits(8) * 200 // 255)

    def verdict(self):
        air = _air.get()
        ap = air.get("aps", {}).get(self.ssid)
        if ap is None or not ap.get("up", True) or air.get("link", "up") == "down":
            return STAT_NO_AP_FOUND
        if ap.get("key") != self.key:
            return STAT_WRONG_PASSWORD
        return STAT_GOT_IP

    def poll(self):
        if not self.active or self.ssid is None:
            return self.status
        if self.status == STAT_CONNECTING:
            if time.ticks_diff(time.ticks_ms(), self.due) >= 0:
                self.status = self.verdict()
        elif self.status == STAT_GOT_IP:
            if self.verdict() != STAT_GOT_IP:
                self.status = _LOST
        elif self.status == _LOST and self.verdict() == STAT_GOT_IP:
            self.connect(self.ssid, self.key)   # the ports retry a lost AP by themselves
        return self.status


_air = _Air()
_sta = _Station()


class WLAN:
    def __init__(self, interface_id=STA_IF):
        self._if = interface_id
        self._ap_active = False

    def active(self, flag=None):
        if self._if != STA_IF:
            if flag is not None:
                self._ap_active = bool(flag)
            return self._ap_active
        if flag is None:
            return _sta.active
        _sta.active = bool(flag)
        if not _sta.active:
            _sta.ssid = None
            _sta.status = STAT_IDLE

    def connect(self, ssid=None, key=None, *, bssid=None):
        if self._if != STA_IF:
            raise OSError("STA required")
        if not _sta.active:
            if settings["port"] != "esp8266":
                raise OSError("Wifi Not Started")
            _sta.active = True
        _sta.connect(ssid, key)

    def disconnect(self):
        _sta.ssid = None
        _sta.status = STAT_IDLE

    def isconnected(self):
        return self._if == STA_IF and _sta.poll() == STAT_GOT_IP

    def status(self, param=None):
        if param is not None:
            if param == "rssi":
                return -55
            raise ValueError("unknown status param")
        return _sta.poll() if self._if == STA_IF else STAT_IDLE

    def ifconfig(self, config=None):
        if config is not None:
            return None
        if self.isconnected():
            return (_BOARD_IP, "255.0.0.0", "127.0.0.1", "127.0.0.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def config(self, *args, **kwargs):
        if kwargs:
            return None
        if args in (("ssid",), ("essid",)):
            return _sta.ssid or ""
        if args == ("mac",):
            import hashlib
            mac = hashlib.sha256(b"mac:" + settings["device_seed"].encode()).digest()[:6]
            return bytes([(mac[0] & 0xFC) | 0x02]) + mac[1:]
        raise ValueError("unknown config param")

    def scan(self):
        aps = _air.get().get("aps", {})
        return [(name.encode(), b"\x00" * 6, 1, -55, 3, False)
                for name, ap in aps.items() if ap.get("up", True)]
