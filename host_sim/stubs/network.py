"""`network` stand-in: a WLAN station that associates through the virtual air.

Association is judged lazily: every status()/isconnected() call (and every socket
operation, through ``BoardState.associated``) looks at the air, so a test that
rewrites the air file sees the board lose or regain its AP within ~100 ms.
"""
import hashlib
import time as _time
import types

STA_IF = 0
AP_IF = 1

_STATUS = {
    "esp32": {"STAT_IDLE": 1000, "STAT_CONNECTING": 1001, "STAT_GOT_IP": 1010,
              "STAT_NO_AP_FOUND": 201, "STAT_WRONG_PASSWORD": 202,
              "STAT_BEACON_TIMEOUT": 200, "STAT_ASSOC_FAIL": 203,
              "STAT_HANDSHAKE_TIMEOUT": 204},
    "esp8266": {"STAT_IDLE": 0, "STAT_CONNECTING": 1, "STAT_WRONG_PASSWORD": 2,
                "STAT_NO_AP_FOUND": 3, "STAT_CONNECT_FAIL": 4, "STAT_GOT_IP": 5},
}
_BOARD_IP = "127.0.0.1"   # the board "is" the loopback host: it can reach only 127.x


# ESP-IDF disconnect reasons (esp_wifi_types.h) the ESP32 stand-in produces.
_REASON_ASSOC_LEAVE = 8         # after wlan.disconnect()
_REASON_4WAY_HANDSHAKE_TIMEOUT = 15   # what a wrong WPA2 key usually gives (not AUTH_FAIL)
_REASON_BEACON_TIMEOUT = 200    # the AP went away while associated
_REASON_NO_AP_FOUND = 201


class _Station:
    """The STA interface's association state machine (one per board).

    ESP32 (ports/esp32/network_wlan.c, MicroPython 1.22 and later): the driver retries
    forever by default (``reconnects`` unset), and status() reports STAT_NO_AP_FOUND (201)
    after a failed attempt found no AP, but a wrong WPA2 key (disconnect reason 15, 4-way
    handshake timeout; only 202/205 map to STAT_WRONG_PASSWORD) and a lost AP (200) show as
    STAT_CONNECTING while the retries go on. Before 1.22 even a missing AP read
    STAT_CONNECTING; the firmware must cope with both (securenode/wifi.py scans).
    ESP8266 (ports/esp8266/network_wlan.c): status() is the SDK's station status, which
    names STATION_WRONG_PASSWORD / NO_AP_FOUND / CONNECT_FAIL directly.
    """

    def __init__(self, state):
        self.state = state
        self.esp32 = state.port == "esp32"
        self.st = _STATUS[state.port]
        self.active = False
        self.ssid = None
        self.key = None
        self.status = self.st["STAT_IDLE"]
        self._due_ns = 0          # when the pending connect attempt resolves
        self._lost = self.st.get("STAT_BEACON_TIMEOUT", self.st.get("STAT_CONNECT_FAIL"))
        # ESP32 only: what network_wlan.c keeps (wifi_sta_connected, _connect_requested,
        # _disconn_reason); status() is derived from them as the port does.
        self.connected = False
        self.requested = False
        self.reason = 0

    def _latency_ns(self):
        return int(self.state.rng.uniform(0.1, 0.3) * 1e9)

    def connect(self, ssid, key):
        self.ssid, self.key = ssid, key
        self.status = self.st["STAT_CONNECTING"]
        self._due_ns = _time.monotonic_ns() + self._latency_ns()
        self.connected = False
        self.requested = True

    def disconnect(self):
        self.ssid = None
        self.status = self.st["STAT_IDLE"]
        self.requested = False
        self.connected = False
        self.reason = _REASON_ASSOC_LEAVE

    def _verdict(self):
        air = self.state.air()
        ap = air.get("aps", {}).get(self.ssid)
        if ap is None or not ap.get("up", True) or air.get("link", "up") == "down":
            return self.st["STAT_NO_AP_FOUND"]
        if ap.get("key") != self.key:
            return self.st["STAT_WRONG_PASSWORD"]
        return self.st["STAT_GOT_IP"]

    def poll(self):
        """Advance the state machine against the current air; returns status()."""
        if self.esp32:
            return self._poll_esp32()
        if not self.active or self.ssid is None:
            return self.status
        got_ip = self.st["STAT_GOT_IP"]
        now = _time.monotonic_ns()
        if self.status == self.st["STAT_CONNECTING"]:
            if now >= self._due_ns:
                self.status = self._verdict()
        elif self.status == got_ip:
            if self._verdict() != got_ip:
                self.status = self._lost
        elif self.status == self._lost:
            # The SDK keeps retrying a lost AP in the background.
            if self._verdict() == got_ip:
                self.status = self.st["STAT_CONNECTING"]
                self._due_ns = now + self._latency_ns()
        return self.status

    def _poll_esp32(self):
        if self.active and self.requested:
            now = _time.monotonic_ns()
            verdict = self._verdict()
            if self.connected:
                if verdict != self.st["STAT_GOT_IP"]:
                    # WIFI_EVENT_STA_DISCONNECTED: the handler retries (reconnects unset).
                    self.connected = False
                    self.reason = _REASON_BEACON_TIMEOUT
                    self._due_ns = now + self._latency_ns()
            elif now >= self._due_ns:
                # One connect attempt resolved; on failure the next one starts at once.
                if verdict == self.st["STAT_GOT_IP"]:
                    self.connected = True
                    self.reason = 0
                else:
                    self.reason = (_REASON_NO_AP_FOUND if verdict == self.st["STAT_NO_AP_FOUND"]
                                   else _REASON_4WAY_HANDSHAKE_TIMEOUT)
                    self._due_ns = now + self._latency_ns()
        # network_wlan_status(), in the port's order.
        if self.connected:
            return self.st["STAT_GOT_IP"]
        if self.reason == _REASON_NO_AP_FOUND:
            return self.st["STAT_NO_AP_FOUND"]
        if self.reason == _REASON_ASSOC_LEAVE:
            return self.st["STAT_IDLE"]
        if self.requested:
            return self.st["STAT_CONNECTING"]
        if self.reason == 0:
            return self.st["STAT_IDLE"]
        return self.reason

    def has_ip(self):
        return self.poll() == self.st["STAT_GOT_IP"]


