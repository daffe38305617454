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


class _Station:
    """The STA interface's association state machine (one per board)."""

    def __init__(self, state):
        self.state = state
        self.st = _STATUS[state.port]
        self.active = False
        self.ssid = None
        self.key = None
        self.status = self.st["STAT_IDLE"]
        self._due_ns = 0          # when the pending connect attempt resolves
        self._lost = self.st.get("STAT_BEACON_TIMEOUT", self.st.get("STAT_CONNECT_FAIL"))

    def _latency_ns(self):
        return int(self.state.rng.uniform(0.1, 0.3) * 1e9)

    def connect(self, ssid, key):
        self.ssid, self.key = ssid, key
        self.status = self.st["STAT_CONNECTING"]
        self._due_ns = _time.monotonic_ns() + self._latency_ns()

    def disconnect(self):
        self.ssid = None
        self.status = self.st["STAT_IDLE"]

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
            # The ports keep retrying a lost AP in the background.
            if self._verdict() == got_ip:
                self.status = self.st["STAT_CONNECTING"]
                self._due_ns = now + self._latency_ns()
        return self.status

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
            aps = state.air().get("aps", {})
            return [(name.encode(), b"\x00" * 6, 1, -55, 3, False)
                    for name, ap in aps.items() if ap.get("up", True)]

    mod.WLAN = WLAN
    return mod