def make_module(state):
    mod = types.ModuleType("network")
    mod.STA_IF = STA_IF
    mod.AP_IF = AP_IF
    for name, value in _STATUS[state.port].items():
        setattr(mod, name, value)
    if state.wifi is None:
        state.wifi = _Station(state)
    station = state.wifi
    mac = hashlib.sha256(("mac:" + state.device_seed).encode()).digest()[:6]
    mac = bytes([(mac[0] & 0xFC) | 0x02]) + mac[1:]   # locally administered unicast

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
                return station.active
            station.active = bool(flag)
            if not station.active:
                station.disconnect()
            return None

        def connect(self, ssid=None, key=None, *, bssid=None):
            if self._if != STA_IF:
                raise OSError("STA required")
            if not station.active:
                # esp32 raises "Wifi Not Started"; esp8266 activates silently.
                if state.port == "esp32":
                    raise OSError("Wifi Not Started")
                station.active = True
            station.connect(ssid, key)

        def disconnect(self):
            station.disconnect()

        def isconnected(self):
            return self._if == STA_IF and station.has_ip()

        def status(self, param=None):
            if param is not None:
                if param == "rssi":
                    return -55
                raise ValueError("unknown status param")
            return station.poll() if self._if == STA_IF else mod.STAT_IDLE

        def ifconfig(self, config=None):
            if config is not None:
                return None
            if self._if == STA_IF and station.has_ip():
                return (_BOARD_IP, "255.0.0.0", "127.0.0.1", "127.0.0.1")
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

        def config(self, *args, **kwargs):
            if kwargs:
                return None
            if args == ("mac",):
                return mac
            if args == ("ssid",) or args == ("essid",):
                return station.ssid or ""
            if args == ("hostname",) or args == ("dhcp_hostname",):
                return "mpy-" + state.device_seed
            raise ValueError("unknown config param")

        def scan(self):
            if station.esp32 and station.requested and not station.connected:
                # esp_wifi_scan_start() refuses while the station is connecting
                # (ESP_ERR_WIFI_STATE), raised by ports/esp32/network_common.c as this.
                raise OSError("Wifi Internal State Error")
            air = state.air()
            aps = air.get("aps", {}) if air.get("link", "up") != "down" else {}
            return [(name.encode(), b"\x00" * 6, 1, -55, 3, False)
                    for name, ap in aps.items() if ap.get("up", True)]

    mod.WLAN = WLAN
    return mod
